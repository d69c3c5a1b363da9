"""Spine landmarks from a vertebra label map: disc centres, foramina, derived nerve roots.

The label maps we have (TotalSegmentator classes) label each vertebra and the spinal
cord, but not discs or nerve roots. Those are *derived* here, geometrically:

- Vertebral body: the vertebra's voxels more than 10 mm anterior to the cord centre and
  within 25 mm of the midline (this drops the posterior elements).
- Spine axis at a level: from the lower body centroid to the upper one.
- Disc centre: on that axis, half-way between the lower body's upper endplate (90th
  percentile of its near-axis voxels along the axis) and the upper body's lower
  endplate (10th percentile).
- Foramen: lateral to the canal at the level of the pedicles of the upper vertebra
  (median lateral offset of its bone just behind the body), slightly above the disc.
- Exiting nerve root: a tube from the dural sac through the upper foramen (just below
  the pedicle), then laterally, caudally and a little anteriorly for 25 mm, crossing the
  disc level lateral to the body (the hypotenuse of Kambin's triangle, the textbook
  course of a lumbar root).

These are approximations, good to a few mm; every output that uses them says
"derived".
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from guidance.geometry import ImageVolume

__all__ = ["SPINE_ORDER", "LevelGeometry", "SpineAnatomy", "VertebraGeometry", "build_anatomy"]

log = logging.getLogger(__name__)

#: Vertebrae in cranio-caudal order (TotalSegmentator names without the prefix).
SPINE_ORDER: tuple[str, ...] = (
    *(f"C{n}" for n in range(1, 8)),
    *(f"T{n}" for n in range(1, 13)),
    *(f"L{n}" for n in range(1, 6)),
    "S1",
)


@dataclass(frozen=True)
class VertebraGeometry:
    """One labelled vertebra.

    Attributes:
        name: ``"L1"``; label: its label id; centroid_lps, body_centroid_lps: (3,) mm.
    """

    name: str
    label: int
    centroid_lps: npt.NDArray[np.float64]
    body_centroid_lps: npt.NDArray[np.float64]


@dataclass(frozen=True)
class LevelGeometry:
    """Landmarks of one motion segment (``upper``-``lower``), LPS mm. All derived.

    Attributes:
        disc_center_lps: (3,) centre of the disc space.
        axis_lps: (3,) unit, lower body -> upper body (cranial).
        anterior_lps: (3,) unit, perpendicular to the axis, towards the body.
        left_lps: (3,) unit, perpendicular to both, towards patient left.
        canal_center_lps: (3,) cord/canal centre at disc level.
        half_ap_mm, half_lat_mm: half depth and half width of the lower body near its
            upper endplate.
        foramen_lps: side (``"left"``/``"right"``) -> (3,) foramen centre.
        root_polyline_lps: side -> (3, 3) points of the derived exiting root.
    """

    upper: str
    lower: str
    disc_center_lps: npt.NDArray[np.float64]
    axis_lps: npt.NDArray[np.float64]
    anterior_lps: npt.NDArray[np.float64]
    left_lps: npt.NDArray[np.float64]
    canal_center_lps: npt.NDArray[np.float64]
    half_ap_mm: float
    half_lat_mm: float
    foramen_lps: Mapping[str, npt.NDArray[np.float64]]
    root_polyline_lps: Mapping[str, npt.NDArray[np.float64]]

    def side_vector(self, side: str) -> npt.NDArray[np.float64]:
        """Unit vector towards ``side`` (``"left"`` or ``"right"``)."""
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        return self.left_lps if side == "left" else -self.left_lps

    def posterolateral_disc_lps(self, side: str) -> npt.NDArray[np.float64]:
        """Point in the posterolateral disc (typical herniation site), mm."""
        return (self.disc_center_lps - 0.5 * self.half_ap_mm * self.anterior_lps
                + 0.4 * self.half_lat_mm * self.side_vector(side))

    def foramen_target_lps(self, side: str) -> npt.NDArray[np.float64]:
        """Transforaminal target: outer foramen below the pedicle, above/behind the
        exiting root (the "safe triangle"), mm."""
        return (self.foramen_lps[side] + 4.0 * self.side_vector(side)
                + 8.0 * self.axis_lps - 5.0 * self.anterior_lps)


@dataclass(frozen=True)
class SpineAnatomy:
    """Labelled vertebrae (by name) and the levels between adjacent labelled pairs."""

    vertebrae: Mapping[str, VertebraGeometry]
    levels: Mapping[tuple[str, str], LevelGeometry]

    def level(self, upper: str, lower: str) -> LevelGeometry:
        """Landmarks of the segment ``upper``-``lower`` (e.g. ``"L1"``, ``"L2"``).

        Raises:
            ValueError: unknown name ("unknown vertebra L7"), not adjacent, or not in
                the label map.
        """
        for v in (upper, lower):
            if v not in SPINE_ORDER:
                raise ValueError(f"unknown vertebra {v} (expected one of C1..C7, T1..T12, "
                                 "L1..L5, S1)")
        if SPINE_ORDER.index(lower) != SPINE_ORDER.index(upper) + 1:
            raise ValueError(f"vertebrae {upper} and {lower} are not adjacent "
                             f"(write the upper one first, e.g. L1-L2)")
        for v in (upper, lower):
            if v not in self.vertebrae:
                raise ValueError(f"vertebra {v} is not in the label map "
                                 f"(present: {', '.join(self.present())})")
        if (upper, lower) not in self.levels:
            raise ValueError(f"level {upper}-{lower}: landmarks could not be derived "
                             "(vertebra cut by the volume edge?)")
        return self.levels[(upper, lower)]

    def present(self) -> list[str]:
        return [v for v in SPINE_ORDER if v in self.vertebrae]


def _points(labels: ImageVolume, sl: tuple[slice, ...], mask: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask)  # k, j, i local
    off = np.array([s.start for s in sl])
    return labels.ijk_to_lps_points((idx + off)[:, ::-1])


def _unit(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def build_anatomy(labels: ImageVolume, names: Mapping[int, str]) -> SpineAnatomy:
    """Derive vertebra and level landmarks from a TotalSegmentator-style label map.

    Args:
        labels: integer label map ``[k, j, i]`` with ``ijk_to_lps``.
        names: label id -> class name (``vertebrae_L1``, ``spinal_cord``...).
    """
    vox = labels.voxels
    by_name = {n: i for i, n in names.items()}
    objects = ndimage.find_objects(vox.astype(np.int32, copy=False))
    cord_pts = np.empty((0, 3))
    cord_id = by_name.get("spinal_cord")
    if cord_id is not None and cord_id <= len(objects) and objects[cord_id - 1] is not None:
        sl = objects[cord_id - 1]
        cord_pts = _points(labels, sl, vox[sl] == cord_id)

    raw: dict[str, tuple[int, np.ndarray]] = {}
    for v in SPINE_ORDER:
        lid = by_name.get(f"vertebrae_{v}")
        if lid is None or lid > len(objects) or objects[lid - 1] is None:
            continue
        sl = objects[lid - 1]
        pts = _points(labels, sl, vox[sl] == lid)
        if len(pts) >= 50:
            raw[v] = (lid, pts)

    vertebrae: dict[str, VertebraGeometry] = {}
    bodies: dict[str, np.ndarray] = {}
    for v, (lid, pts) in raw.items():
        c = pts.mean(axis=0)
        near_cord = cord_pts[np.abs(cord_pts[:, 2] - c[2]) < 10.0] if len(cord_pts) else cord_pts
        if len(near_cord) >= 10:
            cc = near_cord.mean(axis=0)
            ant = c - cc
            ant[2] = 0.0
            ant = _unit(ant)
            rel = pts - cc
            lat = np.cross(ant, [0.0, 0.0, 1.0])
            body = pts[(rel @ ant > 10.0) & (np.abs(rel @ lat) < 25.0)]
        else:
            body = pts
        if len(body) < 20:
            body = pts
        bodies[v] = body
        vertebrae[v] = VertebraGeometry(v, lid, c, body.mean(axis=0))

    levels: dict[tuple[str, str], LevelGeometry] = {}
    for upper, lower in itertools.pairwise(SPINE_ORDER):
        if upper in vertebrae and lower in vertebrae:
            try:
                levels[(upper, lower)] = _level(
                    upper, lower, bodies, vertebrae, raw[upper][1], cord_pts
                )
            except ValueError as e:
                log.info("level %s-%s not derived: %s", upper, lower, e)
    return SpineAnatomy(vertebrae, levels)


def _level(
    upper: str,
    lower: str,
    bodies: Mapping[str, np.ndarray],
    vertebrae: Mapping[str, VertebraGeometry],
    upper_pts: np.ndarray,
    cord_pts: np.ndarray,
) -> LevelGeometry:
    b_u, b_l = vertebrae[upper].body_centroid_lps, vertebrae[lower].body_centroid_lps
    axis = _unit(b_u - b_l)
    if np.linalg.norm(b_u - b_l) < 5.0:
        raise ValueError("body centroids coincide")

    def near_axis(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rel = pts - b_l
        along = rel @ axis
        radial = np.linalg.norm(rel - np.outer(along, axis), axis=1)
        return along, radial

    a_l, r_l = near_axis(bodies[lower])
    a_u, r_u = near_axis(bodies[upper])
    if (r_l < 8).sum() < 10 or (r_u < 8).sum() < 10:
        raise ValueError("too few body voxels near the axis")
    top_l = float(np.percentile(a_l[r_l < 8], 90))
    bottom_u = float(np.percentile(a_u[r_u < 8], 10))
    disc = b_l + axis * 0.5 * (top_l + bottom_u)

    if len(cord_pts):
        rel = cord_pts - disc
        slab = cord_pts[np.abs(rel @ axis) < 8.0]
    else:
        slab = cord_pts
    if len(slab) >= 10:
        canal = slab.mean(axis=0)
        ant = disc - canal
        ant = _unit(ant - axis * float(ant @ axis))
    else:
        ant = _unit(np.array([0.0, -1.0, 0.0]) - axis * -axis[1])
        canal = disc - ant * 25.0
    canal = canal + axis * float((disc - canal) @ axis)
    left = _unit(np.cross(axis, ant))
    if left[0] < 0:
        left = -left

    top_pts = bodies[lower][np.abs(a_l - top_l) < 8.0]
    if len(top_pts) < 10:
        top_pts = bodies[lower]
    rel = top_pts - disc
    ap = rel @ ant
    lr = rel @ left
    half_ap = 0.5 * float(np.percentile(ap, 95) - np.percentile(ap, 5))
    half_lat = 0.5 * float(np.percentile(lr, 95) - np.percentile(lr, 5))

    # Pedicles: bone of the upper vertebra just behind its body, above the disc.
    rel_u = upper_pts - disc
    ap_u, ax_u, lr_u = rel_u @ ant, rel_u @ axis, rel_u @ left
    height_u = float((b_u - disc) @ axis)
    foramen: dict[str, np.ndarray] = {}
    roots: dict[str, np.ndarray] = {}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        sel = ((ap_u < -half_ap + 2.0) & (ap_u > -half_ap - 12.0) & (ax_u > 3.0)
               & (ax_u < 25.0) & (sign * lr_u > 5.0) & (sign * lr_u < 35.0))
        lateral = float(np.median(sign * lr_u[sel])) if sel.sum() >= 10 else 0.6 * half_lat
        f = (disc - ant * (half_ap + 2.0) + sign * left * lateral
             + axis * max(3.0, 0.25 * height_u))
        foramen[side] = f
        start = canal + axis * 8.0 + sign * left * 6.0
        p1 = f + axis * 5.0
        course = _unit(sign * left * 0.75 + ant * 0.3 - axis * 0.55)
        roots[side] = np.stack([start, p1, p1 + course * 25.0])
    return LevelGeometry(
        upper, lower, disc, axis, ant, left, canal, half_ap, half_lat, foramen, roots
    )
