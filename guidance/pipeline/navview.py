"""The picture of navigation from poses alone: the planning CT resliced along the needle.

With a tracked needle and no image stream there is no frame to draw on; what an
interventional radiologist looks at instead is the planning CT in the plane of the
needle. :class:`NavigationView` reslices it (trilinear, ``scipy.ndimage``) in the plane
that holds the needle's axis and the planned direction (the needle's axis and the
patient's long axis when they are parallel): columns along the needle from hub to tip,
rows towards posterior (anterior up, as CT is read), the tip at 65 % of the width. The
plan's structures are drawn as labels from their distance fields sampled on a coarse
grid of the plane (:class:`~guidance.planning.sdf.SdfStack`).

It runs for pose updates at most ``POSE_OVERLAY_HZ``, after the outputs have gone, on
buffers sized once.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from guidance.geometry import ImageVolume
from guidance.planning.sdf import SdfStack
from guidance.planning.structures import StructureSet

__all__ = ["NavSlice", "NavigationView"]

F64 = npt.NDArray[np.float64]

#: Coarse grid of the structure labels, cells per side.
LABEL_GRID = 64


@dataclass(frozen=True, eq=False)
class NavSlice:
    """One reslice.

    Attributes:
        image: (1, rows, cols) int16 HU with ``ijk_to_lps`` placing it in the planning CT.
        labels: (rows, cols) uint8: the structures (value = index in ``label_names``).
        label_names: class names by label value (0 = background).
        tip_ij, hub_ij: (2,) the needle's tip and a point 80 mm back along it, pixels.
    """

    image: ImageVolume
    labels: npt.NDArray[np.uint8]
    label_names: tuple[str, ...]
    tip_ij: F64
    hub_ij: F64


class NavigationView:
    """Reslices the planning CT along the needle.

    Args:
        ct: the planning CT (HU, LPS).
        structures: the plan's structures (``None``: no labels).
        size: pixels per side.
        spacing_mm: pixel size, mm.
        names: the structures to draw (default: the hard ones that are not bones).
    """

    def __init__(self, ct: ImageVolume, structures: StructureSet | None, size: int = 256,
                 spacing_mm: float = 0.5, names: tuple[str, ...] | None = None) -> None:
        self.ct = ct
        self.size = int(size)
        self.spacing_mm = float(spacing_mm)
        self._lps_to_ijk = ct.lps_to_ijk
        self._hu = np.ascontiguousarray(ct.voxels, dtype=np.float32)
        n = self.size
        jj, ii = np.mgrid[0:n, 0:n].astype(np.float64)
        self._ii, self._jj = ii.ravel(), jj.ravel()
        self._out = np.empty(n * n, np.float32)
        self._stack: SdfStack | None = None
        self._names: tuple[str, ...] = ("background",)
        self._structures = structures
        if structures is not None:
            keep = [k for k, s in enumerate(structures.structures)
                    if (names is None and s.hard and s.kind != "bone")
                    or (names is not None and s.name in names)][:250]
            if keep:
                self._stack = SdfStack([structures.structures[k].sdf for k in keep])
                self._names = ("background", *(structures.structures[k].name for k in keep))
            g = (np.arange(LABEL_GRID) + 0.5) * (n / LABEL_GRID)
            gj, gi = np.meshgrid(g, g, indexing="ij")
            self._gi, self._gj = gi.ravel(), gj.ravel()

    def render(self, tip_ct: npt.ArrayLike, axis_ct: npt.ArrayLike,
               plan_direction: npt.ArrayLike | None = None) -> NavSlice:
        """The reslice through the needle (tip and axis in the planning CT, LPS mm)."""
        tip = np.asarray(tip_ct, dtype=np.float64).reshape(3)
        x = np.asarray(axis_ct, dtype=np.float64).reshape(3)
        x = x / np.linalg.norm(x)
        normal = np.zeros(3)
        for other in ([plan_direction] if plan_direction is not None else []) + [
                [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]:
            normal = np.cross(x, np.asarray(other, dtype=np.float64))
            if np.linalg.norm(normal) > 0.1:
                break
        normal /= np.linalg.norm(normal)
        y = np.cross(normal, x)
        if y[1] < 0:  # rows towards posterior (+y in LPS): anterior up
            y, normal = -y, -normal
        n, sp = self.size, self.spacing_mm
        tip_ij = np.array([0.65 * (n - 1), 0.5 * (n - 1)])
        origin = tip - tip_ij[0] * sp * x - tip_ij[1] * sp * y
        ijk_to_lps = np.eye(4)
        ijk_to_lps[:3, 0], ijk_to_lps[:3, 1], ijk_to_lps[:3, 2] = x * sp, y * sp, normal * sp
        ijk_to_lps[:3, 3] = origin
        m = self._lps_to_ijk @ ijk_to_lps  # slice pixel -> CT voxel (i, j, k)
        ci = m[0, 0] * self._ii + m[0, 1] * self._jj + m[0, 3]
        cj = m[1, 0] * self._ii + m[1, 1] * self._jj + m[1, 3]
        ck = m[2, 0] * self._ii + m[2, 1] * self._jj + m[2, 3]
        ndimage.map_coordinates(self._hu, np.stack([ck, cj, ci]), output=self._out, order=1,
                                mode="constant", cval=-1024.0, prefilter=False)
        image = ImageVolume(self._out.reshape(1, n, n).astype(np.int16), ijk_to_lps)
        labels = np.zeros((n, n), np.uint8)
        if self._stack is not None and self._structures is not None:
            lps = origin + np.outer(self._gi, x * sp) + np.outer(self._gj, y * sp)
            d = self._stack.sample(self._structures.to_grid_ijk(lps))
            inside = d <= 0.0
            coarse = np.zeros(LABEL_GRID * LABEL_GRID, np.uint8)
            for s in range(inside.shape[0] - 1, -1, -1):  # the first structure on top
                coarse[inside[s]] = s + 1
            # Only the structures in this slice, numbered 1..m (a short legend).
            present = np.unique(coarse[coarse > 0])
            lut = np.zeros(len(self._names), np.uint8)
            lut[present] = np.arange(1, present.size + 1)
            names = ("background", *(self._names[v] for v in present))
            cv2.resize(lut[coarse].reshape(LABEL_GRID, LABEL_GRID), (n, n), dst=labels,
                       interpolation=cv2.INTER_NEAREST)
        else:
            names = ("background",)
        hub_ij = tip_ij - np.array([80.0 / sp, 0.0])
        return NavSlice(image, labels, names, tip_ij, hub_ij)
