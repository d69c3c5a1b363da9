"""Needle Kalman filter: convergence, outlier gating, confidence decay, fusion."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from trackers.needle_filter import NeedleEstimate, NeedleFilter, measurement_from_pose

VELOCITY = np.array([0.0, 3.0, 4.0])  # 5 mm/s along the axis
AXIS = VELOCITY / 5.0
START = np.array([10.0, -20.0, 30.0])


def _run(
    f: NeedleFilter, rng: np.random.Generator, n: int, sigma: float = 0.5, rate_hz: float = 30.0
) -> list[NeedleEstimate]:
    out = []
    for i in range(n):
        t = i / rate_hz
        tip = START + VELOCITY * t + rng.normal(0.0, sigma, 3)
        axis = AXIS + rng.normal(0.0, sigma / 40.0, 3)
        est = f.update(tip, axis, t, "image", sigma)
        assert est is not None
        out.append(est)
    return out


def test_converges_on_constant_velocity_track() -> None:
    rng = np.random.default_rng(3)
    f = NeedleFilter(accel_sigma_mm_s2=5.0)
    ests = _run(f, rng, 300)  # 10 s
    last = ests[-60:]
    tip_err = [np.linalg.norm(e.tip_lps - (START + VELOCITY * e.t_s)) for e in last]
    assert np.sqrt(np.mean(np.square(tip_err))) < 0.35  # below the 0.5 mm/axis noise
    assert np.mean([e.speed_mm_s for e in last]) == pytest.approx(5.0, abs=0.5)
    assert all(e.accepted for e in ests)
    assert last[-1].confidence > 0.9
    assert np.linalg.norm(last[-1].axis_lps) == pytest.approx(1.0)
    axis_err_deg = [np.degrees(np.arccos(min(1.0, e.axis_lps @ AXIS))) for e in last]
    assert np.mean(axis_err_deg) < 1.0
    # First estimate is a track start: low maturity.
    assert ests[0].confidence == pytest.approx(1.0 / 3.0)


def test_outlier_is_rejected_and_state_unaffected() -> None:
    rng = np.random.default_rng(4)
    f = NeedleFilter()
    ests = _run(f, rng, 90)
    t = 90 / 30.0
    truth = START + VELOCITY * t
    bad = f.update(truth + np.array([15.0, 0.0, 0.0]), AXIS, t, "image", 0.5)
    assert bad is not None and not bad.accepted
    assert bad.innovation_mm == pytest.approx(15.0, abs=1.5)
    assert np.linalg.norm(bad.tip_lps - truth) < 1.0
    assert bad.confidence < ests[-1].confidence
    assert f.rejected == 1
    good = f.update(truth + VELOCITY / 30.0, AXIS, t + 1 / 30.0, "image", 0.5)
    assert good is not None and good.accepted


def test_consecutive_rejections_restart_the_track() -> None:
    rng = np.random.default_rng(5)
    f = NeedleFilter(restart_after_rejections=3)
    _run(f, rng, 30)
    moved = START + np.array([40.0, 0.0, 0.0])
    results = [f.update(moved, AXIS, 1.0 + i / 30, "image", 0.5) for i in range(3)]
    assert [r.accepted for r in results if r is not None] == [False, False, True]
    assert np.allclose(results[-1].tip_lps, moved)  # type: ignore[union-attr]


def test_confidence_decays_with_time_and_track_is_lost() -> None:
    rng = np.random.default_rng(6)
    f = NeedleFilter(confidence_decay_s=0.5, lost_after_s=2.0)
    ests = _run(f, rng, 60)
    t0 = ests[-1].t_s
    conf = [f.predict(t0 + dt).confidence for dt in (0.0, 0.1, 0.5, 1.0, 1.9)]  # type: ignore[union-attr]
    assert all(a > b for a, b in itertools.pairwise(conf))
    assert conf[2] == pytest.approx(conf[0] * np.exp(-1.0), rel=1e-6)
    assert f.predict(t0 + 2.1) is None
    # Prediction extrapolates along the velocity.
    p = f.predict(t0 + 1.0)
    assert p is not None and not p.accepted
    np.testing.assert_allclose(p.tip_lps, START + VELOCITY * (t0 + 1.0), atol=1.5)
    # The next measurement after the loss starts a new track.
    new = f.update(START, AXIS, t0 + 3.0, "tracker", 0.3)
    assert new is not None and new.accepted and new.confidence == pytest.approx(1 / 3)


def test_confidence_drops_when_innovations_exceed_declared_noise() -> None:
    rng = np.random.default_rng(8)
    honest = _run(NeedleFilter(), rng, 90, sigma=0.5)
    f = NeedleFilter()
    overconfident = []
    for i in range(90):  # actual noise 1.5 mm, declared 0.5 mm
        t = i / 30
        est = f.update(START + VELOCITY * t + rng.normal(0, 1.5, 3), AXIS, t, "image", 0.5)
        assert est is not None
        overconfident.append(est)
    assert np.mean([e.confidence for e in overconfident[30:]]) < 0.8
    assert np.mean([e.confidence for e in honest[30:]]) > 0.95


def test_fusing_tracker_and_image_sources() -> None:
    rng = np.random.default_rng(9)
    f = NeedleFilter(accel_sigma_mm_s2=5.0)
    errs = []
    for i in range(240):
        t = i / 60
        truth = START + VELOCITY * t
        if i % 2:
            est = f.update(truth + rng.normal(0, 0.2, 3), AXIS, t, "tracker", 0.2)
        else:
            est = f.update(truth + rng.normal(0, 2.0, 3), AXIS, t, "image", 2.0)
        assert est is not None and est.accepted
        errs.append(np.linalg.norm(est.tip_lps - truth))
    fused_rms = np.sqrt(np.mean(np.square(errs[120:])))
    assert fused_rms < 0.3
    assert est.source == "tracker"  # i = 239 is odd
    # The same image measurements alone give a worse estimate: the tracker's weight shows.
    rng = np.random.default_rng(9)
    g = NeedleFilter(accel_sigma_mm_s2=5.0)
    image_errs = []
    for i in range(0, 240, 2):
        t = i / 60
        truth = START + VELOCITY * t
        est = g.update(truth + rng.normal(0, 2.0, 3), AXIS, t, "image", 2.0)
        assert est is not None
        image_errs.append(np.linalg.norm(est.tip_lps - truth))
    assert np.sqrt(np.mean(np.square(image_errs[60:]))) > 2 * fused_rms


def test_out_of_order_measurement_is_ignored() -> None:
    f = NeedleFilter()
    assert f.update(START, AXIS, 1.0, "image", 0.5) is not None
    assert f.update(START, AXIS, 0.5, "image", 0.5) is None
    assert f.out_of_order == 1


def test_axis_sign_from_a_line_fit_is_aligned() -> None:
    f = NeedleFilter()
    f.update(START, AXIS, 0.0, "tracker", 0.3)
    est = f.update(START, -AXIS, 0.05, "image", 0.5)
    assert est is not None and est.accepted
    assert est.axis_lps @ AXIS > 0.99


def test_measurement_from_pose() -> None:
    m = np.eye(4)
    m[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    m[:3, 3] = [10, 20, 30]
    tip, axis = measurement_from_pose(m, [0, 0, -150], [0, 0, -2])
    np.testing.assert_allclose(tip, [10, 20, -120])
    np.testing.assert_allclose(axis, [0, 0, -1])


@pytest.mark.parametrize(
    ("args", "exc", "message"),
    [
        (([0, 0], AXIS, 0.0, "image", 0.5), ValueError, r"tip_lps must have shape \(3,\)"),
        ((START, [0, 0, 0], 0.0, "image", 0.5), ValueError, "axis_lps must be non-zero"),
        ((START, AXIS, 0.0, "image", -1.0), ValueError, "sigma_mm must be finite and > 0"),
        ((START, AXIS, float("nan"), "image", 0.5), ValueError, "t_s must be a finite number"),
        ((START, AXIS, 0.0, 3, 0.5), TypeError, "source must be a str"),
        (("tip", AXIS, 0.0, "image", 0.5), TypeError, "tip_lps must be 3 numbers"),
    ],
)
def test_bad_updates(args: tuple[object, ...], exc: type, message: str) -> None:
    with pytest.raises(exc, match=message):
        NeedleFilter().update(*args)  # type: ignore[arg-type]
