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
import threading
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

__all__ = ["DEVICE", "STAGES", "run_latency"]

#: The image device the sender streams.
DEVICE = "Image_Reference"
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

    def count(r: Any, _rgb: Any) -> None:  # how the segmentation ran, frame by frame
        if r.kind != "frame":
            return
        seen["frames"] += 1
        seen["needle"] += r.needle is not None
        seen["focus_window"] += r.metrics.get("segment_focus") == 1.0
        seen["focus_miss"] += r.metrics.get("segment_focus_miss") == 1.0

    pipe = Pipeline(client.slots, config, send=send, room=room, on_result=count)
    pipe.set_plan(Plan(np.zeros(3), np.array([100.0, 0.0, 0.0]), "bench"))
    client.start()
    pipe.start()
    sent = sender.wait()
    threading.Event().wait(0.5)  # the last frame's processing
    pipe.stop()
    client.stop()
    stats = {name: percentiles(pipe.stats.values(name)) for name in pipe.stats.names()}
    e2e = pipe.stats.values("end_to_end")
    half = e2e.size // 2
    return {
        "latency_ms": stats.get("end_to_end"),
        "stages_ms": {k: v for k, v in stats.items() if k != "end_to_end"},
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
    }


def run_latency(stage: str, size: int, fps: float, seconds: float, json_path: Path,
                say: Say = log_say) -> BenchReport:
    """Run the phases of ``stage``; write ``json_path`` and a histogram PNG beside it.

    Args:
        stage: one of :data:`STAGES`.
        size: frame size, pixels a side (32..2048; uint16 frames).
        fps: frames sent per second, Hz.
        seconds: duration of each phase, s.
        json_path: where the results go (JSON).
        say: where the progress lines go.

    Returns:
        The report; its summary has one entry per phase (``latency_ms``: p50/p95/p99/max
        and count, mean, ms) and, with both transports, their p99 ratio.

    Raises:
        InputError: ``size`` or ``stage`` out of range.
        SessionError: a sender process that does not start.
    """
    if not 32 <= size <= 2048:
        raise InputError(f"--size must be 32..2048, got {size}")
    if stage not in STAGES:
        raise InputError(f"stage must be one of {STAGES}, got {stage!r}")
    out: dict[str, Any] = {"size": size, "fps": fps, "seconds": seconds,
                           "dtype": "uint16", "cpu_count": os.cpu_count()}
    phases: list[tuple[str, _Phase]] = []
    if stage in ("all", "transport"):
        phases += [("transport", _transport_ours), ("transport_pyigtl", _transport_pyigtl)]
    if stage in ("all", "pipeline"):
        phases.append(("pipeline", _pipeline))
    series: dict[str, list[float]] = {}
    for i, (name, fn) in enumerate(phases, 1):
        say(f"[{i}/{len(phases)}] {name}: {seconds:.0f} s at {fps:.0f} fps, "
            f"{size}x{size} uint16 ...")
        res = fn(size, fps, seconds)
        series[name] = res.pop("_values")
        out[name] = res
        lat = res["latency_ms"]
        say(f"      p50 {lat['p50']:.2f}  p95 {lat['p95']:.2f}  p99 {lat['p99']:.2f}  "
            f"max {lat['max']:.2f} ms")
    if "transport" in out and "transport_pyigtl" in out:
        ours, base = out["transport"]["latency_ms"], out["transport_pyigtl"]["latency_ms"]
        out["transport_p99_ratio_ours_over_pyigtl"] = round(ours["p99"] / base["p99"], 3)
    out["peak_rss_mb"] = round(psutil.Process().memory_info().rss / 2**20, 1)
    out["peak_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    write_summary(json_path, out)
    png = json_path.with_suffix(".png")
    write_histogram(png, series, f"guidance bench {size}px uint16 @ {fps:.0f} fps")
    return BenchReport(out, json_path, png)
