"""Pivot calibration: ground truth, noise, RANSAC and refusals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from calibration import CalibrationError, pivot_calibration
from calibration.accuracy import pivot_accuracy, simulate_pivot_poses

TIP = np.array([3.0, -2.0, -160.0])
PIVOT = np.array([120.0, -40.0, -1400.0])


def test_exact_poses_give_exact_tip(rng: np.random.Generator) -> None:
    poses = simulate_pivot_poses(rng, 30, TIP, PIVOT)
    res = pivot_calibration(poses)
    np.testing.assert_allclose(res.tip_offset_mm, TIP, atol=1e-8)
    np.testing.assert_allclose(res.pivot_point_mm, PIVOT, atol=1e-8)
    assert res.rms_mm < 1e-8
    assert res.angular_range_deg > 40.0
    assert res.inliers.all()
    np.testing.assert_allclose(res.tip_to_tool[:3, 3], TIP, atol=1e-8)


def test_noise_60_poses_tip_error_within_0_3_mm(rng: np.random.Generator) -> None:
    fig = pivot_accuracy(rng, n_trials=200, n_poses=60, noise_rms_mm=0.25, bound_mm=0.3)
    assert fig.passed, fig
    assert fig.measured <= 0.3
    # The residual RMS reflects the injected 0.25 mm noise (3 dof of 3N absorbed by the fit).
    assert dict(fig.details)["residual_rms_mm_mean"] == pytest.approx(0.25, rel=0.1)


def test_std_estimate_is_consistent_with_actual_error(rng: np.random.Generator) -> None:
    errs, stds = [], []
    for _ in range(200):
        res = pivot_calibration(simulate_pivot_poses(rng, 60, TIP, PIVOT, noise_rms_mm=0.5))
        errs.append(res.tip_offset_mm - TIP)
        stds.append(res.tip_offset_std_mm)
    measured = np.std(np.array(errs), axis=0)
    predicted = np.mean(np.array(stds), axis=0)
    np.testing.assert_allclose(measured, predicted, rtol=0.25)


def test_ransac_rejects_outlier_poses(rng: np.random.Generator) -> None:
    poses = simulate_pivot_poses(rng, 60, TIP, PIVOT, noise_rms_mm=0.2)
    bad = rng.choice(60, size=10, replace=False)
    poses[bad, :3, 3] += rng.normal(0.0, 20.0, (10, 3))
    plain = pivot_calibration(poses)
    robust = pivot_calibration(poses, ransac_threshold_mm=1.5, rng=rng)
    assert np.linalg.norm(plain.tip_offset_mm - TIP) > 1.0
    assert np.linalg.norm(robust.tip_offset_mm - TIP) < 0.3
    assert set(np.flatnonzero(~robust.inliers)) == set(bad)


def test_ransac_needs_a_generator(rng: np.random.Generator) -> None:
    poses = simulate_pivot_poses(rng, 20, TIP, PIVOT)
    with pytest.raises(TypeError, match=r"rng must be a numpy\.random\.Generator"):
        pivot_calibration(poses, ransac_threshold_mm=1.0, rng=None)


def test_static_tool_is_refused_with_measured_range(rng: np.random.Generator) -> None:
    poses = np.repeat(simulate_pivot_poses(rng, 1, TIP, PIVOT), 40, axis=0)
    poses[:, :3, 3] += rng.normal(0.0, 0.1, (40, 3))
    with pytest.raises(CalibrationError, match=r"angular range 0\.00 deg < 15\.0 deg"):
        pivot_calibration(poses)


def test_small_rotation_reports_its_range(rng: np.random.Generator) -> None:
    poses = simulate_pivot_poses(rng, 40, TIP, PIVOT, max_tilt_deg=3.0, max_spin_deg=2.0)
    with pytest.raises(CalibrationError, match=r"too little rotation.*angular range \d\.\d\d deg"):
        pivot_calibration(poses)


def test_rotation_about_one_axis_is_rank_deficient() -> None:
    angles = np.radians(np.linspace(-40, 40, 30))
    rot = Rotation.from_rotvec(np.outer(angles, [0.0, 0.0, 1.0])).as_matrix()
    poses = np.tile(np.eye(4), (30, 1, 1))
    poses[:, :3, :3] = rot
    poses[:, :3, 3] = PIVOT - rot @ TIP
    with pytest.raises(CalibrationError, match="rank deficient"):
        pivot_calibration(poses)


def test_too_few_poses(rng: np.random.Generator) -> None:
    with pytest.raises(CalibrationError, match="at least 10 poses, got 5"):
        pivot_calibration(simulate_pivot_poses(rng, 5, TIP, PIVOT))


@pytest.mark.parametrize(
    ("poses", "exc", "message"),
    [
        ("poses", TypeError, "must be an array of numbers, got str"),
        (np.zeros((10, 3, 4)), ValueError, r"shape \(N, 4, 4\), got \(10, 3, 4\)"),
        (np.tile(np.diag([1.0, 1.0, -1.0, 1.0]), (12, 1, 1)), ValueError, "determinant -1"),
        (np.tile(np.diag([2.0, 1.0, 1.0, 1.0]), (12, 1, 1)), ValueError, "not rigid"),
        (np.full((12, 4, 4), np.nan), ValueError, "NaN"),
    ],
)
def test_bad_input_types_and_shapes(poses: object, exc: type, message: str) -> None:
    with pytest.raises(exc, match=message):
        pivot_calibration(poses)  # type: ignore[arg-type]
