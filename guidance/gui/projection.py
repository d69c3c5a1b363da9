"""Where LPS points fall in a 2D frame (no Qt): orthogonal projection onto a slice
(ultrasound, CT), central projection from the X-ray source onto the detector
(fluoroscopy).

A frame's ``ijk_to_lps`` places pixel (i = column, j = row, k = 0) in LPS mm: for a
slice, in the imaged plane; for a projection, on the detector plane.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from guidance.geometry import ImageVolume

__all__ = ["SOURCE_POSE_NAME", "FrameProjection", "source_lps_of"]

F64 = npt.NDArray[np.float64]

#: The tracked pose whose origin is the X-ray focal spot (``guidance.sim`` streams it;
#: 20 characters, the most an OpenIGTLink device name holds).
SOURCE_POSE_NAME = "FocalSpotToReference"


def source_lps_of(poses: Mapping[str, Any]) -> F64 | None:
    """(3,) X-ray focal spot, LPS mm, from the tool poses (``TrackedPose`` by name), or
    ``None`` when there is no valid source pose (the frame is then a slice)."""
    pose = poses.get(SOURCE_POSE_NAME)
    if pose is None or not getattr(pose, "valid", False):
        return None
    out: F64 = np.asarray(pose.pose, np.float64)[:3, 3].copy()
    return out


class FrameProjection:
    """Projects LPS mm points to fractional pixel coordinates (i = column, j = row).

    Args:
        image: the frame (its ``ijk_to_lps`` places the pixel grid in LPS mm).
        source_lps: (3,) X-ray focal spot, LPS mm, for a projection frame; ``None`` for a
            slice (orthogonal projection onto the plane).

    Raises:
        ValueError: a degenerate pixel grid, or a non-finite source.
    """

    def __init__(self, image: ImageVolume, source_lps: npt.ArrayLike | None = None) -> None:
        m = image.ijk_to_lps
        self.origin_lps: F64 = m[:3, 3].copy()
        self._uv = m[:3, :2].copy()  # columns: LPS mm per pixel along i and along j
        normal = np.cross(self._uv[:, 0], self._uv[:, 1])
        n = float(np.linalg.norm(normal))
        if n < 1e-12:
            raise ValueError("frame pixel axes are parallel: cannot project into it")
        self.normal_lps: F64 = normal / n
        self._pinv = np.linalg.pinv(self._uv)  # (2, 3): LPS offset in plane -> (i, j)
        self.source_lps: F64 | None = None
        if source_lps is not None:
            s = np.asarray(source_lps, np.float64).reshape(3)
            if not np.all(np.isfinite(s)):
                raise ValueError(f"source_lps must be finite, got {s}")
            self.source_lps = s

    @property
    def is_projection(self) -> bool:
        """True for a central projection (fluoroscopy)."""
        return self.source_lps is not None

    def project(self, points_lps: npt.ArrayLike) -> tuple[F64, F64]:
        """Project (N, 3) LPS mm points.

        Returns:
            ``(ij, off_plane_mm)``: (N, 2) fractional pixel coordinates (column, row) and
            (N,) signed distance of each point from the slice plane, mm (0 for a
            projection, where every point along a ray lands on the same pixel). Points
            that cannot be projected (on or behind the source plane) are NaN.
        """
        p = np.atleast_2d(np.asarray(points_lps, np.float64))
        if p.shape[1] != 3:
            raise ValueError(f"points_lps must be (N, 3), got shape {p.shape}")
        if self.source_lps is None:
            rel = p - self.origin_lps
            off = rel @ self.normal_lps
            in_plane = rel - np.outer(off, self.normal_lps)
            return in_plane @ self._pinv.T, off
        s = self.source_lps
        d = p - s
        denom = d @ self.normal_lps
        t = ((self.origin_lps - s) @ self.normal_lps) / np.where(np.abs(denom) < 1e-9, np.nan,
                                                                 denom)
        t = np.where(t > 0, t, np.nan)  # behind the source: not on the detector
        hit = s + d * t[:, None]
        ij = (hit - self.origin_lps) @ self._pinv.T
        return ij, np.zeros(len(p))
