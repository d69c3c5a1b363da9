"""Bring a label map onto the CT's voxel grid.

A scanner's DICOM series and a NIfTI made from it hold the same voxels in different axis
orders (feet-first, a flipped column direction, slices sorted the other way): labels made
on one (TotalSegmentator on the NIfTI) must still fit the other. In order of preference:

1. the same grid: used as is;
2. the same physical grid in another axis order, with flipped axes, or a part of it (a
   DICOM SEG without its empty slices): reoriented exactly (a transpose, flips and a
   whole-voxel offset; no interpolation, every voxel kept);
3. any other grid: resampled nearest-neighbour onto the CT, with a warning giving the
   largest distance between a CT voxel and the label voxel it took (and refused when
   the label map does not overlap the CT at all).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from guidance.geometry import ImageVolume

__all__ = ["GridFit", "labels_onto_ct"]

log = logging.getLogger(__name__)

#: Largest corner distance (mm) for two grids to count as the same.
_SAME_TOL_MM = 1e-3


@dataclass(frozen=True)
class GridFit:
    """How a label map was brought onto the CT grid.

    Attributes:
        labels: the label map on the CT's grid (``voxels.shape == ct.voxels.shape``,
            ``ijk_to_lps == ct.ijk_to_lps``).
        how: ``"same"``, ``"reoriented"`` or ``"resampled"``.
        note: one line for the user ("" when the grid was the same).
        largest_shift_mm: for ``resampled``: the largest distance between a CT voxel
            centre and the label voxel centre it took; 0 otherwise.
    """

    labels: ImageVolume
    how: str
    note: str
    largest_shift_mm: float = 0.0


def _corners(shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    k, j, i = shape[:3]
    return np.array([[a, b, c] for a in (0, i - 1) for b in (0, j - 1) for c in (0, k - 1)],
                    dtype=np.float64)


def _reorient(ct: ImageVolume, labels: ImageVolume) -> tuple[ImageVolume, float] | None:
    """The labels transposed, flipped and placed onto the CT grid (no interpolation), with
    the fraction of CT voxels they cover; None when no signed axis permutation with a
    whole-voxel offset maps one grid onto the other (a SEG without its empty slices is
    such a sub-grid)."""
    t = np.linalg.inv(labels.ijk_to_lps) @ ct.ijk_to_lps  # CT ijk -> label ijk
    r = t[:3, :3]
    signed = np.round(r)
    if np.abs(r - signed).max() > 1e-4:
        return None
    if not (np.all(np.abs(signed).sum(axis=0) == 1) and np.all(np.abs(signed).sum(axis=1) == 1)):
        return None
    offsets = np.round(t[:3, 3])
    if np.abs(t[:3, 3] - offsets).max() > 1e-3:
        return None
    ct_size = np.array(ct.voxels.shape[:3][::-1])  # (I, J, K)
    lab_size = np.array(labels.voxels.shape[:3][::-1])
    src_axis = np.argmax(np.abs(signed), axis=1)  # label axis b <- CT axis src_axis[b]
    sign = signed[np.arange(3), src_axis]
    lab_ijk = np.transpose(labels.voxels, (2, 1, 0))  # [i, j, k]
    off = np.zeros(3, dtype=np.int64)  # per CT axis: label index (after flips) - CT index
    for b in range(3):
        a = src_axis[b]
        if sign[b] < 0:
            lab_ijk = np.flip(lab_ijk, axis=b)
            off[a] = int(lab_size[b] - 1 - offsets[b])
        else:
            off[a] = int(offsets[b])
    order = [int(np.flatnonzero(src_axis == a)[0]) for a in range(3)]
    in_ct_axes = np.transpose(lab_ijk, order)  # axis a = CT axis a
    out = np.zeros(tuple(ct_size), dtype=labels.voxels.dtype)
    dst, src = [], []
    for a in range(3):
        lo = max(0, -int(off[a]))
        hi = min(int(ct_size[a]), in_ct_axes.shape[a] - int(off[a]))
        if hi <= lo:
            return None
        dst.append(slice(lo, hi))
        src.append(slice(lo + int(off[a]), hi + int(off[a])))
    out[tuple(dst)] = in_ct_axes[tuple(src)]
    covered = float(np.prod([d.stop - d.start for d in dst])) / float(np.prod(ct_size))
    on_ct = np.ascontiguousarray(np.transpose(out, (2, 1, 0)))
    return ImageVolume(on_ct, ct.ijk_to_lps.copy()), covered


def _resample(ct: ImageVolume, labels: ImageVolume) -> tuple[ImageVolume, float, float]:
    """Nearest-neighbour resampling, slice by slice. Returns (labels on the CT grid,
    largest shift (mm) over CT voxels inside the label map, fraction of CT voxels
    inside it)."""
    k_n, j_n, i_n = ct.voxels.shape[:3]
    t = np.linalg.inv(labels.ijk_to_lps) @ ct.ijk_to_lps
    lab = labels.voxels
    lk, lj, li = lab.shape[:3]
    out = np.zeros(ct.voxels.shape[:3], dtype=lab.dtype)
    jj, ii = np.meshgrid(np.arange(j_n, dtype=np.float64), np.arange(i_n, dtype=np.float64),
                         indexing="ij")
    worst = 0.0
    inside_count = 0
    lab_m = labels.ijk_to_lps
    for k in range(k_n):
        pts = np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, float(k)), np.ones(ii.size)])
        src = (t @ pts)[:3]
        idx = np.rint(src).astype(np.int64)
        ok = ((idx[0] >= 0) & (idx[0] < li) & (idx[1] >= 0) & (idx[1] < lj)
              & (idx[2] >= 0) & (idx[2] < lk))
        if not ok.any():
            continue
        inside_count += int(ok.sum())
        sel = idx[:, ok]
        out[k].ravel()[np.flatnonzero(ok)] = lab[sel[2], sel[1], sel[0]]
        delta = lab_m[:3, :3] @ (sel - src[:, ok])  # mm between the two voxel centres
        worst = max(worst, float(np.sqrt((delta ** 2).sum(axis=0)).max()))
    return ImageVolume(out, ct.ijk_to_lps.copy()), worst, inside_count / float(out.size)


def labels_onto_ct(ct: ImageVolume, labels: ImageVolume, what: str = "label map") -> GridFit:
    """The label map on the CT's grid: as is, reoriented exactly, or resampled.

    Raises:
        ValueError: the label map does not overlap the CT at all (naming ``what``).
    """
    if labels.voxels.shape[:3] == ct.voxels.shape[:3]:
        corners = _corners(ct.voxels.shape)
        diff = np.abs(ct.ijk_to_lps_points(corners) - labels.ijk_to_lps_points(corners)).max()
        if diff <= _SAME_TOL_MM:
            return GridFit(labels, "same", "")
    exact = _reorient(ct, labels)
    if exact is not None:
        volume, covered = exact
        note = (f"{what} holds the CT's voxels in another axis order, direction or extent: "
                "reoriented exactly (no interpolation)"
                + (f"; it covers {100 * covered:.0f}% of the CT (outside: no label)"
                   if covered < 0.999 else ""))
        log.info("%s", note)
        return GridFit(volume, "reoriented", note)
    resampled, shift, inside = _resample(ct, labels)
    if inside == 0.0:
        raise ValueError(f"{what} does not overlap the CT (no CT voxel falls inside it)")
    note = (f"{what} is on another grid: resampled nearest-neighbour onto the CT, largest "
            f"shift {shift:.2f} mm between a CT voxel and the label voxel it took"
            + (f"; it covers only {100 * inside:.0f}% of the CT" if inside < 0.999 else ""))
    log.warning("%s", note)
    return GridFit(resampled, "resampled", note, shift)
