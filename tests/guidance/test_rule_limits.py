"""A model's own needle-rule limit, measured on its training frames."""

from __future__ import annotations

import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from guidance.training.rule_limits import measure_flank_limit, measure_prob_limit


class _Backend:
    """Needle probability = the frame's scripted needle mask."""

    def __init__(self, masks: np.ndarray) -> None:
        self.masks = masks
        self.calls = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        m = self.masks[self.calls]
        self.calls += 1
        return np.stack([1.0 - m, m])[None].astype(np.float32)


def _training_set(n: int, plates: int) -> tuple[SimpleNamespace, np.ndarray]:
    """n frames (0.5 mm/px) with a bright needle line in tissue; the first ``plates`` of
    them have bone on one side of the line (an edge). Returns (dataset, masks)."""
    rng = np.random.default_rng(3)
    images = np.zeros((n, 96, 96), np.float32)
    labels = np.zeros((n, 96, 96), np.uint8)
    masks = np.zeros((n, 96, 96), np.float32)
    for i in range(n):
        r = int(rng.integers(30, 66))
        if i < plates:
            images[i, : r - 1] = 0.45
        images[i, r - 1:r + 2, 10:86] += 0.9
        images[i] = cv2.GaussianBlur(images[i], (0, 0), 0.6)
        images[i] += rng.normal(0.0, 0.01, (96, 96)).astype(np.float32)
        cv2.line(labels[i], (10, r), (85, r), 1, 1)
        masks[i, r, 10:86] = 0.95
    ds = SimpleNamespace(images=images, labels=labels, spacing_mm=np.full(n, 0.5),
                         description={"split": "train", "seed": 0})
    return ds, masks


def _segmenter(masks: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(card=SimpleNamespace(name="m", pixel_spacing_mm=0.5),
                           backend=_Backend(masks))


def test_the_limit_is_the_percentile_of_the_models_own_needles_rounded_up() -> None:
    ds, masks = _training_set(40, plates=2)
    limits, record = measure_flank_limit(_segmenter(masks), ds, percentile=90.0)
    rec = record["max_flank_asymmetry"]
    assert rec["frames"] == 40 and rec["needles"] == 40 and rec["data"] == ds.description
    assert rec["median"] < 0.1  # needles in tissue
    # 2 of 40 are edges (~0.67): the 90th percentile is a needle in tissue, the limit
    # rounds it up to the next 0.01 and leaves the two edges above it
    assert rec["value_at_percentile"] < 0.1
    assert limits == {"max_flank_asymmetry": math.ceil(rec["value_at_percentile"] * 100) / 100}
    assert rec["needles_above_limit"] == 2
    limits, record = measure_flank_limit(_segmenter(masks), ds, percentile=99.5)
    assert limits["max_flank_asymmetry"] == pytest.approx(0.67, abs=0.06)


def test_a_model_that_reports_no_needle_has_no_measurable_limit() -> None:
    ds, masks = _training_set(5, plates=0)
    with pytest.raises(ValueError, match="reports no needle on its 5 training frames"):
        measure_flank_limit(_segmenter(np.zeros_like(masks)), ds)
    with pytest.raises(ValueError, match="percentile"):
        measure_flank_limit(_segmenter(masks), ds, percentile=0.0)
    dark = SimpleNamespace(**{**vars(ds), "images": -ds.images})  # needles darker than sides
    with pytest.raises(ValueError, match="not brighter than their flanks"):
        measure_flank_limit(_segmenter(masks), dark)


def test_the_confidence_limit_is_a_low_percentile_of_the_models_needles_rounded_down() -> None:
    ds, masks = _training_set(40, plates=0)
    masks[masks > 0] = 0.9375
    masks[:4][masks[:4] > 0] = 0.875  # 4 of 40 needles drawn less surely
    limits, record = measure_prob_limit(_segmenter(masks), ds, percentile=5.0)
    rec = record["min_mean_prob"]
    assert rec["frames"] == 40 and rec["needles"] == 40 and rec["data"] == ds.description
    assert rec["value_at_percentile"] == 0.875  # a measured value, not interpolated
    assert limits == {"min_mean_prob": 0.87} and rec["limit"] == 0.87  # rounded down
    assert rec["needles_below_limit"] == 0
    limits, _ = measure_prob_limit(_segmenter(masks), ds, percentile=50.0)
    assert limits == {"min_mean_prob": 0.93}


def test_no_confidence_limit_without_needles_or_with_a_bad_percentile() -> None:
    ds, masks = _training_set(4, plates=0)
    with pytest.raises(ValueError, match="reports no needle"):
        measure_prob_limit(_segmenter(np.zeros_like(masks)), ds)
    with pytest.raises(ValueError, match="percentile"):
        measure_prob_limit(_segmenter(masks), ds, percentile=100.0)
