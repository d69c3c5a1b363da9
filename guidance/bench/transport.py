"""Latency of the transport and of the live loop, as percentiles (``guidance bench``).

Three phases, each against its own sender process (:mod:`guidance.bench.sender`)
streaming the same pre-rendered frames:

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

import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from guidance.bench.measure import (
    BenchReport,
    ProcessUsage,
    Say,
    SenderProcess,
    log_say,
    run_until_sent,
    write_histogram,
)
from guidance.io.igtl import IgtlClient
from guidance.io.validate import InputError
from guidance.navigation.setup import static_room
from guidance.pipeline.config import IngestConfig, PipelineConfig
from guidance.pipeline.loop import Pipeline
from guidance.pipeline.stats import percentiles
from guidance.planning.plan import Plan
from guidance.session import write_summary
from guidance.session.priority import raise_priority

__all__ = ["DEVICE", "STAGES", "run_latency"]

#: The image device the sender streams.
DEVICE = "Image_Reference"
#: The stages of a frame, in order (``Pipeline.stats`` names).
FRAME_STAGES = ("ingest", "preprocess", "segment", "needle", "safety", "output", "overlay")
#: The issue's targets (fluoroscopy 512x512 at 15 fps on the 2-core CPU, model on).
E2E_P99_TARGET_MS = 15.0
TRANSPORT_P99_TARGET_MS = 1.0
TRANSPORT_RATIO_TARGET = 0.2
#: ``stage`` values of :func:`run_latency`: all = transport + pipeline.
STAGES = ("all", "transport", "pipeline")

_Phase = Callable[[int, float, float], dict[str, Any]]


def _transport_ours(size: int, fps: float, seconds: float) -> dict[str, Any]:
    sender = SenderProcess.frames(size, fps, seconds)
    usage = ProcessUsage()
    client = IgtlClient("127.0.0.1", sender.port).start()
    lat: list[float] = []
    seq = 0
    deadline = time.monotonic() + seconds + 10
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


def _transport_pyigtl(size: int, fps: float, seconds: float) -> dict[str, Any]:
    import pyigtl

    sender = SenderProcess.frames(size, fps, seconds)
    usage = ProcessUsage()
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", sender.port)
    lat: list[float] = []
    got_any = False
    deadline = time.monotonic() + seconds + 10
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


def _pipeline(size: int, fps: float, seconds: float) -> dict[str, Any]:
    sender = SenderProcess.frames(size, fps, seconds)
    usage = ProcessUsage()
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
    seen = {"frames": 0, "needle": 0, "focus_window": 0, "focus_miss": 0}
    infer_ms: list[float] = []

    def count(r: Any, _rgb: Any) -> None:  # how the segmentation ran, frame by frame
        if r.kind != "frame":
            return
        seen["frames"] += 1
        seen["needle"] += r.needle is not None
        seen["focus_window"] += r.metrics.get("segment_focus") == 1.0
        seen["focus_miss"] += r.metrics.get("segment_focus_miss") == 1.0
        if "segment_infer_ms" in r.metrics:
            infer_ms.append(r.metrics["segment_infer_ms"] + r.metrics.get(
                "segment_focus_infer_ms", 0.0))

    pipe = Pipeline(client.slots, config, send=send, room=room, on_result=count)
    pipe.set_plan(Plan(np.zeros(3), np.array([100.0, 0.0, 0.0]), "bench"))
    sent, stats = run_until_sent(client, pipe, sender)
    e2e = pipe.stats.values("end_to_end")
    half = e2e.size // 2
    stage_values = {name: pipe.stats.values(name).tolist() for name in FRAME_STAGES
                    if name in pipe.stats.names()}
    stage_values["model inference (in segment)"] = infer_ms
    return {
        "latency_ms": stats.get("end_to_end"),
        "stages_ms": {k: v for k, v in stats.items() if k != "end_to_end"},
        "model_inference_ms": percentiles(np.array(infer_ms)),
        "where_the_time_goes": time_budget(stats, percentiles(np.array(infer_ms))),
        "frames_sent": sent,
        "segmentation": {
            "frames": seen["frames"], "needle_found": seen["needle"],
            "focus_window": seen["focus_window"],
            "focus_window_missed_then_whole_frame": seen["focus_miss"],
            "focus_px": config.segment.focus_px},
        "frames_processed": pipe.frames_processed,
        "frames_dropped": pipe.frames_dropped,
        "backlog_check": {
            "first_half_p50_ms": percentiles(e2e[:half])["p50"],
            "second_half_p50_ms": percentiles(e2e[half:])["p50"],
        },
        **usage.done(),
        "_values": e2e.tolist(),
        "_stage_values": stage_values,
    }


def time_budget(stats: dict[str, Any], infer: dict[str, float]) -> list[dict[str, Any]]:
    """Each frame stage's median and its share of the end-to-end median, largest first,
    with the model's inference inside the segment stage, and what the stages leave
    unaccounted (hand-overs between threads, the wait for the loop)."""
    e2e = stats.get("end_to_end", {}).get("p50") or float("nan")
    rows = [{"stage": name, "p50_ms": stats[name]["p50"], "p99_ms": stats[name]["p99"],
             "share_of_e2e_p50": round(stats[name]["p50"] / e2e, 3)}
            for name in FRAME_STAGES if name in stats]
    rows.sort(key=lambda r: -r["p50_ms"])
    for r in rows:
        if r["stage"] == "segment" and infer.get("count"):
            r["of_which_model_inference_p50_ms"] = infer["p50"]
    rest = e2e - sum(r["p50_ms"] for r in rows)
    rows.append({"stage": "between stages (queue, hand-overs)", "p50_ms": round(rest, 3),
                 "share_of_e2e_p50": round(rest / e2e, 3)})
    return rows


def _targets(out: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, met or not, from this run's figures."""
    got: dict[str, Any] = {}
    if "pipeline" in out:
        p99 = out["pipeline"]["latency_ms"]["p99"]
        got["e2e_p99_ms"] = {"target": E2E_P99_TARGET_MS, "value": p99,
                             "met": p99 <= E2E_P99_TARGET_MS}
    if "transport" in out:
        p99 = out["transport"]["latency_ms"]["p99"]
        got["transport_p99_ms"] = {"target": TRANSPORT_P99_TARGET_MS, "value": p99,
                                   "met": p99 <= TRANSPORT_P99_TARGET_MS}
    if "transport_p99_ratio_ours_over_pyigtl" in out:
        r = out["transport_p99_ratio_ours_over_pyigtl"]
        got["transport_p99_over_pyigtl"] = {"target": TRANSPORT_RATIO_TARGET, "value": r,
                                            "met": r <= TRANSPORT_RATIO_TARGET}
    return got


def _normal_priority() -> None:
    """In a child process before it runs: nice 0, whatever the parent's."""
    os.setpriority(os.PRIO_PROCESS, 0, 0)


class _Busy:
    """``n`` processes that keep a core each busy (a loaded machine: another program,
    a compile, a virus scan), at normal priority, until :meth:`stop`."""

    def __init__(self, n: int) -> None:
        import subprocess
        import sys

        # At normal priority (nice 0) even when this process runs with another one.
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                       preexec_fn=_normal_priority) for _ in range(n)]

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(10)


def run_latency(stage: str, size: int, fps: float, seconds: float, json_path: Path,
                say: Say = log_say, busy: int = 0, nice: int = 0) -> BenchReport:
    """Run the phases of ``stage``; write ``json_path`` and a histogram PNG beside it.

    Args:
        stage: one of :data:`STAGES`.
        size: frame size, pixels a side (32..2048; uint16 frames).
        fps: frames sent per second, Hz.
        seconds: duration of each phase, s.
        json_path: where the results go (JSON).
        say: where the progress lines go.
        busy: processes that keep a core each busy during every phase (0: none).
        nice: CPU priority to run at (:func:`guidance.session.priority.raise_priority`;
            the sender and the busy processes stay at 0).

    Returns:
        The report; its summary has one entry per phase (``latency_ms``: p50/p95/p99/max
        and count, mean, ms), with both transports their p99 ratio, the targets met or
        not, and for the pipeline where the time goes. Beside the JSON: a histogram PNG
        of each phase and, for the pipeline, ``<name>_stages.png`` with one per stage.

    Raises:
        InputError: ``size`` or ``stage`` out of range.
        SessionError: a sender process that does not start.
    """
    if not 32 <= size <= 2048:
        raise InputError(f"--size must be 32..2048, got {size}")
    if stage not in STAGES:
        raise InputError(f"stage must be one of {STAGES}, got {stage!r}")
    if not 0 <= busy <= 64:
        raise InputError(f"--busy must be 0..64, got {busy}")
    out: dict[str, Any] = {"size": size, "fps": fps, "seconds": seconds,
                           "dtype": "uint16", "cpu_count": os.cpu_count(),
                           "busy_processes": busy, "nice": nice}
    if nice:
        out["priority"] = raise_priority(nice)
        say(out["priority"])
    phases: list[tuple[str, _Phase]] = []
    if stage in ("all", "transport"):
        phases += [("transport", _transport_ours), ("transport_pyigtl", _transport_pyigtl)]
    if stage in ("all", "pipeline"):
        phases.append(("pipeline", _pipeline))
    series: dict[str, list[float]] = {}
    stage_series: dict[str, list[float]] = {}
    load = _Busy(busy) if busy else None
    try:
        for i, (name, fn) in enumerate(phases, 1):
            say(f"[{i}/{len(phases)}] {name}: {seconds:.0f} s at {fps:.0f} fps, "
                f"{size}x{size} uint16{f', {busy} busy processes' if busy else ''} ...")
            res = fn(size, fps, seconds)
            series[name] = res.pop("_values")
            stage_series.update(res.pop("_stage_values", {}))
            out[name] = res
            lat = res["latency_ms"]
            say(f"      p50 {lat['p50']:.2f}  p95 {lat['p95']:.2f}  p99 {lat['p99']:.2f}  "
                f"max {lat['max']:.2f} ms")
    finally:
        if load is not None:
            load.stop()
    if "transport" in out and "transport_pyigtl" in out:
        ours, base = out["transport"]["latency_ms"], out["transport_pyigtl"]["latency_ms"]
        out["transport_p99_ratio_ours_over_pyigtl"] = round(ours["p99"] / base["p99"], 3)
    out["targets"] = _targets(out)
    out["peak_rss_mb"] = round(psutil.Process().memory_info().rss / 2**20, 1)
    out["peak_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    write_summary(json_path, out)
    png = json_path.with_suffix(".png")
    write_histogram(png, series, f"guidance bench {size}px uint16 @ {fps:.0f} fps")
    if stage_series:
        write_histogram(json_path.with_name(json_path.stem + "_stages.png"), stage_series,
                        f"pipeline stages, {size}px fluoroscopy @ {fps:.0f} fps")
    return BenchReport(out, json_path, png)
