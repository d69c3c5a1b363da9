"""The needle line fitted to a probability mask: ends, orientation, rejection."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from trackers.needle_fit import fit_needle_mask, needle_from_probs


def _mask(tip: tuple[int, int], hub: tuple[int, int], width: int = 3,
          shape: tuple[int, int] = (128, 128)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.line(m, hub, tip, 1, width)
    return m.astype(np.float32)


@pytest.mark.parametrize(("tip", "hub"), [((90, 100), (0, 10)), ((64, 120), (64, 0)),
                                          ((20, 70), (127, 20))])
def test_fit_recovers_tip_and_axis(tip: tuple[int, int], hub: tuple[int, int]) -> None:
    det = fit_needle_mask(_mask(tip, hub, width=1))
    assert det is not None
    assert np.linalg.norm(det.tip_ij - np.array(tip)) < 2.0
    true_axis = np.subtract(tip, hub) / np.linalg.norm(np.subtract(tip, hub))
    assert math.degrees(math.acos(min(1.0, float(det.axis_ij @ true_axis)))) < 1.5
    assert det.confidence > 0.8


def test_hint_decides_which_end_is_the_tip() -> None:
    m = _mask((100, 64), (28, 64))  # both ends inside the image
    det = fit_needle_mask(m, hub_hint_ij=(110, 64))
    assert det is not None and det.tip_ij[0] < 40
    det = fit_needle_mask(m, hub_hint_ij=(10, 64))
    assert det is not None and det.tip_ij[0] > 90


def test_largest_piece_wins_and_short_or_empty_is_none() -> None:
    m = _mask((100, 100), (20, 20))
    m[5:9, 110:114] = 1.0  # a blob elsewhere
    det = fit_needle_mask(m)
    assert det is not None and det.length_px > 100
    assert fit_needle_mask(np.zeros((64, 64), np.float32)) is None
    assert fit_needle_mask(_mask((20, 20), (25, 22)), min_length_px=20) is None
    with pytest.raises(ValueError, match="2D"):
        fit_needle_mask(np.zeros((2, 8, 8), np.float32))


def test_min_length_in_mm_uses_spacing() -> None:
    m = _mask((40, 20), (20, 20), width=1)  # 20 px between pixel centres
    assert needle_from_probs(m, 0.2, 0.2) is None  # 4 mm < 5 mm
    assert needle_from_probs(m, 0.3, 0.3) is not None  # 6 mm
    assert needle_from_probs(m, math.nan, 0.3) is not None  # unknown spacing: nominal
    assert needle_from_probs(m, math.nan, 0.2) is None
