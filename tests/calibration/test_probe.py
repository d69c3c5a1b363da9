"""Ultrasound probe calibration from stylus-tip observations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from calibration import CalibrationError, probe_calibration


def _observations(
    rng: np.random.Generator, n: int, noise_mm: float = 0.0, collinear: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    image_to_probe = np.eye(4)
    image_to_probe[:3, :3] = Rotation.from_euler("xyz", [90, 5, -3], degrees=True).as_matrix()
    image_to_probe[:3, 3] = [-20.0, 5.0, 12.0]
    spacing = np.array([0.2, 0.25])
    if collinear:
        uv = np.column_stack([rng.uniform(20, 600, n), np.full(n, 240.0)])
    else:
        uv = rng.uniform([20, 20], [620, 460], (n, 2))
    image_mm = np.column_stack([uv * spacing, np.zeros(n)])
    probe_mm = image_mm @ image_to_probe[:3, :3].T + image_to_probe[:3, 3]
    probe_to_tracker = np.tile(np.eye(4), (n, 1, 1))
    probe_to_tracker[:, :3, :3] = Rotation.random(n, random_state=rng).as_matrix()
    probe_to_tracker[:, :3, 3] = rng.uniform(-200, 200, (n, 3))
    tips = np.einsum("nij,nj->ni", probe_to_tracker[:, :3, :3], probe_mm)
    tips += probe_to_tracker[:, :3, 3] + rng.normal(0, noise_mm, (n, 3))
    return probe_to_tracker, tips, uv, spacing, image_to_probe


def test_exact_observations(rng: np.random.Generator) -> None:
    probe, tips, uv, spacing, truth = _observations(rng, 12)
    res = probe_calibration(probe, tips, uv, spacing)
    np.testing.assert_allclose(res.image_to_probe, truth, atol=1e-9)
    assert res.rms_mm < 1e-9
    # pixel_to_probe includes the spacing: pixel (10, 20) -> image mm (2, 5).
    p = res.pixel_to_probe @ [10.0, 20.0, 0.0, 1.0]
    np.testing.assert_allclose(p[:3], truth[:3, :3] @ [2.0, 5.0, 0.0] + truth[:3, 3])


def test_noisy_observations_rms_and_out_of_plane(rng: np.random.Generator) -> None:
    probe, tips, uv, spacing, truth = _observations(rng, 200, noise_mm=0.5)
    res = probe_calibration(probe, tips, uv, spacing)
    # 3D noise of 0.5 mm per axis: RMS ~ 0.5 sqrt(3), out-of-plane ~ 0.5.
    assert res.rms_mm == pytest.approx(0.5 * np.sqrt(3), rel=0.1)
    assert res.out_of_plane_rms_mm == pytest.approx(0.5, rel=0.15)
    assert np.abs(res.image_to_probe[:3, 3] - truth[:3, 3]).max() < 0.5


def test_collinear_image_points_refused(rng: np.random.Generator) -> None:
    probe, tips, uv, spacing, _ = _observations(rng, 10, collinear=True)
    with pytest.raises(CalibrationError, match=r"probe calibration: .*collinear"):
        probe_calibration(probe, tips, uv, spacing)


def test_bad_spacing_and_counts(rng: np.random.Generator) -> None:
    probe, tips, uv, _, _ = _observations(rng, 8)
    with pytest.raises(ValueError, match="pixel_spacing_mm must be two positive numbers"):
        probe_calibration(probe, tips, uv, [0.2, 0.0])
    with pytest.raises(ValueError, match="same length, got 8, 7, 8"):
        probe_calibration(probe, tips[:7], uv, [0.2, 0.2])
    with pytest.raises(CalibrationError, match="at least 6 points, got 4"):
        probe_calibration(probe[:4], tips[:4], uv[:4], [0.2, 0.2])
