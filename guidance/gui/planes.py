"""Planes through a CT for the planning and verification views (no Qt): the three
orthogonal planes through a point and a reformat along a trajectory, resampled
(trilinear) on a square pixel grid, with structure outlines from the distance fields.

Display conventions: :mod:`guidance.figures` (radiological: axial and coronal views show
the patient's left on the image's right, superior up, axial rows anterior -> posterior),
with orientation letters, a scale bar and a legend of the outlined structures burnt in.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from guidance.figures import VIEWS, PlaneSpec, render_plane, structure_rgb, view_plane

__all__ = ["PlaneSpec", "orthogonal_planes", "render_plane", "structure_rgb", "trajectory_plane"]

F64 = npt.NDArray[np.float64]

def orthogonal_planes(point_lps: npt.ArrayLike, fov_mm: float = 160.0,
                      size_px: int = 256) -> list[PlaneSpec]:
    """Axial, coronal and sagittal planes through ``point_lps`` (LPS mm)."""
    return [view_plane(v, point_lps, fov_mm, size_px) for v in VIEWS]


def trajectory_plane(entry_lps: npt.ArrayLike, target_lps: npt.ArrayLike,
                     fov_mm: float = 160.0, size_px: int = 256,
                     name: str = "trajectory") -> PlaneSpec:
    """The reformat containing the trajectory (entry at the top, target below it), its
    second axis as close to patient left-right as the trajectory allows."""
    e = np.asarray(entry_lps, np.float64).reshape(3)
    t = np.asarray(target_lps, np.float64).reshape(3)
    d = t - e
    n = float(np.linalg.norm(d))
    if n < 1e-6:
        raise ValueError("entry and target coincide: no trajectory plane")
    v = d / n  # rows: entry -> target, downwards
    u = np.array([1.0, 0.0, 0.0]) - v * v[0]
    if np.linalg.norm(u) < 1e-3:
        u = np.array([0.0, 1.0, 0.0]) - v * v[1]
    u /= np.linalg.norm(u)
    return PlaneSpec(name, (e + t) / 2.0, u, v, size_px, fov_mm / size_px)
