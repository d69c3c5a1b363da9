"""Simulated CT control slabs: a few contiguous axial slices around a steel needle.

In CT-guided spine procedures the radiologist advances the needle and takes short
control scans: a slab of 3-10 contiguous axial slices, 1-5 mm thick, centred on where
the needle tip should be. :func:`make_slab` makes one such slab from the planning CT
(:func:`guidance.data.load_real_ct`), :func:`control_scan_series` a procedure of them.

Frames (DESIGN.md): ``entry``/``tip`` are given in the planning CT's LPS mm (the needle
is placed in the anatomy). ``ct_to_scanner`` (4x4 rigid) is the patient's motion: it
maps planning-CT LPS to the scanner's LPS at the control scan, and moves anatomy and
needle alike. The slab's ``ijk_to_lps`` is in the scanner's LPS: a slab voxel at scanner
point ``p_s`` shows the planning CT at ``inv(ct_to_scanner) @ p_s``.

Slab geometry: ``i`` along +L (or -L with ``flip_i``), ``j`` along +P, ``k`` (slice
normal) along +S; ``j`` and ``k`` are rotated about the L-R axis by the gantry tilt.
The slice spacing equals the thickness (contiguous slices).

Each voxel is the mean over its slice thickness (``>= 4`` sub-planes) of the anatomy,
and the needle's covered volume fraction ``f`` (supersampled) burns in as
``(1 - f) * tissue + f * steel_hu`` clipped at 3071 HU, so a needle crossing slices at an
angle shows partial volume on several. Per slice crossed: a dark beam-hardening band
along the needle, bright/dark streaks radiating from it; then Gaussian noise. Voxels are
int16 HU in [-1024, 3071]; outside the planning CT is air (-1000 HU).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from guidance.geometry import ImageVolume

__all__ = ["SlabTruth", "control_scan_series", "make_slab", "slab_geometry"]

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]

MIN_HU = -1024
MAX_HU = 3071
STEEL_HU = 20000.0
OUTSIDE_MM = 30.0  # needle length outside the skin, beyond the entry


@dataclass(frozen=True, eq=False)
class SlabTruth:
    """Ground truth of one simulated control slab.

    Attributes:
        tip_ct_lps: (3,) true tip, planning-CT LPS mm.
        axis_ct_lps: (3,) unit entry -> tip direction, planning-CT LPS.
        tip_scanner_lps: (3,) true tip, scanner LPS mm (the slab's frame).
        axis_scanner_lps: (3,) unit entry -> tip direction, scanner LPS.
        tip_in_slab: the tip lies within the slab's thickness and in-plane field of view.
        needle: a needle was burnt in.
        ct_to_scanner: (4, 4) planning-CT LPS -> scanner LPS (patient motion).
        n_slices: slices in the slab.
        thickness_mm: slice thickness (= spacing), mm.
    """

    tip_ct_lps: F64
    axis_ct_lps: F64
    tip_scanner_lps: F64
    axis_scanner_lps: F64
    tip_in_slab: bool
    needle: bool
    ct_to_scanner: F64
    n_slices: int
    thickness_mm: float


def _vec3(v: npt.ArrayLike, name: str) -> F64:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be 3 finite numbers (LPS mm), got {v!r}")
    return a


def slab_geometry(centre_lps: npt.ArrayLike, *, n_slices: int, thickness_mm: float,
                  rows: int, cols: int, pixel_mm: float, gantry_tilt_deg: float = 0.0,
                  flip_i: bool = False) -> F64:
    """The slab's ``ijk_to_lps`` (4, 4), scanner LPS mm, centred on ``centre_lps``.

    Columns: i = +L (-L with ``flip_i``) * pixel_mm, j = +P, k = +S (* thickness_mm),
    j and k rotated about the L-R axis by ``gantry_tilt_deg``. The voxel
    ``((cols-1)/2, (rows-1)/2, (n_slices-1)/2)`` maps to ``centre_lps``.
    """
    t = math.radians(gantry_tilt_deg)
    ex = np.array([-1.0 if flip_i else 1.0, 0.0, 0.0])
    ey = np.array([0.0, math.cos(t), -math.sin(t)])
    ez = np.array([0.0, math.sin(t), math.cos(t)])
    m = np.eye(4)
    m[:3, :3] = np.stack([ex * pixel_mm, ey * pixel_mm, ez * thickness_mm], axis=1)
    half = np.array([(cols - 1) / 2, (rows - 1) / 2, (n_slices - 1) / 2])
    m[:3, 3] = _vec3(centre_lps, "centre_lps") - m[:3, :3] @ half
    return m


def _check(n_slices: int, thickness_mm: float, rows: int, cols: int, pixel_mm: float,
           diameter_mm: float, noise_hu: float, ct_to_scanner: F64) -> None:
    if not 1 <= n_slices <= 64:
        raise ValueError(f"n_slices must be 1..64, got {n_slices}")
    if not (0 < thickness_mm <= 20 and math.isfinite(thickness_mm)):
        raise ValueError(f"thickness_mm must be in (0, 20], got {thickness_mm}")
    if not (8 <= rows <= 2048 and 8 <= cols <= 2048):
        raise ValueError(f"rows and cols must be 8..2048, got {rows}x{cols}")
    if not (0 < pixel_mm <= 10 and math.isfinite(pixel_mm)):
        raise ValueError(f"pixel_mm must be in (0, 10], got {pixel_mm}")
    if not (0 < diameter_mm <= 5):
        raise ValueError(f"diameter_mm must be in (0, 5], got {diameter_mm}")
    if not (noise_hu >= 0 and math.isfinite(noise_hu)):
        raise ValueError(f"noise_hu must be >= 0, got {noise_hu}")
    r = ct_to_scanner[:3, :3]
    if (ct_to_scanner.shape != (4, 4) or not np.all(np.isfinite(ct_to_scanner))
            or not np.allclose(r @ r.T, np.eye(3), atol=1e-6)
            or not np.allclose(ct_to_scanner[3], [0, 0, 0, 1])):
        raise ValueError("ct_to_scanner must be a finite rigid 4x4 transform")


def _segment_distance(p: np.ndarray, a: F64, b: F64) -> np.ndarray:
    ab = b - a
    t = np.clip((p - a) @ ab / float(ab @ ab), 0.0, 1.0)
    return np.asarray(np.linalg.norm(p - (a + t[..., None] * ab), axis=-1))


def _sample_anatomy(ct: ImageVolume, slab_ijk_to_lps: F64, scanner_to_ct: F64,
                    shape: tuple[int, int, int], n_sub: int) -> np.ndarray:
    """Mean over ``n_sub`` sub-planes per slice of the planning CT, trilinear; float32
    (K, J, I) HU. Outside the CT: -1000."""
    n, rows, cols = shape
    # Output index (q, j, i), q = sub-plane -> slab (i, j, k) with k = (q + .5)/n_sub - .5.
    out_to_slab = np.zeros((4, 4))
    out_to_slab[0, 2] = 1.0
    out_to_slab[1, 1] = 1.0
    out_to_slab[2, 0] = 1.0 / n_sub
    out_to_slab[2, 3] = 0.5 / n_sub - 0.5
    out_to_slab[3, 3] = 1.0
    ijk_to_kji = np.zeros((4, 4))
    ijk_to_kji[0, 2] = ijk_to_kji[1, 1] = ijk_to_kji[2, 0] = ijk_to_kji[3, 3] = 1.0
    m = ijk_to_kji @ ct.lps_to_ijk @ scanner_to_ct @ slab_ijk_to_lps @ out_to_slab
    sub = ndimage.affine_transform(ct.voxels, m, output_shape=(n * n_sub, rows, cols),
                                   output=np.float32, order=1, mode="constant", cval=-1000.0,
                                   prefilter=False)
    return np.asarray(sub.reshape(n, n_sub, rows, cols).mean(axis=1, dtype=np.float32))


def _needle_fraction(slab_m: F64, shape: tuple[int, int, int], hub_s: F64, tip_s: F64,
                     radius_mm: float) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Covered volume fraction of the needle (segment hub -> tip, scanner LPS) in the
    slab's voxels, in a bounding box. Returns (box slices (k, j, i), f (box shape)) or
    None when the needle misses the slab."""
    n, rows, cols = shape
    lps_to_ijk = np.linalg.inv(slab_m)
    ends = (np.stack([hub_s, tip_s]) @ lps_to_ijk[:3, :3].T) + lps_to_ijk[:3, 3]
    sp = np.sqrt((slab_m[:3, :3] ** 2).sum(axis=0))
    pad = (radius_mm + 1.0) / sp + 1
    size = np.array([cols, rows, n])
    lo = np.maximum(np.floor(ends.min(axis=0) - pad), 0).astype(int)
    hi = np.minimum(np.ceil(ends.max(axis=0) + pad), size - 1).astype(int)
    if np.any(hi < lo):
        return None
    kk, jj, ii = np.meshgrid(np.arange(lo[2], hi[2] + 1), np.arange(lo[1], hi[1] + 1),
                             np.arange(lo[0], hi[0] + 1), indexing="ij")
    idx = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(np.float64)
    centres = idx @ slab_m[:3, :3].T + slab_m[:3, 3]
    near = _segment_distance(centres, hub_s, tip_s) <= radius_mm + 0.5 * float(np.linalg.norm(sp))
    frac = np.zeros(len(idx))
    if near.any():
        n_sub = np.maximum(4, np.ceil(sp / 0.25).astype(int))
        offs = [(np.arange(s) + 0.5) / s - 0.5 for s in n_sub]
        grid = np.stack(np.meshgrid(*offs, indexing="ij"), axis=-1).reshape(-1, 3)
        sel = np.flatnonzero(near)
        for chunk in np.array_split(sel, max(1, len(sel) // 2000)):
            sub = (idx[chunk][:, None, :] + grid[None]) @ slab_m[:3, :3].T + slab_m[:3, 3]
            frac[chunk] = (_segment_distance(sub, hub_s, tip_s) <= radius_mm).mean(axis=1)
    if not frac.any():
        return None
    box = (slice(lo[2], hi[2] + 1), slice(lo[1], hi[1] + 1), slice(lo[0], hi[0] + 1))
    return box, frac.reshape(kk.shape)


def _metal_artefacts(vox: np.ndarray, f_full: np.ndarray, axis_ij: F64, pixel_mm: float,
                     diameter_mm: float, rng: np.random.Generator) -> None:
    """Beam-hardening dark band along the needle and radiating streaks, in place, per
    slice where the needle shows (``vox``, ``f_full``: (K, J, I))."""
    n, rows, cols = vox.shape
    theta_n = float(np.arctan2(axis_ij[1], axis_ij[0]))
    amp = 200.0 * diameter_mm / 1.1
    reach = int(min(max(rows, cols), round(80.0 / pixel_mm)))
    for s in range(n):
        fs = f_full[s]
        peak = float(fs.max())
        if peak < 0.05:
            continue
        jj, ii = np.nonzero(fs > 0.02)
        w = fs[jj, ii]
        cj, ci = float((w * jj).sum() / w.sum()), float((w * ii).sum() / w.sum())
        j0, j1 = max(0, int(jj.min()) - reach), min(rows, int(jj.max()) + reach + 1)
        i0, i1 = max(0, int(ii.min()) - reach), min(cols, int(ii.max()) + reach + 1)
        gj, gi = np.mgrid[j0:j1, i0:i1]
        # Distance to the needle's footprint (not its centroid): streaks start at its edge.
        inside = fs[j0:j1, i0:i1] > 0.02
        rr = ndimage.distance_transform_edt(~inside) * pixel_mm
        theta = np.arctan2(gj - cj, gi - ci)
        scale = amp * min(1.0, peak * 2.0)
        star = np.cos(7 * (theta - theta_n) + rng.uniform(0, 2 * np.pi)) * np.exp(-rr / 12.0)
        dark = np.abs(np.cos(theta - theta_n)) ** 10 * np.exp(-rr / 30.0)
        band = scale * (0.6 * star - 1.5 * dark)
        region = vox[s, j0:j1, i0:i1]
        tissue = (region > -600) & ~inside
        region[tissue] += band[tissue].astype(np.float32)


def make_slab(
    ct: ImageVolume,
    entry_lps: npt.ArrayLike,
    tip_lps: npt.ArrayLike,
    *,
    n_slices: int = 5,
    thickness_mm: float = 3.0,
    centre_lps: npt.ArrayLike | None = None,
    rows: int = 512,
    cols: int = 512,
    pixel_mm: float | None = None,
    gantry_tilt_deg: float = 0.0,
    flip_i: bool = False,
    ct_to_scanner: np.ndarray | None = None,
    diameter_mm: float = 1.1,
    needle: bool = True,
    noise_hu: float = 12.0,
    rng: np.random.Generator | None = None,
) -> tuple[ImageVolume, SlabTruth]:
    """One control slab of ``n_slices`` contiguous axial slices with a needle.

    Args:
        ct: planning CT, HU, ``voxels[k, j, i]``, planning-CT LPS geometry.
        entry_lps, tip_lps: (3,) planning-CT LPS mm; the needle runs from
            ``OUTSIDE_MM`` (30 mm) beyond the entry (outside the skin) to the tip.
        n_slices: slices (1..64); thickness_mm: slice thickness = spacing, mm.
        centre_lps: (3,) the slab's centre in *scanner* LPS mm (where the table was
            placed); default: the true tip in scanner LPS.
        rows, cols: in-plane size, pixels; pixel_mm: in-plane spacing (default: the
            planning CT's in-plane spacing).
        gantry_tilt_deg: slice planes tilted about the L-R axis, degrees.
        flip_i: the i axis runs toward -L (a negative column direction).
        ct_to_scanner: (4, 4) rigid, planning-CT LPS -> scanner LPS (default identity).
        diameter_mm: needle outer diameter, mm.
        needle: False: anatomy only (SlabTruth still says where the needle would be).
        noise_hu: standard deviation of the Gaussian noise, HU.
        rng: random generator (streak phases, noise); default seeded 0.

    Returns:
        (slab: int16 HU ``(n_slices, rows, cols)``, scanner-LPS ``ijk_to_lps``; truth).

    Raises:
        ValueError: bad sizes, non-finite or coinciding points, a non-rigid transform.
    """
    entry = _vec3(entry_lps, "entry_lps")
    tip = _vec3(tip_lps, "tip_lps")
    length = float(np.linalg.norm(tip - entry))
    if length < 1.0:
        raise ValueError(f"entry_lps and tip_lps must be >= 1 mm apart, got {length:.2f} mm")
    c2s = np.eye(4) if ct_to_scanner is None else np.asarray(ct_to_scanner, dtype=np.float64)
    pix = float(ct.spacing_mm[0]) if pixel_mm is None else float(pixel_mm)
    _check(n_slices, thickness_mm, rows, cols, pix, diameter_mm, noise_hu, c2s)
    rng = rng if rng is not None else np.random.default_rng(0)
    axis = (tip - entry) / length
    tip_s = c2s[:3, :3] @ tip + c2s[:3, 3]
    axis_s = c2s[:3, :3] @ axis
    centre = tip_s if centre_lps is None else _vec3(centre_lps, "centre_lps")
    m = slab_geometry(centre, n_slices=n_slices, thickness_mm=thickness_mm, rows=rows,
                      cols=cols, pixel_mm=pix, gantry_tilt_deg=gantry_tilt_deg, flip_i=flip_i)
    shape = (n_slices, rows, cols)
    n_sub = max(4, math.ceil(thickness_mm / 0.75))
    vox = _sample_anatomy(ct, m, np.asarray(np.linalg.inv(c2s), dtype=np.float64), shape,
                          n_sub)

    if needle:
        hub_s = tip_s - axis_s * (length + OUTSIDE_MM)
        found = _needle_fraction(m, shape, hub_s, tip_s, 0.5 * diameter_mm)
        if found is not None:
            box, f = found
            f_full = np.zeros(shape, dtype=np.float32)
            f_full[box] = f
            # Scanner PSF: a little in-plane blooming of the metal.
            f_full[box] = ndimage.gaussian_filter(f_full[box], sigma=(0, 0.6, 0.6))
            axis_ij = np.linalg.inv(m[:3, :3]) @ axis_s
            _metal_artefacts(vox, f_full, axis_ij[:2], pix, diameter_mm, rng)
            sub = vox[box]
            fb = f_full[box]
            vox[box] = np.where(fb > 0, np.minimum((1 - fb) * sub + fb * STEEL_HU, MAX_HU),
                                sub)
    if noise_hu > 0:
        vox += rng.normal(0.0, noise_hu, size=shape).astype(np.float32)
    voxels = np.clip(np.round(vox), MIN_HU, MAX_HU).astype(np.int16)

    tip_ijk = np.linalg.inv(m) @ np.append(tip_s, 1.0)
    inside = bool(np.all(tip_ijk[:3] >= -0.5)
                  and np.all(tip_ijk[:3] <= np.array([cols, rows, n_slices]) - 0.5))
    truth = SlabTruth(tip_ct_lps=tip, axis_ct_lps=axis, tip_scanner_lps=tip_s,
                      axis_scanner_lps=axis_s, tip_in_slab=inside, needle=needle,
                      ct_to_scanner=c2s.copy(), n_slices=n_slices,
                      thickness_mm=float(thickness_mm))
    return ImageVolume(voxels, m), truth


def _deviated_axis(axis: F64, deviation_deg: float, rng: np.random.Generator) -> F64:
    """``axis`` turned by ``deviation_deg`` toward a direction perpendicular to it and as
    axial as possible (so the tip stays in the slab), side chosen by ``rng``."""
    if deviation_deg == 0.0:
        return axis
    perp = np.cross(axis, [0.0, 0.0, 1.0])
    if np.linalg.norm(perp) < 1e-6:  # a craniocaudal needle: any perpendicular
        perp = np.cross(axis, [1.0, 0.0, 0.0])
    perp /= np.linalg.norm(perp)
    if rng.random() < 0.5:
        perp = -perp
    t = math.radians(deviation_deg)
    out = math.cos(t) * axis + math.sin(t) * perp
    return np.asarray(out / np.linalg.norm(out))


def control_scan_series(
    ct: ImageVolume,
    plan_entry: npt.ArrayLike,
    plan_target: npt.ArrayLike,
    *,
    steps: int = 6,
    n_slices: int = 5,
    thickness_mm: float = 3.0,
    deviation_deg: float = 0.0,
    motion: np.ndarray | None = None,
    motion_from: int = 2,
    seed: int = 0,
    **slab_options: object,
) -> Iterator[tuple[ImageVolume, SlabTruth]]:
    """A procedure's control scans: the needle advanced along the plan in ``steps``.

    The tip's depth goes from about a third of the planned length (first scan) to the
    target (last scan), with a little operator jitter in between; ``deviation_deg``
    turns the needle away from the plan at the entry (the tip misses the target by
    ``~length * sin(deviation)``). Each slab is centred on the tip as the operator
    expects it: the true tip's planning-CT coordinates taken as scanner coordinates (the
    table does not know the patient moved), so patient motion shows as an offset.

    Args:
        ct: planning CT; plan_entry, plan_target: (3,) planning-CT LPS mm.
        steps: scans (>= 1); n_slices, thickness_mm: as :func:`make_slab`.
        deviation_deg: needle direction off the plan, degrees (0: on the plan).
        motion: (4, 4) rigid planning-CT LPS -> scanner LPS applied from scan index
            ``motion_from`` (0-based; default 2, the third scan) on; None: no motion.
        seed: the same seed, the same slabs.
        slab_options: passed to :func:`make_slab` (rows, cols, diameter_mm, noise_hu...).

    Yields:
        (slab, truth) per scan, as :func:`make_slab` returns them.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    entry = _vec3(plan_entry, "plan_entry")
    target = _vec3(plan_target, "plan_target")
    length = float(np.linalg.norm(target - entry))
    if length < 5.0:
        raise ValueError(f"plan entry and target must be >= 5 mm apart, got {length:.1f}")
    rng = np.random.default_rng([seed, 7])
    axis = _deviated_axis((target - entry) / length, deviation_deg, rng)
    fractions = np.linspace(1 / 3, 1.0, steps) if steps > 1 else np.array([1.0])
    jitter = rng.uniform(-0.03, 0.03, size=steps)
    jitter[-1] = 0.0
    fractions = np.clip(fractions + jitter, 0.1, 1.0)
    for s, frac in enumerate(fractions):
        tip = entry + axis * length * float(frac)
        c2s = motion if (motion is not None and s >= motion_from) else None
        yield make_slab(ct, entry, tip, n_slices=n_slices, thickness_mm=thickness_mm,
                        centre_lps=tip, ct_to_scanner=c2s,
                        rng=np.random.default_rng([seed, s]), **slab_options)  # type: ignore[arg-type]
