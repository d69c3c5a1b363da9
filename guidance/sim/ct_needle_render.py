"""A steel needle in a CT slab: its exact partial volume, its label, its metal artefacts.

The needle is a flat-capped cylinder. For each of 4 x 4 sub-pixel lines through the slab
the length inside it is solved in closed form (a quadratic for the cylinder, intervals
for the caps and the slab), which gives the volume fraction ``f`` per pixel
(:func:`render_needle`). The artefacts (:func:`add_streaks`) are drawn in the slice: a dark
beam-hardening band along the axis beyond the visible ends with bright fringes beside it,
star streaks from the ends (:func:`star`), and an undershoot halo around the shaft.

Pixel coordinates are (col i, row j) of a square image; plane coordinates are mm along the
slice's ``u`` and ``v`` axes from the image origin and ``w`` along its normal.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = ["PixelGrid", "add_streaks", "render_needle", "star", "to_plane"]

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class PixelGrid:
    """The pixels of a square image, as offsets from its centre, computed once.

    Attributes:
        size: image side, pixels.
        di: (size, size) float32, column offset of each pixel from the image centre.
        dj: (size, size) float32, row offset of each pixel from the image centre.
    """

    size: int
    di: F32
    dj: F32

    @classmethod

    def square(cls, size: int) -> PixelGrid:
        """The grid of a ``size`` x ``size`` image."""
        c = (size - 1) / 2.0
        jj, ii = np.mgrid[0:size, 0:size].astype(np.float32)
        return cls(size, ii - np.float32(c), jj - np.float32(c))


def to_plane(p_lps: F64, origin: F64, axes: F64, spacing: float) -> F64:
    """LPS -> (col i, row j, w mm along the normal)."""
    q = axes.T @ (p_lps - origin)
    return np.array([q[0] / spacing, q[1] / spacing, q[2]])


def _interval_len(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.clip(hi - lo, 0.0, None)


def _covered_length(
    pu: np.ndarray, pv: np.ndarray, a: F64, d: F64, length: float, radius: float, half_t: float
) -> np.ndarray:
    """Length (mm) of each line ``(pu, pv, w)``, ``|w| <= half_t``, inside a flat-capped
    cylinder from ``a`` along unit ``d`` for ``length`` mm, radius ``radius`` (plane
    coordinates, mm; w along the normal)."""
    qx, qy, qz = pu - a[0], pv - a[1], -a[2]
    qd = qx * d[0] + qy * d[1] + qz * d[2]
    # Perpendicular parts of q and of the line direction e = (0, 0, 1).
    px, py, pz = qx - qd * d[0], qy - qd * d[1], qz - qd * d[2]
    ex, ey, ez = -d[2] * d[0], -d[2] * d[1], 1.0 - d[2] * d[2]
    A = ex * ex + ey * ey + ez * ez
    B = px * ex + py * ey + pz * ez
    C = px * px + py * py + pz * pz - radius * radius
    big = 1e9
    if A < 1e-12:  # line parallel to the axis
        lo = np.where(C <= 0, -big, big)
        hi = np.where(C <= 0, big, -big)
    else:
        disc = B * B - A * C
        root = np.sqrt(np.clip(disc, 0.0, None))
        ok = disc >= 0
        lo = np.where(ok, (-B - root) / A, big)
        hi = np.where(ok, (-B + root) / A, -big)
    lo = np.maximum(lo, -half_t)
    hi = np.minimum(hi, half_t)
    if abs(d[2]) < 1e-12:  # caps: 0 <= qd + w * d_z <= length
        inside = (qd >= 0) & (qd <= length)
        lo = np.where(inside, lo, big)
    else:
        w1, w2 = -qd / d[2], (length - qd) / d[2]
        lo = np.maximum(lo, np.minimum(w1, w2))
        hi = np.minimum(hi, np.maximum(w1, w2))
    return _interval_len(lo, hi)


def render_needle(
    grid: PixelGrid,
    hub: F64,
    tip: F64,
    radius: float,
    origin: F64,
    axes: F64,
    spacing: float,
    thickness: float,
    labels: npt.NDArray[np.uint8],
) -> tuple[F32 | None, npt.NDArray[np.uint8], tuple[F64, F64] | None]:
    """The needle from ``hub`` to ``tip`` (LPS mm) in the slab of the plane ``axes``
    (3x3, columns u, v, n) through ``origin`` (pixel (0, 0), LPS).

    Returns:
        ``(metal, labels, vis)``: the steel volume fraction per pixel, (size, size)
        float32 in [0, 1] (None when no pixel holds steel); ``labels`` with the needle
        (1) added, in place; ``vis``, the visible part of the axis as two (col, row)
        points (hub side, tip side), None when not in the slab."""
    half_t = 0.5 * thickness
    a = to_plane(hub, origin, axes, spacing)
    b = to_plane(tip, origin, axes, spacing)
    a_mm = np.array([a[0] * spacing, a[1] * spacing, a[2]])
    b_mm = np.array([b[0] * spacing, b[1] * spacing, b[2]])
    length = float(np.linalg.norm(b_mm - a_mm))
    d = (b_mm - a_mm) / length
    # Axis parameter range (mm from the hub) within the slab widened by the radius.
    margin = half_t + 2.0 * radius
    if abs(d[2]) < 1e-9:
        if abs(a_mm[2]) > margin:
            return None, labels, None
        s0, s1 = 0.0, length
    else:
        s_a, s_b = (-margin - a_mm[2]) / d[2], (margin - a_mm[2]) / d[2]
        s0, s1 = max(0.0, min(s_a, s_b)), min(length, max(s_a, s_b))
        if s0 >= s1:
            return None, labels, None
    p0 = (a_mm + s0 * d)[:2] / spacing
    p1 = (a_mm + s1 * d)[:2] / spacing
    pad = radius / spacing + 2.0
    lo = np.floor(np.minimum(p0, p1) - pad).astype(int)
    hi = np.ceil(np.maximum(p0, p1) + pad).astype(int)
    if np.any(hi < 0) or np.any(lo > grid.size - 1):
        return None, labels, None  # entirely outside the image
    lo = np.clip(lo, 0, grid.size - 1)
    hi = np.clip(hi, 0, grid.size - 1)
    jj, ii = np.mgrid[lo[1] : hi[1] + 1, lo[0] : hi[0] + 1].astype(np.float64)
    # 2D distance (mm) of pixel centres to the projected visible axis.
    seg = p1 - p0
    seg_len2 = float(seg @ seg)
    if seg_len2 < 1e-12:
        t = np.zeros_like(ii)
    else:
        t = np.clip(((ii - p0[0]) * seg[0] + (jj - p0[1]) * seg[1]) / seg_len2, 0.0, 1.0)
    dist = np.hypot(ii - (p0[0] + t * seg[0]), jj - (p0[1] + t * seg[1])) * spacing
    near = dist <= radius + 0.75 * spacing
    if not near.any():
        return None, labels, None
    ni, nj = ii[near], jj[near]
    sub = (np.arange(4) + 0.5) / 4.0 - 0.5
    su, sv = np.meshgrid(sub, sub, indexing="xy")
    pu = (ni[:, None] + su.ravel()[None, :]) * spacing
    pv = (nj[:, None] + sv.ravel()[None, :]) * spacing
    cov = _covered_length(pu, pv, a_mm, d, length, radius, half_t)
    frac_vol = cov.mean(axis=1) / thickness
    footprint = (cov > 1e-6).mean(axis=1)
    metal = np.zeros((grid.size, grid.size), dtype=np.float32)
    ri, rj = ni.astype(int), nj.astype(int)
    metal[rj, ri] = frac_vol.astype(np.float32)
    labels[rj[footprint >= 0.5], ri[footprint >= 0.5]] = 1
    # Centre line where the axis itself is inside the slab.
    if abs(d[2]) < 1e-9:
        c0, c1 = (0.0, length) if abs(a_mm[2]) <= half_t else (1.0, 0.0)
    else:
        s_a, s_b = (-half_t - a_mm[2]) / d[2], (half_t - a_mm[2]) / d[2]
        c0, c1 = max(0.0, min(s_a, s_b)), min(length, max(s_a, s_b))
    if c1 >= c0:
        # One pixel per column (or row) along the major direction: an 8-connected
        # line that never takes the corner pixels the axis only grazes.
        major = max(abs(float(d[0])), abs(float(d[1])), 1e-6)
        steps = np.arange(c0, c1 + 1e-9, spacing / major)
        if len(steps) == 0 or steps[-1] < c1:
            steps = np.append(steps, c1)
        pts = (a_mm[None, :2] + steps[:, None] * d[None, :2]) / spacing
        pi_, pj_ = np.rint(pts[:, 0]).astype(int), np.rint(pts[:, 1]).astype(int)
        ok = (pi_ >= 0) & (pi_ < grid.size) & (pj_ >= 0) & (pj_ < grid.size)
        labels[pj_[ok], pi_[ok]] = 1
    if float(metal.max()) <= 0.0 and not labels.any():
        return None, labels, None
    return metal, labels, (p0, p1)


def add_streaks(
    grid: PixelGrid,
    img: F32,
    rng: np.random.Generator,
    vis: tuple[F64, F64],
    amp: float,
    spacing: float,
) -> None:
    """Metal artefacts of the visible needle part ``vis`` (two (col, row) points), of
    amplitude ``amp`` HU, added to ``img`` in place."""
    p0, p1 = vis
    seg = p1 - p0
    seg_len = float(np.linalg.norm(seg))
    di = grid.di + np.float32((grid.size - 1) / 2.0)  # absolute column
    dj = grid.dj + np.float32((grid.size - 1) / 2.0)
    sp = np.float32(spacing)
    art = np.zeros_like(img)
    if seg_len * spacing >= 2.0:
        e = seg / seg_len
        rx, ry = di - np.float32(p0[0]), dj - np.float32(p0[1])
        ex, ey = np.float32(e[0]), np.float32(e[1])
        xi = rx * ex + ry * ey  # along the needle, px
        eta = (ry * ex - rx * ey) * sp  # across it, mm
        beyond = np.maximum(np.maximum(xi - np.float32(seg_len), -xi), 0.0) * sp
        wb = np.float32(rng.uniform(0.8, 2.5))
        decay = np.exp(-beyond / np.float32(rng.uniform(15.0, 60.0)))
        band = -np.exp(-(eta * eta) / (2 * wb * wb))
        band += 0.45 * np.exp(-((np.abs(eta) - 2.5 * wb) ** 2) / (2 * wb * wb))
        art += np.float32(amp * rng.uniform(0.5, 1.2)) * band * decay
    # Star streaks from both visible ends (random angular profile, random phase).
    for end in (p1, p0):
        star(grid, art, rng, end, amp * float(rng.uniform(0.2, 0.5)), spacing)
    # Undershoot halo around the shaft.
    if seg_len > 1e-9:
        t = np.clip(((di - p0[0]) * seg[0] + (dj - p0[1]) * seg[1]) / seg_len**2, 0.0, 1.0)
        dist = np.hypot(di - (p0[0] + t * seg[0]), dj - (p0[1] + t * seg[1])) * sp
    else:
        dist = np.hypot(di - p0[0], dj - p0[1]) * sp
    art -= np.float32(amp * rng.uniform(0.0, 0.5)) * np.exp(-dist / 2.0).astype(np.float32)
    img += art


def star(
    grid: PixelGrid, art: F32, rng: np.random.Generator, centre: F64, amp: float, spacing: float
) -> None:
    """Bright/dark streaks radiating from ``centre`` (col, row), in place."""
    bins = 720
    prof = ndimage.gaussian_filter1d(rng.standard_normal(bins), 1.5, mode="wrap")
    prof /= max(float(prof.std()), 1e-6)
    prof = np.sign(prof) * np.abs(prof) ** 1.5
    di = grid.di + np.float32((grid.size - 1) / 2.0 - centre[0])
    dj = grid.dj + np.float32((grid.size - 1) / 2.0 - centre[1])
    r_px, ang = cv2.cartToPolar(di, dj)  # angle in [0, 2 pi)
    idx = (ang * np.float32(bins / (2 * np.pi))).astype(np.int32)
    np.minimum(idx, bins - 1, out=idx)
    r_mm = r_px * np.float32(spacing)
    env = np.exp(-r_mm / np.float32(rng.uniform(10.0, 50.0))) * (1.0 - np.exp(-r_mm))
    art += np.float32(amp) * prof.astype(np.float32)[idx] * env
