"""The tracked-pose record (one record type, not parallel lists: STYLE.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["TrackedPose", "pose_from_tip_axis"]


def pose_from_tip_axis(tip: npt.ArrayLike, axis: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The needle frame as a 4x4 ``needle_to_world``: origin at the tip, +z along the
    axis (hub -> tip); x and y complete a right-handed frame (rotation about the shaft is
    arbitrary: a needle is symmetric).

    Args:
        tip: (3,) tip position in the world frame, mm.
        axis: (3,) direction hub -> tip (normalised here).
    """
    z = np.asarray(axis, np.float64).reshape(3)
    z = z / np.linalg.norm(z)
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, np.cross(z, x), z, np.asarray(tip, float)
    return m


@dataclass(frozen=True, eq=False)
class TrackedPose:
    """One pose of one tracked tool.

    Attributes:
        name: transform name in ``FromToTo`` form as on the wire (``NeedleToTracker``).
        pose: (4, 4) float64, maps points in the "from" frame to the "to" frame, mm.
        timestamp_s: the sender's timestamp, seconds (its own clock, not comparable with
            ours).
        received_ns: local ``time.monotonic_ns()`` when the message was fully received.
        valid: the sender's validity flag (False when the tracker reports the tool out
            of view). Staleness is judged separately, from age.
    """

    name: str
    pose: npt.NDArray[np.float64]
    timestamp_s: float
    received_ns: int
    valid: bool = True
