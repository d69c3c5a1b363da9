"""Tip error of the segment stage with the focus window and with the whole frame,
against the simulator's truth, on fluoroscopy of the real CT (the needle advancing).

    python scripts/focus_accuracy.py [SEED ...]      # default seeds 0 1 2 3

For each seed, 60 frames of a 512x512 fluoroscopy scanner from t = 6 s, 0.13 s apart
(about 0.5 mm of needle a frame), go through PreprocessStage and SegmentStage as the
live loop runs them, once with ``segment.focus_px = 0`` (the whole frame every time)
and once with the default window. Prints per setting the frames with the tip in view,
those with a needle found, those segmented in the window and those that fell back to
the whole frame, and the tip error (median, p90, max, mm).
"""

from __future__ import annotations

import sys

import numpy as np

from guidance.pipeline.config import PreprocessConfig, SegmentConfig
from guidance.pipeline.frame import Frame, WorkItem
from guidance.pipeline.segment import SegmentStage, load_segmenters
from guidance.pipeline.stages import PreprocessStage
from guidance.sim import make_scanner


def run(focus_px: int, seeds: list[int], size: int = 512) -> dict[str, float]:
    """The tip errors of one setting over ``seeds``."""
    cfg = SegmentConfig(focus_px=focus_px)
    segs, errors = load_segmenters(cfg, ("fluoro",))
    if errors:
        raise SystemExit(f"focus_accuracy: {errors}")
    errs: list[float] = []
    found = total = in_window = misses = 0
    for seed in seeds:
        stage, pre = SegmentStage(cfg, segs), PreprocessStage(PreprocessConfig())
        scanner = make_scanner("fluoro", size=size, seed=seed)
        for i in range(60):
            f = scanner.frame(i, 6.0 + 0.13 * i)
            item = WorkItem(Frame(i, "Image_Reference", f.image, f.t_s, 0), t_s=f.t_s,
                            modality="fluoro")
            pre.process(item)
            stage.process(item)
            tip = f.truth.tip_ij
            if not np.all(np.isfinite(tip)):
                continue
            total += 1
            in_window += item.metrics.get("segment_focus") == 1.0
            misses += item.metrics.get("segment_focus_miss") == 1.0
            if item.needle is not None:
                found += 1
                errs.append(float(np.linalg.norm(item.needle.tip_ij - tip))
                            * float(f.image.spacing_mm[0]))
    e = np.array(errs)
    return {"focus_px": focus_px, "frames": total, "found": found, "in_window": in_window,
            "window_misses": misses, "tip_median_mm": round(float(np.median(e)), 3),
            "tip_p90_mm": round(float(np.percentile(e, 90)), 3),
            "tip_max_mm": round(float(e.max()), 2)}


def main() -> None:
    seeds = [int(s) for s in sys.argv[1:]] or [0, 1, 2, 3]
    for focus_px in (0, SegmentConfig().focus_px):
        print(run(focus_px, seeds), flush=True)


if __name__ == "__main__":
    main()
