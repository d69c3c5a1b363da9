"""Spin calibration: shaft axis from rotations about the shaft."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from calibration import CalibrationError, spin_calibration


def _spin_poses(
    rng: np.random.Generator,
    axis_tool: np.ndarray,
    point_tool: np.ndarray,
    n: int,
    spin_deg: float = 180.0,
    noise_deg: float = 0.0,
) -> np.ndarray:
    """Poses spinning about a fixed tracker-space line through the tool's shaft."""
    base = Rotation.random(random_state=rng)
    angles = np.radians(rng.uniform(-spin_deg / 2, spin_deg / 2, n))
    spins = Rotation.from_rotvec(np.outer(angles, axis_tool))
    wobble = Rotation.from_rotvec(rng.normal(0.0, np.radians(noise_deg), (n, 3)))
    rot = (base * wobble * spins).as_matrix()
    line_point = np.array([10.0, 20.0, -900.0])
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, :3, :3] = rot
    poses[:, :3, 3] = line_point - rot @ point_tool
    return poses


def test_recovers_axis_and_line(rng: np.random.Generator) -> None:
    axis = np.array([0.1, -0.2, 1.0])
    axis /= np.linalg.norm(axis)
    point = np.array([5.0, 7.0, 0.0]) - (np.array([5.0, 7.0, 0.0]) @ axis) * axis
    res = spin_calibration(_spin_poses(rng, axis, point, 20), tip_offset_mm=axis * 150)
    np.testing.assert_allclose(res.axis_tool, axis, atol=1e-9)
    np.testing.assert_allclose(res.axis_point_tool_mm, point, atol=1e-6)
    assert res.wobble_rms_deg < 1e-6
    assert res.line_rms_mm < 1e-6
    # Orientation: from hub to the tip.
    res_flipped = spin_calibration(_spin_poses(rng, axis, point, 20), tip_offset_mm=-axis)
    np.testing.assert_allclose(res_flipped.axis_tool, -axis, atol=1e-9)


def test_noisy_spin_axis_within_a_degree(rng: np.random.Generator) -> None:
    axis = np.array([0.0, 0.0, 1.0])
    res = spin_calibration(_spin_poses(rng, axis, np.zeros(3), 60, noise_deg=0.3))
    angle = np.degrees(np.arccos(abs(res.axis_tool @ axis)))
    assert angle < 1.0
    assert 0.1 < res.wobble_rms_deg < 1.0


def test_too_little_spin_is_refused(rng: np.random.Generator) -> None:
    poses = _spin_poses(rng, np.array([0.0, 0.0, 1.0]), np.zeros(3), 20, spin_deg=10.0)
    with pytest.raises(CalibrationError, match=r"too little spin: angular range \d+\.\d\d deg"):
        spin_calibration(poses)


def test_tumbling_is_not_a_spin(rng: np.random.Generator) -> None:
    rot = Rotation.random(30, random_state=rng).as_matrix()
    poses = np.tile(np.eye(4), (30, 1, 1))
    poses[:, :3, :3] = rot
    with pytest.raises(CalibrationError, match=r"not a spin about one axis: wobble \d+\.\d\d deg"):
        spin_calibration(poses)
