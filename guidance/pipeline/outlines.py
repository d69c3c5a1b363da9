"""The plan's critical structures drawn on a fluoroscopy frame: their outlines where the
C-arm calibration projects them.

At :class:`StructureOutlines` construction (once per plan, not per frame) each critical
structure that a breach of would harm (the hard labelled soft tissue and the derived
nerve roots; bones are visible on the X-ray itself) becomes the points of a regular
lattice (about 2 mm) inside it, in the planning CT. Per projection (cached: a fixed
C-arm projects the same way every frame) the points are projected, rasterised on a grid
four times coarser than the frame, closed, and traced (OpenCV contours, outer borders
only: the silhouette) back to frame pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from guidance.pipeline.placement import FramePlacement
from guidance.planning.structures import StructureSet

__all__ = ["Outline", "StructureOutlines"]

F64 = npt.NDArray[np.float64]

#: Lattice step inside a structure, mm (coarser for structures above MAX_POINTS).
LATTICE_MM = 2.0
#: Points kept per structure at most.
MAX_POINTS = 60_000
#: Raster step, frame pixels.
STEP_PX = 2
#: Structures left out by default: large organs whose outlines would cover the picture
#: (their margins are still checked).
SKIP_BY_DEFAULT = ("lungs", "bowel", "large_vessels")


@dataclass(frozen=True, eq=False)
class Outline:
    """One structure's outline in a frame.

    Attributes:
        structure: its name.
        polygons: closed polylines, each (M, 2) float64 pixel coordinates (column, row).
    """

    structure: str
    polygons: tuple[F64, ...]


class StructureOutlines:
    """Projects the critical structures of a plan into projection frames.

    Args:
        structures: the plan's structures (distance fields on the planning CT).
        kinds: which structure kinds to outline.
        skip: structure names left out.
        path_lps: (entry, target) of the plan: only structures closer to the planned
            path than the distance fields' cap (30 mm by default) are outlined (the
            others are far from the needle, and their outlines would hide the picture).
    """

    def __init__(self, structures: StructureSet,
                 kinds: tuple[str, ...] = ("critical", "nerve_root"),
                 skip: tuple[str, ...] = SKIP_BY_DEFAULT,
                 path_lps: tuple[F64, F64] | None = None) -> None:
        self._clouds: list[tuple[str, F64]] = []
        near: set[str] | None = None
        if path_lps is not None:
            along = np.linspace(0.0, 1.0, 64)[:, None]
            pts = path_lps[0] + along * (path_lps[1] - path_lps[0])
            d = structures.sample(pts)  # (structures, points); NaN outside the box
            closest = np.where(np.isnan(d), np.inf, d).min(axis=1)
            near = {s.name for q, s in enumerate(structures.structures)
                    if closest[q] < structures.cap_mm}
        grid = structures.grid.ijk_to_lps
        spacing = np.linalg.norm(grid[:3, :3], axis=0)  # i, j, k
        for s in structures.structures:
            if s.kind not in kinds or not s.sdf.present or not s.hard or s.name in skip:
                continue
            if near is not None and s.name not in near:
                continue
            sc = float(s.sdf.scale_ij)
            cell = spacing * np.array([sc, sc, 1.0])  # the field's own voxel, mm
            step = np.maximum(1, np.round(LATTICE_MM / cell)).astype(int)
            inside = s.sdf.distances_mm <= 0.0
            while True:
                sub = inside[::step[2], ::step[1], ::step[0]]
                if sub.sum() <= MAX_POINTS:
                    break
                step += 1
            k, j, i = np.nonzero(sub)
            if k.size == 0:
                continue
            i, j, k = i * step[0], j * step[1], k * step[2]
            off = s.sdf.offset_ijk
            ijk = np.stack([off[0] + sc * i + 0.5 * (sc - 1.0), off[1] + sc * j + 0.5 * (sc - 1.0),
                            off[2] + k.astype(np.float64)], axis=1)
            pts = ijk @ grid[:3, :3].T + grid[:3, 3]
            self._clouds.append((s.name, pts))
        self._key: tuple[object, ...] | None = None
        self._cached: tuple[Outline, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._clouds)

    def project(self, placement: FramePlacement, shape: tuple[int, int]) -> tuple[Outline, ...]:
        """Outlines in a frame of ``shape`` (rows, columns) placed by ``placement`` (a
        projection; slices give none). Cached for an unchanged projection."""
        if not placement.is_projection or placement.ct_to_pixel is None:
            return ()
        key = (tuple(np.round(placement.ct_to_pixel, 4).ravel()), shape)
        if key == self._key:
            return self._cached
        rows, cols = shape
        gr, gc = rows // STEP_PX + 2, cols // STEP_PX + 2
        out = []
        mask = np.zeros((gr, gc), np.uint8)
        for name, pts in self._clouds:
            ij, _ = placement.project(pts)
            ok = np.all(np.isfinite(ij), axis=1)
            g = np.round(ij[ok] / STEP_PX).astype(np.int64)
            inside = (g[:, 0] >= 0) & (g[:, 0] < gc) & (g[:, 1] >= 0) & (g[:, 1] < gr)
            if not inside.any():
                continue
            mask.fill(0)
            mask[g[inside, 1], g[inside, 0]] = 1
            closed = cv2.morphologyEx(cv2.dilate(mask, np.ones((3, 3), np.uint8)),
                                      cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
            contours, _ = cv2.findContours(closed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            polys = tuple(cv2.approxPolyDP(c, 1.5, True).reshape(-1, 2).astype(np.float64)
                          * STEP_PX for c in contours if len(c) >= 3)
            if polys:
                out.append(Outline(name, polys))
        self._key, self._cached = key, tuple(out)
        return self._cached
