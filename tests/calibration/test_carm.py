"""C-arm projection calibration: DLT + refinement + RQ decomposition."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from calibration import CalibrationError, carm_calibration, decompose_projection, project
from calibration.accuracy import carm_accuracy

K = np.array([[3300.0, 1.5, 520.0], [0.0, 3280.0, 500.0], [0.0, 0.0, 1.0]])


def _scene(rng: np.random.Generator, n: int, mirrored: bool = False) -> tuple[np.ndarray, ...]:
    rot = Rotation.from_euler("xyz", [15, -30, 100], degrees=True).as_matrix()
    source = np.array([40.0, -620.0, 25.0])
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = -rot @ source
    k = K.copy()
    if mirrored:
        k[0, 0], k[0, 1] = -k[0, 0], -k[0, 1]
    proj = k @ pose[:3]
    pts = rng.uniform(-50, 50, (n, 3))
    return proj, pts, project(proj, pts), k, pose, source


@pytest.mark.parametrize("mirrored", [False, True])
def test_exact_projection_and_decomposition(rng: np.random.Generator, mirrored: bool) -> None:
    proj, pts, px, k, pose, source = _scene(rng, 12, mirrored)
    res = carm_calibration(pts, px)
    assert res.reprojection_rms_px < 1e-6
    np.testing.assert_allclose(res.intrinsics, k, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res.phantom_to_camera, pose, atol=1e-6)
    np.testing.assert_allclose(res.source_position_mm, source, atol=1e-5)
    np.testing.assert_allclose(res.projection, proj / np.linalg.norm(proj[2, :3]), rtol=1e-6)
    k2, pose2 = decompose_projection(res.projection)
    np.testing.assert_allclose(k2 @ pose2[:3], res.projection, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(pose2[:3, :3]), 1.0)


def test_reprojection_rms_within_10_percent_of_injected_noise(rng: np.random.Generator) -> None:
    fig = carm_accuracy(rng, n_trials=10, n_points=100, noise_px=0.5, tolerance=0.10)
    assert fig.passed, fig
    # The dof-corrected prediction sigma sqrt(2) sqrt(1 - 11/2N) is matched more tightly.
    assert dict(fig.details)["ratio_to_dof_corrected"] == pytest.approx(1.0, abs=0.05)


def test_refinement_does_not_worsen_dlt(rng: np.random.Generator) -> None:
    _, pts, px, *_ = _scene(rng, 30)
    res = carm_calibration(pts, px + rng.normal(0, 1.0, px.shape))
    # The geometric (non-linear) fit strictly improves on the algebraic DLT solution.
    assert res.reprojection_rms_px < res.dlt_reprojection_rms_px - 1e-6


def test_coplanar_points_refused(rng: np.random.Generator) -> None:
    proj, pts, *_ = _scene(rng, 20)
    pts[:, 2] = 0.0
    with pytest.raises(CalibrationError, match=r"coplanar \(RMS distance from their best plane 0"):
        carm_calibration(pts, project(proj, pts))


def test_too_few_points_refused(rng: np.random.Generator) -> None:
    _, pts, px, *_ = _scene(rng, 5)
    with pytest.raises(CalibrationError, match="at least 6 points, got 5"):
        carm_calibration(pts, px)


def test_mismatched_counts(rng: np.random.Generator) -> None:
    _, pts, px, *_ = _scene(rng, 10)
    with pytest.raises(ValueError, match="same length, got 10 and 9"):
        carm_calibration(pts, px[:9])
