"""Critical structures of a plan: named label groups with margins, and their distance fields.

A :class:`StructureSet` is built once per plan from a label map (TotalSegmentator class
names by default, see :data:`guidance.planning.config.DEFAULT_STRUCTURES`):

- the labelled critical structures of the config (cord, aorta, venae cavae, vessels,
  lungs, kidneys, bowel...);
- every labelled vertebra (and the sacrum) as a bone obstacle, ``vertebra_L1`` etc.;
- nerve roots *derived* from the vertebrae and the cord (no label exists):
  ``nerve_root_L1_left (derived)``, see :mod:`guidance.planning.anatomy`.

Work is restricted to a region of interest (a box around the target): the labels are
cropped to the box grown by ``clearance_cap_mm``, so every distance up to the cap is exact
for points inside the box. Points outside the box sample as NaN ("unknown"), which every
consumer treats as unsafe. Built sets are cached in memory, keyed by a hash of the
labels, geometry, config and box.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from guidance.geometry import ImageVolume
from guidance.planning.anatomy import SPINE_ORDER, SpineAnatomy, build_anatomy
from guidance.planning.config import StructureConfig
from guidance.planning.sdf import SignedDistanceField, compute_sdf

__all__ = ["Structure", "StructureSet", "build_structures", "clear_cache"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]

DERIVED_SUFFIX = " (derived)"


@dataclass(frozen=True, eq=False)
class Structure:
    """One named structure with its signed distance field.

    Attributes:
        name: display name; derived structures end in ``" (derived)"``.
        kind: ``"critical"`` (soft tissue to avoid), ``"bone"`` (a vertebra: an obstacle)
            or ``"nerve_root"`` (derived).
        margin_mm: required clearance, mm.
        hard: whether a breach is a violation (else a warning).
        derived: True when computed geometrically, not from a label.
        vertebra: for bones, the vertebra name (``"L1"``), else ``""``.
        sdf: the distance field (on the set's grid).
    """

    name: str
    kind: str
    margin_mm: float
    hard: bool
    derived: bool
    vertebra: str
    sdf: SignedDistanceField


@dataclass(frozen=True, eq=False)
class StructureSet:
    """Structures with distance fields on one grid (a crop of the label map).

    Attributes:
        grid: geometry of the crop (``voxels`` is the cropped label map).
        roi_min_ijk, roi_max_ijk: (3,) the trusted box in grid indices (i, j, k).
        structures: in a fixed order (that of :meth:`sample`'s rows).
        anatomy: spine landmarks derived from the full label map.
        cap_mm: distances are exact up to this, reported as this beyond.
    """

    grid: ImageVolume
    roi_min_ijk: npt.NDArray[np.float64]
    roi_max_ijk: npt.NDArray[np.float64]
    structures: tuple[Structure, ...]
    anatomy: SpineAnatomy
    cap_mm: float

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.structures)

    def get(self, name: str) -> Structure:
        for s in self.structures:
            if s.name == name:
                return s
        raise KeyError(f"no structure {name!r}; present: {list(self.names)}")

    def to_grid_ijk(self, points_lps: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """(N, 3) LPS mm -> (N, 3) fractional grid indices (i, j, k)."""
        return self.grid.lps_to_ijk_points(points_lps)

    def in_roi(self, ijk: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """(N,) whether grid indices lie in the trusted box."""
        return np.all((ijk >= self.roi_min_ijk) & (ijk <= self.roi_max_ijk), axis=1)

    def sample(
        self, points_lps: npt.ArrayLike, which: Sequence[int] | None = None
    ) -> npt.NDArray[np.float64]:
        """Signed distances, mm, at (N, 3) LPS points: (S, N) float64, NaN outside the
        trusted box. ``which`` selects structure indices (default: all, in order)."""
        ijk = self.to_grid_ijk(points_lps)
        idx = range(len(self.structures)) if which is None else which
        out = np.full((len(idx), ijk.shape[0]), np.nan, dtype=np.float64)
        known = self.in_roi(ijk)  # False for a NaN point too: unknown, never far away
        for row, s in enumerate(idx):
            out[row, known] = self.structures[s].sdf.sample_ijk(ijk[known])
        return out


_CACHE: dict[str, StructureSet] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every cached :class:`StructureSet`."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _roi_box(
    labels: ImageVolume, center_lps: npt.ArrayLike | None, half_mm: npt.ArrayLike | None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(lo, hi) inclusive voxel box (i, j, k) of the ROI, clipped to the volume."""
    size = np.array(labels.size_ijk)
    if center_lps is None:
        return np.zeros(3, np.int64), size - 1
    c = np.asarray(center_lps, dtype=np.float64).reshape(3)
    h = np.broadcast_to(np.asarray(half_mm if half_mm is not None else 100.0, float), (3,))
    if np.any(h <= 0):
        raise ValueError(f"roi_half_size_mm must be > 0, got {h}")
    corners = np.array([[c[0] + sx * h[0], c[1] + sy * h[1], c[2] + sz * h[2]]
                        for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    ijk = labels.lps_to_ijk_points(corners)
    lo = np.clip(np.floor(ijk.min(axis=0)), 0, size - 1).astype(np.int64)
    hi = np.clip(np.ceil(ijk.max(axis=0)), 0, size - 1).astype(np.int64)
    return lo, hi


def _capsule_mask(
    grid: ImageVolume, polyline_lps: np.ndarray, radius_mm: float
) -> npt.NDArray[np.bool_]:
    """Voxels of ``grid`` within ``radius_mm`` of a polyline (LPS), as a [k, j, i] mask."""
    mask = np.zeros(grid.voxels.shape[:3], dtype=bool)
    ijk = grid.lps_to_ijk_points(polyline_lps)
    pad = radius_mm / grid.spacing_mm + 1
    lo = np.maximum(np.floor(ijk.min(axis=0) - pad), 0).astype(int)
    hi = np.minimum(np.ceil(ijk.max(axis=0) + pad), np.array(grid.size_ijk) - 1).astype(int)
    if np.any(hi < lo):
        return mask
    kk, jj, ii = np.meshgrid(np.arange(lo[2], hi[2] + 1), np.arange(lo[1], hi[1] + 1),
                             np.arange(lo[0], hi[0] + 1), indexing="ij")
    pts = grid.ijk_to_lps_points(np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1))
    best = np.full(len(pts), np.inf)
    for a, b in itertools.pairwise(polyline_lps):
        ab = b - a
        t = np.clip((pts - a) @ ab / float(ab @ ab), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(pts - (a + t[:, None] * ab), axis=1))
    mask[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = (best <= radius_mm).reshape(
        kk.shape
    )
    return mask


def _isin_job(crop: np.ndarray, ids: Sequence[int]) -> Callable[[], np.ndarray]:
    """Deferred mask (built when its field is computed, so masks do not pile up)."""
    return lambda: np.isin(crop, list(ids))


def _const_job(mask: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: mask


def _cache_key(labels: ImageVolume, names: Mapping[int, str], config: StructureConfig,
               lo: np.ndarray, hi: np.ndarray) -> str:
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(labels.voxels).view(np.uint8).data)
    h.update(labels.ijk_to_lps.tobytes())
    h.update(repr(sorted(names.items())).encode())
    h.update(repr(config).encode())
    h.update(lo.tobytes() + hi.tobytes())
    return h.hexdigest()


def build_structures(
    labels: ImageVolume,
    names: Mapping[int, str],
    config: StructureConfig | None = None,
    *,
    roi_center_lps: npt.ArrayLike | None = None,
    roi_half_size_mm: npt.ArrayLike | None = None,
    progress: ProgressFn | None = None,
    use_cache: bool = True,
) -> StructureSet:
    """Build the structures and their signed distance fields.

    Args:
        labels: integer label map ``[k, j, i]`` with ``ijk_to_lps`` (LPS mm).
        names: label id -> class name (TotalSegmentator names unless the config uses
            others).
        config: which structures, margins, cap (default :class:`StructureConfig`).
        roi_center_lps: (3,) centre of the trusted box, LPS mm (default: whole volume).
        roi_half_size_mm: (3,) or scalar half extent of the box along L, P, S, mm
            (default 100).
        progress: optional ``progress(fraction, message)``.
        use_cache: reuse an identical earlier build (in memory).

    Raises:
        TypeError: labels not an ImageVolume or not integer.
        ValueError: a configured structure none of whose labels exists in ``names``
            (a typo must not silently drop a structure).
    """
    if not isinstance(labels, ImageVolume):
        raise TypeError(f"labels must be an ImageVolume, got {type(labels).__name__}")
    if labels.voxels.ndim != 3 or labels.voxels.dtype.kind not in "iu":
        raise TypeError(f"labels must be a 3D integer map, got {labels.voxels.dtype} "
                        f"{labels.voxels.shape}")
    config = config or StructureConfig()
    cap = config.clearance_cap_mm
    lo, hi = _roi_box(labels, roi_center_lps, roi_half_size_mm)
    key = _cache_key(labels, names, config, lo, hi) if use_cache else ""
    if use_cache:
        with _CACHE_LOCK:
            if key in _CACHE:
                log.info("structure set from cache %s", key[:10])
                return _CACHE[key]
    t0 = time.perf_counter()
    size = np.array(labels.size_ijk)
    grow = np.ceil(cap / labels.spacing_mm).astype(np.int64) + 1
    c_lo = np.maximum(lo - grow, 0)
    c_hi = np.minimum(hi + grow, size - 1)
    crop = labels.voxels[c_lo[2]:c_hi[2] + 1, c_lo[1]:c_hi[1] + 1, c_lo[0]:c_hi[0] + 1]
    m = labels.ijk_to_lps.copy()
    m[:3, 3] = labels.ijk_to_lps_points(c_lo.astype(np.float64))[0]
    grid = ImageVolume(np.ascontiguousarray(crop), m)
    spacing = grid.spacing_mm
    by_name = {n: i for i, n in names.items()}
    anatomy = build_anatomy(labels, names)

    jobs: list[tuple[str, str, float, bool, bool, str, Callable[[], np.ndarray]]] = []
    present_ids = set(np.unique(crop).tolist())
    for spec in config.structures:
        ids = [by_name[n] for n in spec.labels if n in by_name]
        if not ids:
            raise ValueError(
                f"structure {spec.name!r}: none of its labels {list(spec.labels)} is a "
                "class of this label map"
            )
        if not present_ids.intersection(ids):
            log.debug("structure %s not in the region", spec.name)
        jobs.append((spec.name, "critical", spec.margin_mm, spec.hard, False, "",
                     _isin_job(crop, ids)))
    for v in (*SPINE_ORDER, "sacrum"):
        lid = by_name.get(f"vertebrae_{v}", by_name.get(v) if v == "sacrum" else None)
        if lid is None or lid not in present_ids:
            continue
        jobs.append((f"vertebra_{v}", "bone", config.vertebra_margin_mm, True, False, v,
                     _isin_job(crop, [lid])))
    if config.derive_nerve_roots:
        for (upper, _lower), level in anatomy.levels.items():
            for side, poly in level.root_polyline_lps.items():
                ijk = grid.lps_to_ijk_points(poly)
                if np.any(ijk.max(axis=0) < 0) or np.any(ijk.min(axis=0) > np.array(grid.size_ijk)):
                    continue
                mask = _capsule_mask(grid, poly, config.nerve_root_radius_mm)
                if not mask.any():
                    continue
                jobs.append((f"nerve_root_{upper}_{side}{DERIVED_SUFFIX}", "nerve_root",
                             config.nerve_root_margin_mm, True, True, "",
                             _const_job(mask)))
    structures: list[Structure] = []
    for n, (name, kind, margin, hard, derived, vertebra, make_mask) in enumerate(jobs):
        sdf = compute_sdf(make_mask(), spacing, cap)
        structures.append(Structure(name, kind, margin, hard, derived, vertebra, sdf))
        if progress is not None:
            progress((n + 1) / len(jobs), f"distance field {name}")
    result = StructureSet(
        grid, (lo - c_lo).astype(np.float64), (hi - c_lo).astype(np.float64),
        tuple(structures), anatomy, cap,
    )
    log.info("built %d structures on %s voxels in %.2f s", len(structures), crop.shape,
             time.perf_counter() - t0)
    if use_cache:
        with _CACHE_LOCK:
            _CACHE[key] = result
    return result
