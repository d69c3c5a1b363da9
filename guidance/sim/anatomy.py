"""Real-CT anatomy for the fluoroscopy simulator: attenuation, vertebrae, disc target.

The CT has no disc labels: the disc centre is *derived* as the midpoint between the
vertebral-body centroids of two adjacent vertebra labels (the body taken as the anterior
40 % of each vertebra label's antero-posterior extent). The target is offset from it
posteriorly and laterally (a posterolateral disc / foraminal approach), and the entry
is where a line from the target, tilted ``approach_deg`` from the sagittal plane towards
the posterolateral side, leaves the body (first point followed by 20 mm of air).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from guidance.geometry import ImageVolume

__all__ = ["DiscApproach", "disc_approach", "hu_to_mu", "vertebra_mask_volume"]

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]


def hu_to_mu(
    hu: np.ndarray, mu_water_per_mm: float, bone_contrast: float
) -> npt.NDArray[np.float32]:
    """Linear attenuation (1/mm, float32) from Hounsfield units.

    mu = mu_water * (1 + HU / 1000), clipped at 0 (air); above 0 HU the excess is scaled
    by ``bone_contrast`` (bone attenuates relatively more at fluoroscopy energies).
    """
    h = np.asarray(hu, dtype=np.float32)
    rel = np.clip(1.0 + h / 1000.0, 0.0, None)
    excess = np.clip(h / 1000.0, 0.0, None)
    return (np.float32(mu_water_per_mm) * (rel + np.float32(bone_contrast - 1.0) * excess)).astype(
        np.float32
    )


@functools.lru_cache(maxsize=1)
def vertebra_mask_volume() -> ImageVolume:
    """uint8 volume on the CT grid: 1 inside any ``vertebrae_*`` label, else 0. Cached."""
    from guidance.data import load_real_labels, structure_names

    labels = load_real_labels()
    ids = [k for k, v in structure_names().items() if v.startswith("vertebrae_")]
    mask = np.isin(labels.voxels, ids).astype(np.uint8)
    return ImageVolume(voxels=mask, ijk_to_lps=labels.ijk_to_lps)


@dataclass(frozen=True)
class DiscApproach:
    """A planned posterolateral disc approach on the real CT (LPS mm).

    Attributes:
        disc_centre_lps: (3,) derived disc centre.
        target_lps: (3,) planned tip position.
        entry_lps: (3,) skin entry point.
    """

    disc_centre_lps: F64
    target_lps: F64
    entry_lps: F64


def _body_centroid(mask: np.ndarray, ijk_to_lps: F64) -> F64:
    idx = np.argwhere(mask)[:, ::-1].astype(np.float64)  # (i, j, k)
    lps = idx @ ijk_to_lps[:3, :3].T + ijk_to_lps[:3, 3]
    y = lps[:, 1]  # posterior coordinate: anterior = small y
    lo, hi = float(y.min()), float(y.max())
    body = lps[y <= lo + 0.4 * (hi - lo)]
    return body.mean(axis=0)


@functools.lru_cache(maxsize=8)
def disc_approach(
    upper: str,
    lower: str,
    approach_left: bool,
    approach_deg: float,
    target_posterior_mm: float,
    target_lateral_mm: float,
) -> DiscApproach:
    """Plan a posterolateral approach to the disc between two vertebrae of the real CT.

    Args:
        upper, lower: vertebra label names (e.g. ``"vertebrae_L1"``, ``"vertebrae_L2"``).
        approach_left: entry on the patient's left (+x) side.
        approach_deg: path angle from the sagittal plane, degrees.
        target_posterior_mm, target_lateral_mm: target offset from the disc centre, mm.

    Raises:
        ValueError: unknown label names, or no skin exit found along the path.
    """
    from guidance.data import load_real_ct, load_real_labels, structure_names

    names = {v: k for k, v in structure_names().items()}
    for level in (upper, lower):
        if level not in names:
            raise ValueError(f"unknown vertebra label {level!r}")
    labels = load_real_labels()
    c_up = _body_centroid(labels.voxels == names[upper], labels.ijk_to_lps)
    c_lo = _body_centroid(labels.voxels == names[lower], labels.ijk_to_lps)
    disc = 0.5 * (c_up + c_lo)
    side = 1.0 if approach_left else -1.0
    target = disc + np.array([side * target_lateral_mm, target_posterior_mm, 0.0])
    a = math.radians(approach_deg)
    out_dir = np.array([side * math.sin(a), math.cos(a), 0.0])  # towards the skin
    ct = load_real_ct()
    steps = np.arange(0.0, 400.0, 1.0)
    pts = target[None, :] + steps[:, None] * out_dir[None, :]
    ijk = ct.lps_to_ijk_points(pts)
    hu = ndimage.map_coordinates(
        ct.voxels, ijk[:, ::-1].T, order=1, cval=-1000.0, output=np.float32
    )
    air = hu < -500.0
    run = 20
    exit_idx = None
    for n in range(len(steps) - run):
        if air[n] and air[n : n + run].all():
            exit_idx = n
            break
    if exit_idx is None:
        raise ValueError(f"no skin exit found from target {target} along {out_dir}")
    entry = pts[exit_idx]
    log.info(
        "disc %s/%s centre %s, target %s, entry %s (%.1f mm path)",
        upper,
        lower,
        np.round(disc, 1),
        np.round(target, 1),
        np.round(entry, 1),
        float(np.linalg.norm(entry - target)),
    )
    return DiscApproach(disc_centre_lps=disc, target_lps=target, entry_lps=entry)
