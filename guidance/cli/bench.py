"""``guidance bench``: latency of the live loop and of the transport, as percentiles.

Three phases, each against its own sender process streaming the same pre-rendered
frames (``guidance.cli.bench_sender``):

1. ``transport``: our OpenIGTLink client and a consumer blocked on the latest-value
   slot; latency = consumer wakes with the decoded frame - sender's clock just before it
   packed the message.
2. ``transport_pyigtl``: the same with pyigtl's stock ``OpenIGTLinkClient`` and its
   ``wait_for_message`` (the baseline).
3. ``pipeline``: our client + the full pipeline, results sent back to the sender;
   end-to-end = frame fully received -> results handed to the kernel and overlay composed.

Both transports run in the same invocation, so the ratio holds on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from guidance.cli.common import path_arg, positive_float, write_summary
from guidance.cli.main import UsageError
from guidance.io.igtl import IgtlClient
from guidance.navigation.setup import static_room
from guidance.pipeline.config import IngestConfig, PipelineConfig
from guidance.pipeline.loop import Pipeline
from guidance.pipeline.stats import percentiles
from guidance.planning.plan import Plan

__all__ = ["register"]

DEVICE = "Image_Reference"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure latency (percentiles) of transport and pipeline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512, help="frame size, pixels (default 512)")
    p.add_argument("--fps", type=positive_float, default=15.0,
                   help="frames per second sent (Hz)")
    p.add_argument("--seconds", type=positive_float, default=20.0,
                   help="duration of each phase, s")
    p.add_argument("--json", type=path_arg("output_file", Path), default=Path("bench.json"),
                   metavar="FILE", help="where to write the results (JSON)")
    p.add_argument("--stage", choices=("all", "transport", "pipeline", "segment", "render",
                                       "tracked", "anatomy"),
                   default="all",
                   help="all = transport + pipeline; segment = model backends "
                        "(guidance.cli.bench_segment); render = GUI drawing "
                        "(guidance.cli.bench_render); tracked = navigation from poses "
                        "(guidance.cli.bench_tracked); anatomy = the ultrasound nerve and "
                        "vessel check per frame (guidance.cli.bench_anatomy; --size, "
                        "--frames)")
    from guidance.cli import bench_render, bench_segment, bench_tracked

    bench_segment.add_arguments(p)
    bench_render.add_arguments(p)
    bench_tracked.add_arguments(p)
    p.set_defaults(func=run)


class _Sender:
    """The sender process (``guidance.cli.bench_sender``) with its arguments."""

    def __init__(self, size: int, fps: float, seconds: float,
                 argv: list[str] | None = None) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        argv = argv if argv is not None else ["--size", str(size), "--fps", str(fps),
                                              "--seconds", str(seconds)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "guidance.cli.bench_sender", *argv],
            stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "READY":
            self.proc.kill()
            raise RuntimeError(f"bench sender failed to start: {line}")
        self.port = int(line[1])

    @classmethod
    def start(cls, argv: list[str]) -> _Sender:
        return cls(0, 0.0, 0.0, argv)

    def wait(self) -> int:
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.wait(30)
        for tok in out.split("\n"):
            if tok.startswith("SENT"):
                return int(tok.split()[1])
        return 0


class _Usage:
    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.t0 = time.monotonic()
        self.c0 = self.proc.cpu_times()

    def done(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        c = self.proc.cpu_times()
        cpu = (c.user - self.c0.user) + (c.system - self.c0.system)
        return {"cpu_percent_of_one_core": round(100.0 * cpu / wall, 1),
                "rss_mb": round(self.proc.memory_info().rss / 2**20, 1)}


def _transport_ours(args: argparse.Namespace) -> dict[str, Any]:
    sender = _Sender(args.size, args.fps, args.seconds)
    usage = _Usage()
    client = IgtlClient("127.0.0.1", sender.port).start()
    lat: list[float] = []
    seq = 0
    deadline = time.monotonic() + args.seconds + 10
    while time.monotonic() < deadline:
        item = client.slots.wait_newer(DEVICE, seq, timeout_s=2.0)
        if item is None:
            if seq:
                break
            continue
        now = time.monotonic()
        seq = item.seq
        lat.append((now - item.timestamp_s) * 1e3)
    sent = sender.wait()
    client.stop()
    c = client.slots.counters().get(DEVICE)
    return {"latency_ms": percentiles(np.array(lat)), "frames_sent": sent,
            "frames_consumed": len(lat), "frames_dropped": c.dropped if c else 0,
            **usage.done(), "_values": lat}


def _transport_pyigtl(args: argparse.Namespace) -> dict[str, Any]:
    import pyigtl

    sender = _Sender(args.size, args.fps, args.seconds)
    usage = _Usage()
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", sender.port)
    lat: list[float] = []
    got_any = False
    deadline = time.monotonic() + args.seconds + 10
    while time.monotonic() < deadline:
        msg = client.wait_for_message(DEVICE, timeout=2.0)
        if msg is None:
            if got_any:
                break
            continue
        got_any = True
        lat.append((time.monotonic() - msg.timestamp) * 1e3)
    sent = sender.wait()
    client.stop()
    return {"latency_ms": percentiles(np.array(lat)), "frames_sent": sent,
            "frames_consumed": len(lat), **usage.done(), "_values": lat}


def _pipeline(args: argparse.Namespace) -> dict[str, Any]:
    sender = _Sender(args.size, args.fps, args.seconds)
    usage = _Usage()
    client = IgtlClient("127.0.0.1", sender.port)

    def send(m: Any, on_sent: Any = None) -> int:
        return 1 if client.send(m, on_sent) else 0

    # The sender streams fluoroscopy frames and a needle pose that moves along +x from
    # the origin: a room whose needle marker sits at the tip and whose reference is the
    # CT frame (static identities), and a plan along the needle, so that the tracked
    # needle and the safety decision run on every frame.
    room = static_room({"NeedleTipToNeedle": np.eye(4), "ReferenceToCT": np.eye(4)},
                       "bench: needle marker at the tip, reference = CT")
    config = PipelineConfig(ingest=IngestConfig(modality="fluoro"))
    pipe = Pipeline(client.slots, config, send=send, room=room)
    pipe.set_plan(Plan(np.zeros(3), np.array([100.0, 0.0, 0.0]), "bench"))
    client.start()
    pipe.start()
    sent = sender.wait()
    done = threading.Event()
    done.wait(0.5)  # the last frame's processing
    pipe.stop()
    client.stop()
    stats = {name: percentiles(pipe.stats.values(name)) for name in pipe.stats.names()}
    e2e = pipe.stats.values("end_to_end")
    half = e2e.size // 2
    return {
        "latency_ms": stats.get("end_to_end"),
        "stages_ms": {k: v for k, v in stats.items() if k != "end_to_end"},
        "frames_sent": sent,
        "frames_processed": pipe.frames_processed,
        "frames_dropped": pipe.frames_dropped,
        "backlog_check": {
            "first_half_p50_ms": percentiles(e2e[:half])["p50"],
            "second_half_p50_ms": percentiles(e2e[half:])["p50"],
        },
        **usage.done(),
        "_values": e2e.tolist(),
    }


def _histogram(path: Path, series: dict[str, list[float]], title: str,
               ylabel: str = "frames") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name, vals in series.items():
        if vals:
            v = np.asarray(vals)
            bins = np.logspace(np.log10(max(v.min(), 0.01)), np.log10(v.max() + 1e-3), 60)
            ax.hist(v, bins=bins.tolist(),
                    alpha=0.6, label=f"{name} (p99 {np.percentile(v, 99):.2f} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    if args.stage == "tracked" or args.tracked:
        from guidance.cli import bench_tracked

        return bench_tracked.run(args)
    if args.stage == "segment":
        from guidance.cli import bench_segment

        return bench_segment.run(args)
    if args.stage == "render":
        from guidance.cli import bench_render

        return bench_render.run(args)
    if args.stage == "all" and args.modality == "ct":
        from guidance.cli import bench_ct

        return bench_ct.run(args)
    if args.stage == "all" and args.modality is not None:
        if args.modality != "us":
            raise UsageError(f"--modality {args.modality}: give --stage segment (the model's "
                             "speed); without --stage, --modality us times the ultrasound "
                             "anatomy check and --modality ct the CT control slabs")
        print("bench: --modality us: the ultrasound anatomy check (--stage anatomy)")
        args.stage = "anatomy"
    if args.stage == "anatomy":
        from guidance.cli import bench_anatomy

        return bench_anatomy.run(args)
    if not 32 <= args.size <= 2048:
        raise UsageError(f"--size must be 32..2048, got {args.size}")
    out: dict[str, Any] = {"size": args.size, "fps": args.fps, "seconds": args.seconds,
                           "dtype": "uint16", "cpu_count": os.cpu_count()}
    phases = []
    if args.stage in ("all", "transport"):
        phases += [("transport", _transport_ours), ("transport_pyigtl", _transport_pyigtl)]
    if args.stage in ("all", "pipeline"):
        phases.append(("pipeline", _pipeline))
    series: dict[str, list[float]] = {}
    for i, (name, fn) in enumerate(phases, 1):
        print(f"[{i}/{len(phases)}] {name}: {args.seconds:.0f} s at {args.fps:.0f} fps, "
              f"{args.size}x{args.size} uint16 ...", flush=True)
        res = fn(args)
        series[name] = res.pop("_values")
        out[name] = res
        lat = res["latency_ms"]
        print(f"      p50 {lat['p50']:.2f}  p95 {lat['p95']:.2f}  p99 {lat['p99']:.2f}  "
              f"max {lat['max']:.2f} ms", flush=True)
    if "transport" in out and "transport_pyigtl" in out:
        ours, base = out["transport"]["latency_ms"], out["transport_pyigtl"]["latency_ms"]
        out["transport_p99_ratio_ours_over_pyigtl"] = round(ours["p99"] / base["p99"], 3)
    out["peak_rss_mb"] = round(psutil.Process().memory_info().rss / 2**20, 1)
    import resource

    out["peak_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    write_summary(args.json, out)
    png = args.json.with_suffix(".png")
    _histogram(png, series, f"guidance bench {args.size}px uint16 @ {args.fps:.0f} fps")
    print(f"wrote {args.json} and {png}")
    print(json.dumps({k: out[k]["latency_ms"] for k in ("transport", "transport_pyigtl", "pipeline")
                      if k in out}, indent=1))
    return 0
