"""Paired-point registration, FRE and the Fitzpatrick TRE prediction."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from calibration import CalibrationError, expected_fre, expected_tre, register_points
from calibration.accuracy import registration_accuracy


def _random_rigid(rng: np.random.Generator) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.random(random_state=rng).as_matrix()
    m[:3, 3] = rng.uniform(-100, 100, 3)
    return m


def test_exact_registration_round_trip(rng: np.random.Generator) -> None:
    moving = rng.uniform(-50, 50, (6, 3))
    truth = _random_rigid(rng)
    fixed = moving @ truth[:3, :3].T + truth[:3, 3]
    res = register_points(fixed, moving, targets_mm=[[0, 0, 0]], fle_mm=0.5)
    np.testing.assert_allclose(res.moving_to_fixed, truth, atol=1e-9)
    assert res.fre_mm < 1e-9
    assert res.expected_tre_mm.shape == (1,)
    assert not res.fle_estimated


def test_coplanar_fiducials_never_give_a_reflection(rng: np.random.Generator) -> None:
    moving = np.column_stack([rng.uniform(-50, 50, (5, 2)), np.zeros(5)])
    truth = _random_rigid(rng)
    fixed = moving @ truth[:3, :3].T + truth[:3, 3] + rng.normal(0, 0.3, (5, 3))
    res = register_points(fixed, moving)
    assert np.linalg.det(res.moving_to_fixed[:3, :3]) == pytest.approx(1.0)
    np.testing.assert_allclose(res.moving_to_fixed[:3, :3], truth[:3, :3], atol=0.02)


def test_mirrored_points_still_give_a_rotation(rng: np.random.Generator) -> None:
    moving = rng.uniform(-50, 50, (8, 3))
    fixed = moving * np.array([-1.0, 1.0, 1.0])  # a reflection fits these exactly
    res = register_points(fixed, moving)
    assert np.linalg.det(res.moving_to_fixed[:3, :3]) == pytest.approx(1.0)
    assert res.fre_mm > 1.0


def test_tre_formula_reference_values() -> None:
    # Fiducials on the axes: principal axes are x, y, z; f_k^2 known in closed form.
    fid = np.array([[10, 0, 0], [-10, 0, 0], [0, 10, 0], [0, -10, 0], [0, 0, 10], [0, 0, -10.0]])
    # At the centroid d_k = 0: TRE^2 = FLE^2 / N.
    assert expected_tre(fid, [[0, 0, 0]], 1.0)[0] == pytest.approx(np.sqrt(1 / 6))
    # At (20, 0, 0): d_x = 0, d_y = d_z = 20; f_k^2 = mean(|p|^2 - p_k^2) = 100 * 4/6.
    f2 = 100 * 4 / 6
    want = np.sqrt(1 / 6 * (1 + (400 / f2 + 400 / f2) / 3))
    assert expected_tre(fid, [[20, 0, 0]], 1.0)[0] == pytest.approx(want)
    assert expected_fre(1.0, 6) == pytest.approx(np.sqrt(4 / 6))


def test_monte_carlo_tre_within_5_percent_of_fitzpatrick(rng: np.random.Generator) -> None:
    fig = registration_accuracy(rng, n_trials=2000, fle_rms_mm=1.0, tolerance=0.05)
    assert fig.passed, fig
    details = dict(fig.details)
    assert details["fre_rms_mm"] == pytest.approx(details["fre_predicted_mm"], rel=0.05)


def test_fle_estimated_from_fre(rng: np.random.Generator) -> None:
    moving = rng.uniform(-50, 50, (10, 3))
    fixed = moving + rng.normal(0, 1.0 / np.sqrt(3), moving.shape)
    res = register_points(fixed, moving, targets_mm=[[0, 0, 0], [100, 0, 0]])
    assert res.fle_estimated
    assert res.fle_mm == pytest.approx(res.fre_mm / np.sqrt(1 - 2 / 10))
    assert res.expected_tre_mm[1] > res.expected_tre_mm[0]


def test_collinear_fiducials_are_refused() -> None:
    line = np.outer(np.arange(5.0), [1.0, 2.0, 3.0])
    with pytest.raises(CalibrationError, match=r"collinear \(RMS spread off their line"):
        register_points(line, line)


def test_too_few_fiducials_are_refused() -> None:
    pts = np.array([[0, 0, 0], [10, 0, 0.0]])
    with pytest.raises(CalibrationError, match="at least 3 fiducials, got 2"):
        register_points(pts, pts)


def test_mismatched_counts_and_shapes() -> None:
    with pytest.raises(ValueError, match="same number of points, got 4 and 3"):
        register_points(np.zeros((4, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"fixed_mm must have shape \(N, 3\), got \(4, 2\)"):
        register_points(np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"fle_mm must be finite and >= 0, got -1\.0"):
        register_points(np.eye(3) * 10, np.eye(3) * 10, fle_mm=-1.0)
