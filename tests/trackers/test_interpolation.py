"""Pose interpolation: quaternion round trips, SLERP against scipy, ends and midpoints."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from trackers.interpolation import interpolate_rigid, matrix_from_quat, quat_from_matrix


def _pose(rot: Rotation, t: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rot.as_matrix()
    m[:3, 3] = t
    return m


@pytest.mark.parametrize("angle_deg", [0.0, 1e-6, 30.0, 179.0, 180.0])
def test_quaternion_round_trip_every_angle(angle_deg: float) -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        axis = rng.normal(size=3)
        r = Rotation.from_rotvec(np.radians(angle_deg) * axis / np.linalg.norm(axis))
        q = quat_from_matrix(r.as_matrix())
        assert np.linalg.norm(q) == pytest.approx(1.0)
        np.testing.assert_allclose(matrix_from_quat(q), r.as_matrix(), atol=1e-12)


def test_slerp_matches_scipy_and_translation_is_linear() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        r0, r1 = Rotation.random(2, random_state=rng)
        t0, t1 = rng.uniform(-200, 200, (2, 3))
        a, b = _pose(r0, t0), _pose(r1, t1)
        w = float(rng.uniform())
        got = interpolate_rigid(a, b, w)
        want = Slerp([0.0, 1.0], Rotation.concatenate([r0, r1]))([w]).as_matrix()[0]
        np.testing.assert_allclose(got[:3, :3], want, atol=1e-9)
        np.testing.assert_allclose(got[:3, 3], (1 - w) * t0 + w * t1, atol=1e-9)
        np.testing.assert_allclose(got[3], [0, 0, 0, 1])


def test_ends_are_the_samples_and_the_short_arc_is_taken() -> None:
    a = _pose(Rotation.from_euler("z", 170, degrees=True), np.zeros(3))
    b = _pose(Rotation.from_euler("z", -170, degrees=True), np.array([10.0, 0, 0]))
    np.testing.assert_allclose(interpolate_rigid(a, b, 0.0), a, atol=1e-12)
    np.testing.assert_allclose(interpolate_rigid(a, b, 1.0), b, atol=1e-12)
    mid = Rotation.from_matrix(interpolate_rigid(a, b, 0.5)[:3, :3])
    # Through 180 deg (20 deg of arc), not through 0 deg (340 deg).
    assert abs(abs(mid.as_euler("xyz", degrees=True)[2]) - 180.0) < 1e-6
