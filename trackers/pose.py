"""The tracked-pose record (one record type, not parallel lists: STYLE.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["TrackedPose"]


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
