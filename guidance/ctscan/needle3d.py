"""The needle of a CT control slab in 3D: every slice segmented in one batched model call,
one robust line through the evidence of all slices, the tip at its deepest end.

Segmentation (:class:`SlabSegmenter`): the region of interest is the plan's path (or the
last needle) where it crosses the slab, padded, resampled to the model's pixel spacing;
all K slices go through the network as one (K, 1, R, C) batch. Without a hint the slices
are tiled at the model's spacing (slower, same answer).

Line fit (:func:`fit_needle_3d`): voxels whose needle probability is >= 0.5, in LPS mm
(each at its slice's centre plane); RANSAC over pairs for the line with the largest
probability-weighted inlier mass, then probability-weighted PCA over the inliers (twice).
With thick slices a needle crossing them at an angle leaves, in each slice, the in-plane
footprint of the part inside that slice: the footprint's centre lies on the axis, and
its deep end is where the needle leaves the slice. The tip is therefore found in-plane:
the half-probability point along the line's in-plane projection in the deepest slice
with evidence, lifted onto the 3D line (sub-voxel). When that end is where the line
leaves the slab (its first or last slice's outer face, or the field of view), the tip is
not in the slab: the result says so and gives the exit point, never a false tip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from guidance.ctscan.result import SlabNeedle
from guidance.geometry import ImageVolume
from guidance.io.config_schema import check_fields, setting
from models.preprocess import normalise
from models.segmenter import Segmenter

__all__ = ["NeedleFitConfig", "SlabSegmenter", "fit_needle_3d"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class NeedleFitConfig:
    """Thresholds of the 3D needle fit (the ``ct_scan.fit`` keys); each field documents
    itself."""

    prob_threshold: float = setting(
        0.5, "a voxel is needle evidence at this probability or above", gt=0, lt=1)
    min_voxels: int = setting(12, "fewer inliers than this: no needle", ge=2, le=1_000_000)
    min_length_mm: float = setting(
        4.0, "a line shorter than this (evidence extent along it): no needle", unit="mm",
        gt=0, le=200)
    ransac_iterations: int = setting(150, "pairs tried", ge=1, le=100_000)
    max_candidates: int = setting(4000, "strongest voxels kept for the fit", ge=2,
                                  le=10_000_000)
    exit_tolerance_mm: float = setting(
        1.5, "the evidence ending this close to where the line leaves the slab means the "
             "tip is beyond it", unit="mm", ge=0, le=50)
    seed: int = setting(0, "RANSAC's random seed (reproducible)", ge=0, le=2**31 - 1)

    def __post_init__(self) -> None:
        check_fields(self, "ct_scan.fit")


class SlabSegmenter:
    """The CT model on every slice of a slab in one batched call.

    Args:
        segmenter: the loaded CT model (its backend runs (N, 1, R, C) batches).
        max_grid: largest region side on the model grid, pixels (multiple of 16).
        margin_mm: padding around the hint's in-plane extent, mm.
    """

    def __init__(self, segmenter: Segmenter, max_grid: int = 256, margin_mm: float = 20.0
                 ) -> None:
        self.segmenter = segmenter
        self.card = segmenter.card
        self.max_grid = max_grid
        self.margin_mm = margin_mm
        sp = float(self.card.pixel_spacing_mm) if self.card.pixel_spacing_mm else math.nan
        self.model_mm = sp if math.isfinite(sp) and sp > 0 else 0.66

    def _windows(self, slab: ImageVolume, hint_lps: F64 | None) -> list[tuple[int, int, int]]:
        """Square regions (row0, col0, side in slab pixels) to segment."""
        _, rows, cols = slab.voxels.shape
        px = float(slab.spacing_mm[:2].mean())
        side_max = int(self.max_grid * self.model_mm / px)
        if hint_lps is not None and len(hint_lps):
            ijk = slab.lps_to_ijk_points(hint_lps)
            lo = ijk[:, :2].min(axis=0) - self.margin_mm / px
            hi = ijk[:, :2].max(axis=0) + self.margin_mm / px
            side = int(min(max(hi - lo), side_max))
            side = max(side, int(96.0 / px))
            c = 0.5 * (lo + hi)
            c0 = int(np.clip(round(c[1] - side / 2), 0, max(rows - side, 0)))
            c1 = int(np.clip(round(c[0] - side / 2), 0, max(cols - side, 0)))
            return [(c0, c1, min(side, rows, cols))]
        side = min(side_max, rows, cols)
        n_r, n_c = math.ceil(rows / side), math.ceil(cols / side)
        out = []
        for a in range(n_r):
            for b in range(n_c):
                out.append((min(a * side, rows - side), min(b * side, cols - side), side))
        return out

    def segment(self, slab: ImageVolume, hint_lps: F64 | None = None) -> np.ndarray:
        """Needle probability of every voxel of the slab.

        Args:
            slab: (K, J, I) HU voxels.
            hint_lps: (N, 3) points in the slab's LPS frame the needle is near (the
                plan's path, the last needle), or None (the whole slices, tiled).

        Returns:
            (K, J, I) float32 needle probability (0 outside the regions segmented).
        """
        vox = slab.voxels
        k = vox.shape[0]
        prob = np.zeros(vox.shape, np.float32)
        px = float(slab.spacing_mm[:2].mean())
        needle = list(self.card.labels).index("needle")
        for r0, c0, side in self._windows(slab, hint_lps):
            g = int(min(self.max_grid, max(16, math.ceil(side * px / self.model_mm / 16) * 16)))
            batch = np.empty((k, 1, g, g), np.float32)
            for s in range(k):
                crop = vox[s, r0:r0 + side, c0:c0 + side].astype(np.float32)
                small = cv2.resize(crop, (g, g), interpolation=cv2.INTER_AREA
                                   if side > g else cv2.INTER_LINEAR)
                normalise(small, self.card, out=batch[s, 0])
            out = self.segmenter.backend.run(batch)
            for s in range(k):
                prob[s, r0:r0 + side, c0:c0 + side] = cv2.resize(
                    out[s, needle], (side, side), interpolation=cv2.INTER_LINEAR)
        return prob


def _line_dist(p: F64, a: F64, u: F64) -> F64:
    rel = p - a
    d: F64 = np.linalg.norm(rel - np.outer(rel @ u, u), axis=1)
    return d


def _weighted_line(p: F64, w: F64) -> tuple[F64, F64]:
    c = (p * w[:, None]).sum(axis=0) / w.sum()
    x = (p - c) * np.sqrt(w)[:, None]
    u = np.linalg.svd(x, full_matrices=False)[2][0]
    return c, u / np.linalg.norm(u)


def _exit_parameter(slab: ImageVolume, a: F64, u: F64) -> float:
    """Largest t >= 0 with a + t u inside the slab's box (voxel centres +- 0.5)."""
    ijk0 = slab.lps_to_ijk_points(a[None])[0]
    du = slab.lps_to_ijk[:3, :3] @ u
    i_n, j_n, k_n = slab.size_ijk
    hi = np.array([i_n, j_n, k_n], float) - 0.5
    t_max = math.inf
    for d in range(3):
        if abs(du[d]) < 1e-12:
            continue
        bound = hi[d] if du[d] > 0 else -0.5
        t_max = min(t_max, (bound - ijk0[d]) / du[d])
    return max(t_max, 0.0)


def fit_needle_3d(slab: ImageVolume, prob: np.ndarray, direction_hint_lps: F64 | None = None,
                  config: NeedleFitConfig | None = None) -> SlabNeedle:
    """One 3D needle line through the evidence of every slice.

    Args:
        slab: the slab (K, J, I) with its LPS geometry.
        prob: (K, J, I) needle probability.
        direction_hint_lps: (3,) the insertion direction (the plan's, or the last scan's
            axis): the tip is the end along it. Without one the hub is the end with air
            beyond it.
        config: thresholds.

    Returns:
        The needle (``found`` False with the reason when there is none).
    """
    c = config or NeedleFitConfig()
    kk = slab.voxels.shape[0]
    idx = np.argwhere(prob >= c.prob_threshold)
    if len(idx) < c.min_voxels:
        return SlabNeedle(False, message=f"no needle in the slab ({len(idx)} voxels of "
                                         "needle evidence)")
    w = prob[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float64)
    if len(idx) > c.max_candidates:
        keep = np.argsort(-w)[:c.max_candidates]
        idx, w = idx[keep], w[keep]
    pts = slab.ijk_to_lps_points(idx[:, ::-1].astype(np.float64))
    sp = slab.spacing_mm
    tol = max(1.5, 0.5 * float(sp[2]), 1.5 * float(sp[:2].max()))
    rng = np.random.default_rng(c.seed)
    best, best_score = None, -1.0
    n = len(pts)
    for _ in range(c.ransac_iterations):
        i, j = rng.integers(0, n, 2)
        d = pts[j] - pts[i]
        ln = float(np.linalg.norm(d))
        if ln < 3.0:
            continue
        u = d / ln
        score = float(w[_line_dist(pts, pts[i], u) < tol].sum())
        if score > best_score:
            best_score, best = score, (pts[i], u)
    if best is None:
        return SlabNeedle(False, message="no needle in the slab (evidence too compact for "
                                         "a line)")
    a, u = best
    inl = _line_dist(pts, a, u) < tol
    for _ in range(2):
        if inl.sum() < c.min_voxels:
            break
        a, u = _weighted_line(pts[inl], w[inl])
        inl = _line_dist(pts, a, u) < tol
    if inl.sum() < c.min_voxels:
        return SlabNeedle(False, message=f"no needle in the slab (best line has "
                                         f"{int(inl.sum())} voxels of evidence)")
    p_in, w_in, k_in = pts[inl], w[inl], idx[inl, 0]
    # Orientation: hub -> tip.
    if direction_hint_lps is not None and np.all(np.isfinite(direction_hint_lps)):
        if float(u @ direction_hint_lps) < 0:
            u = -u
    else:
        t = (p_in - a) @ u
        ends = [a + u * (t.max() + 6.0), a + u * (t.min() - 6.0)]
        hu = ndimage.map_coordinates(slab.voxels.astype(np.float32),
                                     slab.lps_to_ijk_points(np.stack(ends))[:, ::-1].T,
                                     order=1, mode="nearest")
        if hu[0] < hu[1] - 200.0:  # air beyond the "deep" end: that end is the hub
            u = -u
    t = (p_in - a) @ u
    length = float(t.max() - t.min())
    if length < c.min_length_mm:
        return SlabNeedle(False, message=f"no needle in the slab (evidence {length:.1f} mm "
                                         "long)")
    rms = float(np.sqrt(np.average(_line_dist(p_in, a, u) ** 2, weights=w_in)))
    hub = a + u * float(t.min())
    # The deepest slice with evidence, and the in-plane half-probability end in it.
    t_by_slice = {int(s): float(t[k_in == s].max()) for s in np.unique(k_in)}
    k_end = max(t_by_slice, key=lambda s: t_by_slice[s])
    t_tip = _refine_tip_t(slab, prob[k_end], k_end, a, u, t_by_slice[k_end],
                          c.prob_threshold)
    # The model may stop short of the tip where the needle is thin in a thick slice or
    # enters bone: follow the metal itself along the line (slice by slice) from there.
    t_tip = max(t_tip, _metal_end_t(slab, a, u, p_in[np.argsort(t)[len(t) // 4:]], t_tip))
    tip = a + u * t_tip
    t_exit = _exit_parameter(slab, a, u)
    beyond = t_tip >= t_exit - c.exit_tolerance_mm
    du = slab.lps_to_ijk[:3, :3] @ u
    step_mm = float(np.linalg.norm(u * (1.0 / max(abs(du[2]), 1e-9)))) if abs(du[2]) > 1e-9 \
        else math.inf
    # Along-axis uncertainty: in-plane localisation, or the slice when end-on.
    in_plane = math.sqrt(max(1e-12, 1.0 - (du[2] * sp[2]) ** 2))
    sigma = float(sp[:2].mean()) / max(in_plane, 1e-3) * 0.5
    sigma = min(sigma, float(sp[2]) / math.sqrt(12.0) * (step_mm / float(sp[2])
                                                         if math.isfinite(step_mm) else 1.0))
    crossed = len(t_by_slice)
    conf = float(np.average(w_in))
    if beyond:
        tip = a + u * min(t_tip, t_exit)
        msg = (f"tip beyond the slab: the needle leaves it at slice {k_end + 1} of {kk} "
               "going deeper; the tip was not imaged")
    else:
        msg = (f"needle in {crossed} slice{'s' if crossed != 1 else ''}, tip in slice "
               f"{k_end + 1} of {kk}")
    return SlabNeedle(True, tip, u, hub, not beyond, k_end, max(sigma, 0.2),
                      int(inl.sum()), rms, conf, crossed, msg)


def _refine_tip_t(slab: ImageVolume, prob_k: np.ndarray, k: int, a: F64, u: F64,
                  t_coarse: float, thr: float) -> float:
    """Where the probability along the line's in-plane trace in slice ``k`` falls below
    ``thr`` beyond the coarse end (parameter t along the 3D line, mm)."""
    ts = t_coarse + np.arange(-4.0, 6.0, 0.1)
    ijk = slab.lps_to_ijk_points(a + np.outer(ts, u))
    vals = ndimage.map_coordinates(prob_k, [ijk[:, 1], ijk[:, 0]], order=1, mode="constant")
    above = np.flatnonzero(vals >= thr)
    if above.size == 0:
        return t_coarse
    j = int(above.max())
    if j + 1 >= len(ts):
        return float(ts[j])
    frac = (vals[j] - thr) / max(vals[j] - vals[j + 1], 1e-6)
    return float(ts[j] + frac * (ts[j + 1] - ts[j]))


def _metal_end_t(slab: ImageVolume, a: F64, u: F64, shaft_pts: F64, t_from: float,
                 reach_mm: float = 12.0) -> float:
    """Where the metal ends along the line beyond ``t_from``: the HU on the line's trace
    (each point read in-plane in the slice it falls in) drops below half-way between the
    needle's shaft (its median HU) and the tissue beyond; ``t_from`` if it does not
    continue."""
    vox = slab.voxels
    kk = vox.shape[0]
    ijk_shaft = slab.lps_to_ijk_points(shaft_pts)
    shaft_k = np.clip(np.rint(ijk_shaft[:, 2]).astype(int), 0, kk - 1)
    shaft_hu = np.array([ndimage.map_coordinates(vox[k].astype(np.float32), [[p[1]], [p[0]]],
                                                 order=1)[0]
                         for k, p in zip(shaft_k[:40], ijk_shaft[:40], strict=False)])
    if shaft_hu.size == 0:
        return t_from
    ts = t_from + np.arange(-2.0, reach_mm, 0.2)
    ijk = slab.lps_to_ijk_points(a + np.outer(ts, u))
    ks = np.rint(ijk[:, 2]).astype(int)
    inside = (ks >= 0) & (ks < kk)
    vals = np.full(len(ts), np.nan)
    for k in np.unique(ks[inside]):
        sel = ks == k
        vals[sel] = ndimage.map_coordinates(vox[k].astype(np.float32),
                                            [ijk[sel, 1], ijk[sel, 0]], order=1,
                                            mode="nearest")
    shaft = float(np.median(shaft_hu))
    tail = vals[np.isfinite(vals)][-10:]
    if tail.size == 0:
        return t_from
    tissue = float(np.median(tail))
    if shaft - tissue < 800.0:
        return t_from  # no metal contrast to follow
    half = 0.5 * (shaft + tissue)
    j0 = int(np.searchsorted(ts, t_from))
    run = 0
    for j in range(j0, len(ts)):
        if not np.isfinite(vals[j]) or vals[j] < half:
            break
        run = j
    if run <= j0:
        return t_from
    j = run
    if j + 1 < len(ts) and np.isfinite(vals[j + 1]):
        frac = (vals[j] - half) / max(vals[j] - vals[j + 1], 1e-6)
        return float(ts[j] + frac * (ts[j + 1] - ts[j]))
    return float(ts[j])
