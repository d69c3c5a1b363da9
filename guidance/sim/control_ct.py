"""Simulated control CT: a metal needle burnt into a real CT, with simple streak artefacts.

The needle is a cylinder of ``diameter_mm`` from ``tip_lps`` back through ``entry_lps``
and ``outside_mm`` beyond it (the part outside the skin). Each voxel's covered fraction
``f`` is estimated by supersampling (partial volume). Steel attenuates far more than the
HU scale holds, so the voxel value is ``(1 - f) * tissue + f * steel_hu`` clipped to
``max_hu`` (3071, the top of the 12-bit CT scale): thin needles in thick slices still
saturate, as real ones do. Streaks: per axial slice crossed by the needle, alternating
bright/dark bands radiating from the needle, decaying with distance, with a random phase
from ``rng`` (never above ``streak_hu``, so they cannot pass for metal).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt

from guidance.geometry import RAS_TO_LPS, ImageVolume

__all__ = ["insert_needle", "write_control_ct"]

log = logging.getLogger(__name__)


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip((p - a) @ ab / float(ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


def insert_needle(
    ct: ImageVolume,
    entry_lps: npt.ArrayLike,
    tip_lps: npt.ArrayLike,
    *,
    diameter_mm: float = 1.1,
    steel_hu: float = 20000.0,
    max_hu: float = 3071.0,
    outside_mm: float = 30.0,
    streak_hu: float = 150.0,
    rng: np.random.Generator | None = None,
) -> ImageVolume:
    """Return a copy of ``ct`` with a needle from ``entry_lps`` (and beyond) to ``tip_lps``.

    Args:
        ct: HU volume ``[k, j, i]``.
        entry_lps, tip_lps: (3,) LPS mm; the needle points entry -> tip.
        diameter_mm: needle outer diameter (1.1 mm ~ 19 G, 0.9 ~ 20 G, 1.3 ~ 18 G).
        steel_hu: HU a voxel fully filled with steel would have before clipping.
        max_hu: scanner's top value.
        outside_mm: needle length beyond the entry (outside the body).
        streak_hu: amplitude of the streaks (0: none).
        rng: random generator for the streak phases (default: seeded 0).

    Returns:
        New ImageVolume (int16 if the input was), same geometry.

    Raises:
        ValueError: bad diameter, coinciding points, points not finite.
    """
    if not diameter_mm > 0:
        raise ValueError(f"diameter_mm must be > 0, got {diameter_mm}")
    entry = np.asarray(entry_lps, dtype=np.float64).reshape(3)
    tip = np.asarray(tip_lps, dtype=np.float64).reshape(3)
    if not (np.all(np.isfinite(entry)) and np.all(np.isfinite(tip))):
        raise ValueError("entry_lps and tip_lps must be finite")
    length = float(np.linalg.norm(tip - entry))
    if length < 1.0:
        raise ValueError(f"entry_lps and tip_lps must be >= 1 mm apart, got {length:.2f}")
    rng = rng or np.random.default_rng(0)
    axis = (tip - entry) / length
    hub = entry - axis * outside_mm
    r = 0.5 * diameter_mm
    sp = ct.spacing_mm
    ends = ct.lps_to_ijk_points(np.stack([hub, tip]))
    pad = (r + 2.0) / sp + 1
    size = np.array(ct.size_ijk)
    lo = np.clip(np.floor(ends.min(axis=0) - pad), 0, size - 1).astype(int)
    hi = np.clip(np.ceil(ends.max(axis=0) + pad), 0, size - 1).astype(int)
    kk, jj, ii = np.meshgrid(np.arange(lo[2], hi[2] + 1), np.arange(lo[1], hi[1] + 1),
                             np.arange(lo[0], hi[0] + 1), indexing="ij")
    idx = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(np.float64)
    centres = ct.ijk_to_lps_points(idx)
    half_diag = 0.5 * float(np.linalg.norm(sp))
    near = _segment_distance(centres, hub, tip) <= r + half_diag
    # Supersample the voxels near the needle: 4 x 4 in-plane, more along thick axes.
    n_sub = np.maximum(4, np.ceil(sp / 0.25).astype(int))
    offs = [(np.arange(n) + 0.5) / n - 0.5 for n in n_sub]
    grid = np.stack(np.meshgrid(*offs, indexing="ij"), axis=-1).reshape(-1, 3)
    sub_ijk = idx[near][:, None, :] + grid[None, :, :]
    sub_lps = sub_ijk @ ct.ijk_to_lps[:3, :3].T + ct.ijk_to_lps[:3, 3]
    frac = np.zeros(len(idx))
    frac[near] = (_segment_distance(sub_lps, hub, tip) <= r).mean(axis=1)

    out = ct.voxels.astype(np.float32, copy=True)
    box = out[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
    f = frac.reshape(box.shape)
    if streak_hu > 0:
        _add_streaks(box, f, idx.reshape(*box.shape, 3), ct, axis, streak_hu, rng)
    burnt = np.minimum((1 - f) * box + f * steel_hu, max_hu)
    out[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = np.where(f > 0, burnt, box)
    if np.issubdtype(ct.voxels.dtype, np.integer):
        info = np.iinfo(ct.voxels.dtype)
        voxels = np.clip(np.round(out), info.min, info.max).astype(ct.voxels.dtype)
    else:
        voxels = out.astype(ct.voxels.dtype)
    log.info("needle burnt: %d voxels touched, tip %s", int((frac > 0).sum()), tip.round(1))
    return ImageVolume(voxels, ct.ijk_to_lps.copy())


def _add_streaks(box: np.ndarray, f: np.ndarray, idx: np.ndarray, ct: ImageVolume,
                 axis: np.ndarray, amp: float, rng: np.random.Generator) -> None:
    """Bright/dark bands radiating from the needle in each slice it crosses (in place)."""
    sp = ct.spacing_mm
    theta_needle = float(np.arctan2(axis[1], axis[0]))
    for s in range(box.shape[0]):
        fs = f[s]
        if fs.max() < 0.2:
            continue
        w = fs / fs.sum()
        ci = float((w * idx[s, :, :, 0]).sum())
        cj = float((w * idx[s, :, :, 1]).sum())
        di = (idx[s, :, :, 0] - ci) * sp[0]
        dj = (idx[s, :, :, 1] - cj) * sp[1]
        rr = np.hypot(di, dj)
        theta = np.arctan2(dj, di)
        phase = rng.uniform(0, 2 * np.pi)
        band = np.cos(6 * (theta - theta_needle) + phase) * np.exp(-rr / 15.0)
        # Dark streaks along the needle's own direction (photon starvation).
        band -= 0.8 * np.abs(np.cos(theta - theta_needle)) ** 8 * np.exp(-rr / 25.0)
        tissue = (box[s] > -500) & (fs == 0)
        box[s] = np.where(tissue, np.minimum(box[s] + amp * band, np.maximum(box[s], 2000.0)),
                          box[s])


def write_control_ct(volume: ImageVolume, path: str | Path) -> Path:
    """Write a control CT: ``*.nii``/``*.nii.gz`` as NIfTI (LPS -> RAS here), anything else
    as a DICOM series folder. Returns the path written."""
    p = Path(path)
    if p.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        affine = RAS_TO_LPS @ volume.ijk_to_lps  # LPS -> RAS (the flip is its own inverse)
        img = nib.Nifti1Image(np.transpose(volume.voxels, (2, 1, 0)), affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        nib.save(img, str(p))
        return p
    from guidance.io.dicom_write import write_dicom_series

    # Below -1024 HU (outside the reconstruction circle: -2048 on many scanners) the
    # stored values need a lower intercept to stay unsigned.
    intercept = min(-1024.0, float(np.floor(np.min(volume.voxels))))
    write_dicom_series(volume, p, description="guidance simulated control CT",
                       rescale_intercept=intercept)
    return p
