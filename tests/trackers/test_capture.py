"""Pose capture for pivot/spin calibration from an iterator of TrackedPose."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from trackers.capture import capture_poses
from trackers.pose import TrackedPose


def _stream(n: int, period_ns: int = 10_000_000) -> Iterator[TrackedPose]:
    for i in range(n):
        m = np.eye(4)
        m[:3, 3] = [i, 0.0, 1.0]
        yield TrackedPose("StylusToTracker", m, i * 0.01, 1_000 + i * period_ns)
        yield TrackedPose("ProbeToTracker", m, i * 0.01, 1_000 + i * period_ns)


def test_duration_limits_the_capture() -> None:
    res = capture_poses(_stream(500), "StylusToTracker", duration_s=1.0)
    assert len(res.poses) == 100  # 0 .. 0.99 s at 100 Hz
    assert res.duration_s == pytest.approx(0.99)
    assert all(p.name == "StylusToTracker" for p in res.poses)
    assert res.matrices.shape == (100, 4, 4)


def test_invalid_identity_and_duplicates_dropped() -> None:
    def poses() -> Iterator[TrackedPose]:
        m = np.eye(4)
        m[:3, 3] = [1, 2, 3]
        yield TrackedPose("StylusToTracker", m, 0.0, 0)
        yield TrackedPose("StylusToTracker", m.copy(), 0.0, 1)  # re-sent sample
        yield TrackedPose("StylusToTracker", np.eye(4), 0.0, 2)  # out of view
        yield TrackedPose("StylusToTracker", m + 0, 0.0, 3, valid=False)
        m2 = m.copy()
        m2[0, 3] = 5
        yield TrackedPose("StylusToTracker", m2, 0.0, 4)

    res = capture_poses(poses(), "StylusToTracker", duration_s=10.0)
    assert len(res.poses) == 2
    assert (res.n_seen, res.n_invalid, res.n_duplicate) == (5, 2, 1)


def test_max_poses_and_end_of_iterator() -> None:
    assert (
        len(capture_poses(_stream(500), "StylusToTracker", duration_s=100, max_poses=7).poses) == 7
    )
    assert len(capture_poses(_stream(3), "StylusToTracker", duration_s=100).poses) == 3
    assert capture_poses(_stream(3), "NeedleToTracker", duration_s=1).poses == ()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="duration_s must be > 0, got 0"):
        capture_poses(_stream(1), "StylusToTracker", duration_s=0)
    with pytest.raises(TypeError, match="poses must yield TrackedPose, got tuple"):
        capture_poses(iter([("StylusToTracker", np.eye(4))]), "StylusToTracker", duration_s=1)
