"""Planes through a CT for the planning and verification views (no Qt): the three
orthogonal planes through a point and a reformat along a trajectory, resampled
(trilinear) on a square pixel grid, with structure outlines from the distance fields.

Display conventions (radiological): axial and coronal views show the patient's left on
the image's right (+L to the right); superior is up; axial rows run anterior -> posterior.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from guidance.geometry import ImageVolume
from guidance.planning.structures import StructureSet

__all__ = ["PlaneSpec", "orthogonal_planes", "render_plane", "trajectory_plane"]

F64 = npt.NDArray[np.float64]

_STRUCT_RGB = {"spinal_cord": (255, 60, 60), "nerve": (255, 220, 0), "aorta": (255, 80, 200),
               "vena": (80, 120, 255), "iliac": (255, 80, 200), "kidney": (180, 120, 60),
               "lung": (120, 200, 255), "vertebra": (90, 200, 255), "rib": (90, 200, 255),
               "colon": (160, 255, 120), "bowel": (160, 255, 120)}


def structure_rgb(name: str) -> tuple[int, int, int]:
    """Outline colour of a planning structure (by name)."""
    for key, rgb in _STRUCT_RGB.items():
        if key in name:
            return rgb
    return (200, 200, 200)


@dataclass(frozen=True, eq=False)
class PlaneSpec:
    """A square plane of pixels in LPS mm.

    Attributes:
        name: ``axial``, ``coronal``, ``sagittal`` or ``trajectory``.
        centre_lps: (3,) LPS mm at the centre of the image.
        u_lps: (3,) unit vector along the columns (to the right); v_lps: along the rows
            (downwards).
        size_px: pixels per side; pixel_mm: pixel size, mm.
    """

    name: str
    centre_lps: F64
    u_lps: F64
    v_lps: F64
    size_px: int
    pixel_mm: float

    def points_lps(self) -> F64:
        """(size_px * size_px, 3) LPS mm of the pixel centres, row-major."""
        n = self.size_px
        c = (np.arange(n) - (n - 1) / 2.0) * self.pixel_mm
        vv, uu = np.meshgrid(c, c, indexing="ij")
        pts: F64 = (self.centre_lps + uu.reshape(-1, 1) * self.u_lps
                    + vv.reshape(-1, 1) * self.v_lps)
        return pts

    def to_px(self, points_lps: npt.ArrayLike) -> tuple[F64, F64]:
        """(N, 3) LPS mm -> ((N, 2) pixel (column, row), (N,) distance from the plane, mm)."""
        rel = np.atleast_2d(np.asarray(points_lps, np.float64)) - self.centre_lps
        n = (self.size_px - 1) / 2.0
        col = rel @ self.u_lps / self.pixel_mm + n
        row = rel @ self.v_lps / self.pixel_mm + n
        normal = np.cross(self.u_lps, self.v_lps)
        return np.stack([col, row], axis=1), rel @ normal

    def to_lps(self, col: float, row: float) -> F64:
        """Pixel (column, row) -> (3,) LPS mm."""
        n = (self.size_px - 1) / 2.0
        out: F64 = (self.centre_lps + (col - n) * self.pixel_mm * self.u_lps
                    + (row - n) * self.pixel_mm * self.v_lps)
        return out


def orthogonal_planes(point_lps: npt.ArrayLike, fov_mm: float = 160.0,
                      size_px: int = 256) -> list[PlaneSpec]:
    """Axial, coronal and sagittal planes through ``point_lps`` (LPS mm)."""
    c = np.asarray(point_lps, np.float64).reshape(3)
    px = fov_mm / size_px
    x, y, z = np.eye(3)
    return [PlaneSpec("axial", c, x, y, size_px, px),
            PlaneSpec("coronal", c, x, -z, size_px, px),
            PlaneSpec("sagittal", c, y, -z, size_px, px)]


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


def render_plane(ct: ImageVolume, spec: PlaneSpec, window: tuple[float, float],
                 structures: StructureSet | None = None) -> np.ndarray:
    """The CT resampled on ``spec`` with structure outlines: (size, size, 3) uint8 RGB.

    Args:
        ct: the CT (HU).
        spec: the plane.
        window: (centre, width) in HU.
        structures: outlines where each structure's signed distance crosses 0.
    """
    pts = spec.points_lps()
    ijk = ct.lps_to_ijk_points(pts)
    n = spec.size_px
    vals = ndimage.map_coordinates(ct.voxels, ijk[:, ::-1].T, order=1, mode="constant",
                                   cval=-1024.0, output=np.float32).reshape(n, n)
    c, w = window
    gray = np.clip((vals - (c - w / 2)) * (255.0 / w), 0, 255).astype(np.uint8)
    rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    if structures is not None:
        sd = structures.sample(pts)
        for s, st in enumerate(structures.structures):
            inside = (sd[s] < 0).reshape(n, n).astype(np.uint8)
            if inside.any():
                contours, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL,
                                               cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(rgb, contours, -1, structure_rgb(st.name), 1)
    return rgb
