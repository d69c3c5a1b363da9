"""Capture of tool poses for pivot and spin calibration, from any iterator of poses.

The network source (an OpenIGTLink client) lives in ``guidance``; it is wrapped there
as an iterator of :class:`TrackedPose` so that this logic is tested without a network.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from calibration.rigid import is_identity
from trackers.pose import TrackedPose

__all__ = ["CaptureResult", "capture_poses"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class CaptureResult:
    """Poses kept by :func:`capture_poses`.

    Attributes:
        poses: the accepted poses, in arrival order.
        n_seen: poses of the requested tool seen.
        n_invalid: dropped because flagged invalid or an identity matrix.
        n_duplicate: dropped because identical to the previous accepted pose (a tracker
            re-sending the same sample).
        duration_s: span of local receive times of the accepted poses, seconds.
    """

    poses: tuple[TrackedPose, ...]
    n_seen: int
    n_invalid: int
    n_duplicate: int
    duration_s: float

    @property
    def matrices(self) -> npt.NDArray[np.float64]:
        """(N, 4, 4) float64 stacked poses."""
        return np.array([p.pose for p in self.poses], dtype=np.float64).reshape(-1, 4, 4)


def capture_poses(
    poses: Iterable[TrackedPose],
    name: str,
    *,
    duration_s: float,
    max_poses: int | None = None,
) -> CaptureResult:
    """Collect valid poses of one tool for ``duration_s`` of local receive time.

    Stops at the first pose received ``duration_s`` after the first accepted one, after
    ``max_poses`` accepted poses, or when the iterator ends (the caller's iterator owns
    the wall-clock timeout when nothing arrives).

    Args:
        poses: any iterator of poses (several tools may be mixed).
        name: transform name of the tool to keep (``StylusToTracker``).
        duration_s: capture span, seconds (> 0).
        max_poses: optional cap on accepted poses.

    Returns:
        :class:`CaptureResult`.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)):
        raise TypeError(f"duration_s must be a number, got {type(duration_s).__name__}")
    if not np.isfinite(duration_s) or duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    if max_poses is not None and max_poses < 1:
        raise ValueError(f"max_poses must be >= 1, got {max_poses}")
    kept: list[TrackedPose] = []
    seen = invalid = duplicate = 0
    for pose in poses:
        if not isinstance(pose, TrackedPose):
            raise TypeError(f"poses must yield TrackedPose, got {type(pose).__name__}")
        if pose.name != name:
            continue
        if kept and (pose.received_ns - kept[0].received_ns) * 1e-9 >= duration_s:
            break
        seen += 1
        if not pose.valid or is_identity(pose.pose):
            invalid += 1
            continue
        if kept and np.array_equal(pose.pose, kept[-1].pose):
            duplicate += 1
            continue
        kept.append(pose)
        if max_poses is not None and len(kept) >= max_poses:
            break
    span = (kept[-1].received_ns - kept[0].received_ns) * 1e-9 if kept else 0.0
    _log.info(
        "captured %d poses of %s over %.2f s (%d invalid, %d duplicates dropped)",
        len(kept),
        name,
        span,
        invalid,
        duplicate,
    )
    return CaptureResult(
        poses=tuple(kept), n_seen=seen, n_invalid=invalid, n_duplicate=duplicate, duration_s=span
    )
