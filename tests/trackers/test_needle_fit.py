"""The needle line fitted to a probability mask: ends, orientation, rejection."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from trackers.needle_fit import (
    NeedleRule,
    flank_asymmetry,
    needle_evidence,
)


def _mask(tip: tuple[int, int], hub: tuple[int, int], width: int = 3,
          shape: tuple[int, int] = (128, 128)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.line(m, hub, tip, 1, width)
    return m.astype(np.float32)


@pytest.mark.parametrize(("tip", "hub"), [((90, 100), (0, 10)), ((64, 120), (64, 0)),
                                          ((20, 70), (127, 20))])
def test_fit_recovers_tip_and_axis(tip: tuple[int, int], hub: tuple[int, int]) -> None:
    det = needle_evidence(_mask(tip, hub, width=1), 1.0, 1.0).needle
    assert det is not None
    assert np.linalg.norm(det.tip_ij - np.array(tip)) < 2.0
    true_axis = np.subtract(tip, hub) / np.linalg.norm(np.subtract(tip, hub))
    assert math.degrees(math.acos(min(1.0, float(det.axis_ij @ true_axis)))) < 1.5
    assert det.confidence > 0.8


def test_hint_decides_which_end_is_the_tip() -> None:
    m = _mask((100, 64), (28, 64))  # both ends inside the image
    det = needle_evidence(m, 0.2, 0.2, hub_hint_ij=(110, 64)).needle
    assert det is not None and det.tip_ij[0] < 40
    det = needle_evidence(m, 0.2, 0.2, hub_hint_ij=(10, 64)).needle
    assert det is not None and det.tip_ij[0] > 90


def test_largest_piece_wins_and_short_or_empty_is_none() -> None:
    m = _mask((100, 100), (20, 20))
    m[5:9, 110:114] = 1.0  # a blob elsewhere
    det = needle_evidence(m, 1.0, 1.0).needle
    assert det is not None and det.length_px > 100
    assert needle_evidence(np.zeros((64, 64), np.float32), 1.0, 1.0).needle is None
    assert needle_evidence(_mask((20, 20), (25, 22)), 1.0, 1.0,
                           NeedleRule(min_length_mm=20.0)).needle is None
    with pytest.raises(ValueError, match="2D"):
        needle_evidence(np.zeros((2, 8, 8), np.float32), 1.0, 1.0)


def test_min_length_in_mm_uses_spacing() -> None:
    m = _mask((40, 20), (20, 20), width=1)  # 20 px between pixel centres
    assert needle_evidence(m, 0.2, 0.2).needle is None  # 4 mm < 5 mm
    assert needle_evidence(m, 0.3, 0.3).needle is not None  # 6 mm
    assert needle_evidence(m, math.nan, 0.3).needle is not None  # unknown spacing: nominal
    assert needle_evidence(m, math.nan, 0.2).needle is None


def test_rule_reports_a_straight_needle_even_when_broken_by_dropout() -> None:
    m = _mask((60, 64), (0, 64), width=3)
    m[62:67, 70:128] = 0.0
    cv2.line(m, (72, 64), (127, 64), 1.0, 3)  # the same needle after a 12 px gap
    ev = needle_evidence(m, 0.2, 0.2)
    assert ev.needle is not None, ev.reason
    assert ev.reason == "" and ev.collinear > 0.99 and ev.scatter_mm < 0.3
    assert ev.length_mm == pytest.approx(ev.needle.length_px * 0.2)


def test_rule_rejects_a_curved_wall_and_says_why() -> None:
    m = np.zeros((128, 128), np.float32)
    cv2.ellipse(m, (64, 20), (50, 50), 0, 20, 160, 1.0, 3)  # a bright arc, 140 degrees
    ev = needle_evidence(m, 0.2, 0.2)
    assert ev.needle is None and ev.candidate is not None  # a line fits; it is no needle
    assert ev.length_mm > 10.0
    assert ev.reason.startswith("needle evidence not straight")
    assert ev.scatter_mm > NeedleRule().max_scatter_mm


def test_rule_rejects_scattered_evidence_and_short_pieces() -> None:
    m = np.zeros((128, 128), np.float32)
    for k in range(6):  # six parallel, equally strong dashes: no one line holds half
        cv2.line(m, (10, 10 + 20 * k), (40, 10 + 20 * k), 1.0, 2)
    ev = needle_evidence(m, 0.3, 0.3)
    assert ev.needle is None and ev.reason.startswith("needle evidence scattered")
    assert ev.collinear == pytest.approx(1 / 6, abs=0.05)
    # the same dashes are a needle if scattered evidence were allowed
    assert needle_evidence(m, 0.3, 0.3, NeedleRule(min_collinear=0.1)).needle is not None
    short = needle_evidence(_mask((30, 20), (20, 20), width=3), 0.2, 0.2)
    assert short.needle is None and "shorter than 5 mm" in short.reason
    none = needle_evidence(np.zeros((32, 32), np.float32), 0.2, 0.2)
    assert none.needle is None and none.candidate is None and none.reason


def test_scatter_limit_follows_the_models_nominal_grid() -> None:
    m = np.zeros((128, 128), np.float32)
    m[62:66, 0:100] = 1.0  # 4 px wide: scatter 1.1 px
    assert needle_evidence(m, 0.1, 0.1).needle is not None  # 0.14 mm, thin
    assert needle_evidence(m, 0.5, 0.5).needle is not None  # coarse model: 1.4 px allowed
    ev = needle_evidence(m, 0.5, 0.2)  # fine model, frame on a coarse grid: 0.7 mm wide
    assert ev.needle is None and "not straight" in ev.reason


@pytest.mark.parametrize("bad", [{"threshold": 1.0}, {"min_collinear": 1.5},
                                 {"max_scatter_mm": 0.0}, {"band_mm": math.nan},
                                 {"min_length_mm": -1.0}, {"max_flank_asymmetry": 0.0},
                                 {"max_flank_asymmetry": math.inf},
                                 {"flank_mm": (3.0, 1.5)}, {"flank_mm": (0.0, 2.0)},
                                 {"flank_mm": (1.0,)}, {"min_mean_prob": 1.0},
                                 {"min_mean_prob": -0.1}, {"min_mean_prob": math.nan}])
def test_rule_refuses_bad_limits(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        NeedleRule(**bad)


def _ct_picture(plate: bool) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like model input (0.5 mm/px): soft tissue (0.0) with a bright 1.5 px line at
    row 64; with ``plate`` the rows above it are bone (0.45), as at the skull's inner
    table (bone one side, brain the other). Returns (image, needle probability)."""
    img = np.zeros((128, 128), np.float32)
    if plate:
        img[:63, :] = 0.45
    img[63:66, 10:110] = 0.9
    img = cv2.GaussianBlur(img, (0, 0), 0.6)
    img += np.random.default_rng(1).normal(0.0, 0.01, img.shape).astype(np.float32)
    prob = np.zeros_like(img)
    prob[64, 10:110] = 0.95
    return img, prob


CT_CARD_LIMITS = {"max_flank_asymmetry": 0.55}  # as the shipped CT card's needle_rule


def test_flank_asymmetry_tells_a_needle_in_tissue_from_a_bone_plate() -> None:
    rule = NeedleRule.for_model(CT_CARD_LIMITS)
    assert rule.max_flank_asymmetry == 0.55
    img, prob = _ct_picture(plate=False)
    ev = needle_evidence(prob, 0.5, 0.5, rule, image=img)
    assert ev.needle is not None and ev.flank_asymmetry < 0.1
    img, prob = _ct_picture(plate=True)
    ev = needle_evidence(prob, 0.5, 0.5, rule, image=img)
    assert ev.needle is None and ev.candidate is not None
    assert ev.reason.startswith("needle evidence is an edge, not a line")
    # sides 0.45 and 0 differ by 0.45; the line stands 0.9 - 0.225 above their mean
    assert ev.flank_asymmetry == pytest.approx(0.45 / 0.675, abs=0.05)
    # the default rule (ultrasound, fluoroscopy) does not look at the flanks
    assert needle_evidence(prob, 0.5, 0.5).needle is not None
    assert math.isnan(needle_evidence(prob, 0.5, 0.5).flank_asymmetry)


def test_flank_asymmetry_of_a_dark_line_or_a_point_is_infinite() -> None:
    img, prob = _ct_picture(plate=False)
    det = needle_evidence(prob, 0.5, 0.5).needle
    assert det is not None
    assert flank_asymmetry(img, det, 0.5) < 0.1
    assert flank_asymmetry(-img, det, 0.5) == math.inf  # darker than its sides
    point = type(det)(det.tip_ij, det.tip_ij, det.axis_ij, 0.0, 1, 1.0, 1.0)
    assert flank_asymmetry(img, point, 0.5) == math.inf
    with pytest.raises(ValueError, match="2D"):
        flank_asymmetry(img[None], det, 0.5)
    with pytest.raises(ValueError, match="spacing_mm"):
        flank_asymmetry(img, det, math.nan)


def test_a_rule_that_checks_the_flanks_needs_the_image() -> None:
    img, prob = _ct_picture(plate=False)
    rule = NeedleRule.for_model(CT_CARD_LIMITS)
    with pytest.raises(ValueError, match="model input image"):
        needle_evidence(prob, 0.5, 0.5, rule)
    with pytest.raises(ValueError, match="model input image"):
        needle_evidence(prob, 0.5, 0.5, rule, image=img[:64])
    assert NeedleRule.for_model({}) == NeedleRule()


def test_a_models_own_limits_win_over_the_configured_ones_and_must_be_rule_fields() -> None:
    rule = NeedleRule.for_model(CT_CARD_LIMITS, threshold=0.6, max_flank_asymmetry=2.0)
    assert rule.threshold == 0.6 and rule.max_flank_asymmetry == 0.55
    with pytest.raises(ValueError, match=r"needle_rule: unknown field\(s\) \['max_flank'\]"):
        NeedleRule.for_model({"max_flank": 0.5})
    with pytest.raises(ValueError, match="max_flank_asymmetry"):
        NeedleRule.for_model({"max_flank_asymmetry": -1.0})


def test_a_faint_piece_is_not_a_needle_under_a_models_confidence_limit() -> None:
    m = np.zeros((128, 128), np.float32)
    m[63:65, 10:110] = 0.8  # straight and long, but the model is unsure of it
    assert needle_evidence(m, 0.2, 0.2).needle is not None  # default rule: no limit
    rule = NeedleRule.for_model({"min_mean_prob": 0.84})
    ev = needle_evidence(m, 0.2, 0.2, rule)
    assert ev.needle is None and ev.candidate is not None
    assert "needle evidence faint (mean probability 0.80" in ev.reason
    m[63:65, 10:110] = 0.9
    assert needle_evidence(m, 0.2, 0.2, rule).needle is not None
