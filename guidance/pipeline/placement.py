"""Where a frame's pixels lie in the planning CT (no Qt): a slice (ultrasound, a CT slab)
is placed by ``ijk_to_ct``; a projection (fluoroscopy) by ``ct_to_pixel``, the C-arm's
calibrated projection composed with the transform graph.

Both come from the transform graph at the frame's time (``guidance.navigation``); the
overlay, the live view and the needle stage project planning-CT points into the frame
through :meth:`FramePlacement.project`, never through the raw IMAGE matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["FramePlacement"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class FramePlacement:
    """A frame's place in the planning CT.

    Attributes:
        kind: ``slice`` or ``projection``.
        ijk_to_ct: slice: (4, 4) pixel (i = column, j = row, k = 0) to planning-CT LPS mm.
        ct_to_pixel: projection: (3, 4) ``(u, v, 1) ~ P [x; 1]`` for LPS mm points of the
            planning CT (u = column, v = row).
        path: the frames composed (``("Image", "Probe", "Reference", "CT")``).
    """

    kind: str
    ijk_to_ct: F64 | None = None
    ct_to_pixel: F64 | None = None
    path: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "slice":
            m = np.asarray(self.ijk_to_ct, dtype=np.float64)
            if m.shape != (4, 4) or not np.all(np.isfinite(m)):
                raise ValueError("a slice placement needs a finite (4, 4) ijk_to_ct")
            uv = m[:3, :2]
            if np.linalg.norm(np.cross(uv[:, 0], uv[:, 1])) < 1e-12:
                raise ValueError("frame pixel axes are parallel: cannot place it")
            object.__setattr__(self, "ijk_to_ct", m)
        elif self.kind == "projection":
            p = np.asarray(self.ct_to_pixel, dtype=np.float64)
            if p.shape != (3, 4) or not np.all(np.isfinite(p)):
                raise ValueError("a projection placement needs a finite (3, 4) ct_to_pixel")
            object.__setattr__(self, "ct_to_pixel", p)
        else:
            raise ValueError(f"kind must be slice or projection, got {self.kind!r}")

    @property
    def is_projection(self) -> bool:
        return self.kind == "projection"

    def project(self, points_ct: npt.ArrayLike) -> tuple[F64, F64]:
        """Project (N, 3) planning-CT LPS mm points into the frame.

        Returns:
            ``(ij, off_plane_mm)``: (N, 2) fractional pixel coordinates (column, row) and
            (N,) signed distance of each point from the slice's plane, mm (0 for a
            projection, where every point along a ray lands on the same pixel). Points
            that cannot be projected (behind the X-ray source) are NaN.
        """
        p = np.atleast_2d(np.asarray(points_ct, dtype=np.float64))
        if p.ndim != 2 or p.shape[1] != 3:
            raise ValueError(f"points_ct must be (N, 3), got shape {p.shape}")
        if self.kind == "slice":
            m = self.ijk_to_ct
            assert m is not None
            uv = m[:3, :2]
            normal = np.cross(uv[:, 0], uv[:, 1])
            normal /= np.linalg.norm(normal)
            rel = p - m[:3, 3]
            off = rel @ normal
            in_plane = rel - np.outer(off, normal)
            ij: F64 = in_plane @ np.linalg.pinv(uv).T
            return ij, off
        proj = self.ct_to_pixel
        assert proj is not None
        h = p @ proj[:, :3].T + proj[:, 3]
        w = h[:, 2]
        # The sign of P is such that points in front of the source have w > 0 (the
        # calibration scales row 3 to unit norm with positive depth).
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where((w > 1e-9)[:, None], h[:, :2] / w[:, None], np.nan)
        return out, np.zeros(len(p))

    def pixel_to_ct(self, ij: npt.ArrayLike) -> F64:
        """Slice only: (N, 2) pixel coordinates to (N, 3) planning-CT LPS mm."""
        if self.kind != "slice":
            raise ValueError("only a slice maps pixels to points")
        q = np.atleast_2d(np.asarray(ij, dtype=np.float64))
        m = self.ijk_to_ct
        assert m is not None
        out: F64 = q[:, 0:1] * m[:3, 0] + q[:, 1:2] * m[:3, 1] + m[:3, 3]
        return out
