"""CT control slabs through the live loop (``guidance bench --modality ct``).

A pool of distinct 5-slice 512 x 512 slabs of the real CT (needles at several depths and
tilts, some after patient motion) goes through the pipeline one scan at a time, as a
scanner sends them; each is timed from "received" (put in the loop's slot) to "results
handed to the sender" (the pipeline's end-to-end), with the stages (registration,
segmentation, 3D fit, safety, outputs) in the same run. The model alone is the
segmentation stage: one batched ONNX Runtime call over the slab's slices.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from guidance.bench.measure import BenchReport, Say, log_say, write_histogram
from guidance.session import SessionError, write_summary

__all__ = ["SLICES", "TARGET_E2E_P99_MS", "TARGET_SEGMENT_P99_MS", "Progress", "run_ct"]

#: The issue's targets on a 2-core CPU: a 5-slice 512^2 slab, received -> results sent.
TARGET_E2E_P99_MS = 150.0
#: ... the segmentation alone.
TARGET_SEGMENT_P99_MS = 40.0
#: Slices per control slab.
SLICES = 5
_POOL = 8
_WARMUP = 5  # slabs not counted (the first calls allocate)

#: A progress bar: ``progress(label)`` returns ``show(fraction 0..1, message)``.
Progress = Callable[[str], Callable[[float, str], None]]


def _no_progress(_label: str) -> Callable[[float, str], None]:
    return lambda _fraction, _message: None


def _pool(n: int, slices: int, progress: Progress) -> tuple[list[Any], Any]:
    from guidance.data import RealDataMissing, load_real_ct
    from guidance.planning.plan import Plan
    from guidance.sim.ct_slab import make_slab

    try:
        ct = load_real_ct()
    except RealDataMissing as e:
        raise SessionError(f"bench --modality ct needs the real CT: {e}") from e
    rng = np.random.default_rng(5)
    target = np.array([-17.0, 167.0, -200.0])
    u0 = np.array([0.57, -0.82, 0.0])
    plan = Plan(target - 70.0 * u0, target)
    out = []
    show = progress("bench ct: making slabs")
    for i in range(n):
        tilt = np.radians(rng.uniform(-20, 20))
        u = np.cos(tilt) * u0 + np.sin(tilt) * np.array([0.0, 0.0, 1.0])
        tip = target - rng.uniform(0, 25) * u
        move = None
        if i % 2:
            move = np.eye(4)
            move[:3, 3] = rng.uniform(-4, 4, 3)
        slab, _ = make_slab(ct, tip - 60.0 * u, tip, n_slices=slices, thickness_mm=3.0,
                            ct_to_scanner=move, rng=np.random.default_rng(i))
        out.append(slab)
        show((i + 1) / n, f"{i + 1}/{n}")
    return out, (ct, plan)


def run_ct(slabs: int, json_path: Path, say: Say = log_say,
           progress: Progress = _no_progress) -> BenchReport:
    """Send ``slabs`` control slabs through the pipeline one at a time; write
    ``json_path`` and a histogram PNG (per stage) beside it.

    Args:
        slabs: slabs timed after a 5-slab warm-up (0: 200), cycled from a pool of 8.
        json_path: where the results go (JSON).
        say: where the progress lines go.
        progress: makes the progress bars (slabs made, slabs timed).

    Returns:
        The report; ``latency_ms`` (end to end, p50/p95/p99/max, ms), ``stages_ms`` and
        ``targets`` (``value``, ``target``, ``pass``).

    Raises:
        SessionError: the real CT or the CT model is missing; a slab without a result
            within 30 s.
    """
    from guidance.io.messages import image_message_from_volume
    from guidance.io.slots import LatestSlots
    from guidance.pipeline.config import config_from_dict
    from guidance.pipeline.loop import Pipeline
    from guidance.pipeline.stats import percentiles

    n = slabs if slabs else 200
    pool, (ct, plan) = _pool(_POOL, SLICES, progress)
    slots = LatestSlots()
    pipe = Pipeline(slots, config_from_dict({"ingest": {"modality": "ct",
                                                        "stale_after_s": 30.0}}),
                    send=lambda m, cb: (cb and cb(time.monotonic_ns()), 1)[1])
    pipe.set_plan(plan)
    pipe.set_navigation_ct(ct)
    seg = pipe.ct_path.processor
    if seg is None:
        raise SessionError(f"no CT model: {pipe.ct_path.model_error}")
    done = threading.Event()

    def on_result(result: Any, rgb: Any) -> None:
        if result.kind == "frame":
            done.set()

    pipe.on_result = on_result
    pipe.start()
    backend = seg.slab_segmenter.segmenter.backend.name
    say(f"bench ct: {n} control slabs of {SLICES} x 512 x 512 (a pool of {len(pool)}), "
        f"shipped CT model on {backend}, registration SimpleITK ...")
    show = progress("bench ct")
    try:
        for i in range(n + _WARMUP):
            msg = image_message_from_volume(pool[i % len(pool)], "CT_Reference", time.time())
            done.clear()
            slots.put(msg.device_name, "IMAGE", msg, msg.timestamp, time.monotonic_ns(),
                      "bench")
            if not done.wait(30.0):
                raise SessionError(f"slab {i}: no result within 30 s ({pipe.last_error})")
            show((i + 1) / (n + _WARMUP), f"{i + 1}/{n + _WARMUP}")
    finally:
        pipe.stop()
    stages = {}
    series: dict[str, list[float]] = {}
    for name in ("end_to_end", "registration", "segment", "needle", "safety", "output",
                 "overlay", "processing"):
        v = pipe.stats.values(name)[-n:]
        if v.size:
            stages[name] = percentiles(v)
            series[name] = v.tolist()
    e2e, segp = stages["end_to_end"], stages["segment"]
    targets: dict[str, dict[str, Any]] = {
        "end_to_end_p99_ms": {"value": e2e["p99"], "target": TARGET_E2E_P99_MS,
                              "pass": e2e["p99"] <= TARGET_E2E_P99_MS},
        "segment_p99_ms": {"value": segp["p99"], "target": TARGET_SEGMENT_P99_MS,
                           "pass": segp["p99"] <= TARGET_SEGMENT_P99_MS}}
    out: dict[str, Any] = {
        "modality": "ct", "slabs": n, "slices": SLICES, "size": 512, "backend": backend,
        "latency_ms": {k: e2e[k] for k in ("p50", "p95", "p99", "max")},
        "stages_ms": {k: {q: v[q] for q in ("p50", "p95", "p99", "max")}
                      for k, v in stages.items()},
        "targets": targets,
    }
    write_summary(json_path, out)
    png = json_path.with_suffix(".png")
    write_histogram(png, {k: series[k] for k in ("end_to_end", "registration", "segment",
                                                 "needle", "safety") if k in series},
                    f"guidance bench --modality ct: {n} slabs of {SLICES} x 512^2", "slabs")
    return BenchReport(out, json_path, png)
