"""What the ultrasound anatomy check (nerves and vessels the model sees -> warnings) adds
per frame (``guidance bench --stage anatomy``, or ``--modality us``).

Simulated B-mode frames go through the pipeline's own preprocess and segment stages with
the shipped US model (ONNX Runtime), then the safety stage's image-anatomy step
(components, distances, persistence) is timed on each frame that has a needle. The
segment stage is timed in the same run on the same frames: the anatomy check's cost is
also given as a fraction of it, which holds on a noisy machine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from guidance.bench.measure import BenchReport, Say, log_say, write_histogram
from guidance.io.validate import InputError
from guidance.session import SessionError, write_summary

__all__ = ["TARGET_P99_MS", "run_anatomy"]

#: The issue's target: the anatomy check adds at most this per 512 x 512 frame (p99).
TARGET_P99_MS = 2.0
_WARMUP = 10


def run_anatomy(size: int, frames: int, json_path: Path, modality: str = "us",
                say: Say = log_say) -> BenchReport:
    """Time the anatomy check and the segment stage; write ``json_path`` and a histogram
    PNG beside it.

    Args:
        size: frame size, pixels a side (the US simulator's B-mode frames).
        frames: frames timed after a 10-frame warm-up (0: 300); only those with a needle
            count.
        json_path: where the results go (JSON).
        modality: must be ``us`` (the check is for ultrasound).
        say: where the progress lines go.

    Returns:
        The report; ``anatomy_ms`` and ``segment_ms`` (p50/p95/p99/max, ms), their p50
        ratio, the target and whether it is met.

    Raises:
        InputError: a modality other than ``us``.
        SessionError: no frame with a needle.
    """
    from guidance.navigation.navigator import Navigator
    from guidance.navigation.setup import static_room
    from guidance.pipeline.config import PipelineConfig
    from guidance.pipeline.frame import Frame, WorkItem
    from guidance.pipeline.segment import SegmentStage
    from guidance.pipeline.stages import PreprocessStage, SafetyStage
    from guidance.pipeline.stats import percentiles
    from guidance.sim import make_scanner
    from models.segmenter import Segmenter
    from models.shipped import shipped_card

    if modality != "us":
        raise InputError(f"--stage anatomy: the anatomy check is for ultrasound (--modality "
                         f"us), got {modality!r}")
    n_frames = frames if frames else 300
    config = PipelineConfig()
    seg = Segmenter(shipped_card("us"), "auto")
    pre = PreprocessStage(config.preprocess)
    stage = SegmentStage(config.segment, {"us": seg})
    safety = SafetyStage(config.safety, Navigator(static_room({}, "bench")),
                         config.image_anatomy)
    scanner = make_scanner("us", size=size, seed=7)
    pool = [scanner.frame(i, i / 15.0).image for i in range(24)]
    say(f"bench anatomy: {n_frames} frames {size}x{size} (US simulator, shipped "
        f"model on {seg.backend.name}) ...")
    seg_ms, ana_ms = [], []
    with_needle = 0
    for i in range(n_frames + _WARMUP):
        img = pool[i % len(pool)]
        item = WorkItem(frame=Frame(i, "Image", img, i / 15.0, time.monotonic_ns()),
                        t_s=i / 15.0, modality="us")
        pre.process(item)
        t0 = time.perf_counter_ns()
        stage.process(item)
        t1 = time.perf_counter_ns()
        if not safety.image_check_applies(item):
            continue
        t2 = time.perf_counter_ns()
        safety.image_anatomy(item)  # the step timed, alone
        t3 = time.perf_counter_ns()
        if i < _WARMUP:
            continue
        with_needle += 1
        seg_ms.append((t1 - t0) * 1e-6)
        ana_ms.append((t3 - t2) * 1e-6)
    if not ana_ms:
        raise SessionError("no frame with a needle: nothing to time")
    a, s = percentiles(np.array(ana_ms)), percentiles(np.array(seg_ms))
    out: dict[str, Any] = {
        "size": size, "frames_timed": with_needle, "backend": seg.backend.name,
        "anatomy_ms": a, "segment_ms": s,
        "anatomy_over_segment_p50": round(a["p50"] / s["p50"], 4),
        "target_p99_ms": TARGET_P99_MS, "meets_target": bool(a["p99"] <= TARGET_P99_MS),
    }
    write_summary(json_path, out)
    png = json_path.with_suffix(".png")
    write_histogram(png, {"anatomy check": ana_ms, "segment stage": seg_ms},
                    f"US anatomy check vs segmentation, {size}px")
    return BenchReport(out, json_path, png)
