"""The patient's rigid motion between the planning CT and a control slab.

SimpleITK (ITK's registration framework, maintained, binary wheels for every platform,
the library 3D Slicer's own rigid registration builds on) registers the slab (fixed: its
bone voxels, the needle and its streaks masked out) to the planning CT (moving: a crop
around the slab) with a rigid ``Euler3DTransform``, mean squares of HU (same scanner,
same units), two resolutions, regular-step gradient descent with scales from physical
shifts, initialised at the last motion found (identity for the first scan). ITK's
transform maps fixed points to moving points: it is ``slab_to_ct`` directly.

A result is refused (``ok`` False, with the reason) when the slab has too little bone,
the optimiser did not converge, the residual stays high, or the motion is implausible for
a patient on the table (> 40 mm or > 15 degrees).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from guidance.ctscan.result import PatientMotion
from guidance.geometry import ImageVolume
from guidance.io.config_schema import check_fields, require_order, setting

__all__ = ["RegistrationConfig", "register_slab"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class RegistrationConfig:
    """Settings of the slab -> planning CT registration (the ``ct_scan.registration``
    keys); each field documents itself."""

    bone_hu: float = setting(
        200.0, "voxels at or above this (and below metal_hu) drive the metric", unit="HU",
        ge=-1024, le=3000)
    metal_hu: float = setting(
        2200.0, "the needle: voxels at or above are masked out with metal_pad_mm",
        unit="HU", ge=0, le=10000)
    metal_pad_mm: float = setting(4.0, "padding around metal masked out (streaks)",
                                  unit="mm", ge=0, le=50)
    min_bone_voxels: int = setting(400, "fewer bone voxels than this: not registrable",
                                   ge=1, le=10_000_000)
    sampling: float = setting(0.15, "fraction of the mask's voxels sampled per iteration",
                              gt=0, le=1)
    iterations: int = setting(60, "optimiser iterations per level", ge=1, le=10_000)
    crop_pad_mm: float = setting(
        25.0, "the planning CT is cropped to the registered region's box plus this (the "
              "largest motion found from the initial one)", unit="mm", ge=0, le=200)
    roi_half_mm: float = setting(
        60.0, "the registered region: the slab within this of the plan's path in-plane",
        unit="mm", gt=0, le=500)
    max_rms_hu: float = setting(260.0, "residual above this: failed", unit="HU", gt=0,
                                le=5000)
    max_translation_mm: float = setting(
        40.0, "larger motions are implausible for a patient on the table: failed",
        unit="mm", gt=0, le=500)
    max_rotation_deg: float = setting(
        15.0, "larger rotations are implausible: failed", unit="deg", gt=0, le=180)
    seed: int = setting(7, "the sampler's seed (reproducible)", ge=0, le=2**31 - 1)

    def __post_init__(self) -> None:
        check_fields(self, "ct_scan.registration")
        require_order(self, "ct_scan.registration", "bone_hu", "metal_hu")


def _sitk_image(vol: ImageVolume, voxels: np.ndarray) -> object:
    import SimpleITK as sitk  # noqa: N813

    img = sitk.GetImageFromArray(voxels)
    m = vol.ijk_to_lps
    sp = np.linalg.norm(m[:3, :3], axis=0)
    img.SetSpacing([float(v) for v in sp])
    img.SetOrigin([float(v) for v in m[:3, 3]])
    img.SetDirection([float(v) for v in (m[:3, :3] / sp).ravel()])
    return img


def _crop(ct: ImageVolume, slab: ImageVolume, pad_mm: float) -> ImageVolume:
    i, j, k = slab.size_ijk
    corners = np.array([[a, b, c] for a in (0, i - 1) for b in (0, j - 1) for c in (0, k - 1)],
                       float)
    ijk = ct.lps_to_ijk_points(slab.ijk_to_lps_points(corners))
    pad = pad_mm / ct.spacing_mm
    size = np.array(ct.size_ijk)
    lo = np.clip(np.floor(ijk.min(axis=0) - pad), 0, size - 1).astype(int)
    hi = np.clip(np.ceil(ijk.max(axis=0) + pad), 0, size - 1).astype(int)
    if np.any(hi <= lo):
        raise ValueError("the slab lies outside the planning CT")
    shift = np.eye(4)
    shift[:3, 3] = lo
    return ImageVolume(ct.voxels[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1],
                       ct.ijk_to_lps @ shift)


def _roi(slab: ImageVolume, roi_lps: F64 | None, half_mm: float) -> ImageVolume:
    """The slab cut in-plane to a square of ``2 half_mm`` around the ROI's centre."""
    _, rows, cols = slab.voxels.shape
    if roi_lps is not None and len(roi_lps):
        c = slab.lps_to_ijk_points(np.asarray(roi_lps, float)).mean(axis=0)
    else:
        c = np.array([(cols - 1) / 2, (rows - 1) / 2, 0.0])
    h = half_mm / slab.spacing_mm[:2]
    i0, i1 = int(np.clip(c[0] - h[0], 0, cols - 16)), int(np.clip(c[0] + h[0], 16, cols))
    j0, j1 = int(np.clip(c[1] - h[1], 0, rows - 16)), int(np.clip(c[1] + h[1], 16, rows))
    shift = np.eye(4)
    shift[:2, 3] = [i0, j0]
    return ImageVolume(slab.voxels[:, j0:j1, i0:i1], slab.ijk_to_lps @ shift)


def _halve(vol: ImageVolume, vox: np.ndarray) -> tuple[ImageVolume, np.ndarray]:
    """(K, J, I) float32 voxels averaged 2 x 2 in-plane, with the matching geometry."""
    k, j, i = vox.shape
    j2, i2 = j // 2, i // 2
    out = vox[:, :2 * j2, :2 * i2].reshape(k, j2, 2, i2, 2).mean(axis=(2, 4), dtype=np.float32)
    m = vol.ijk_to_lps.copy()
    m[:3, 3] = vol.ijk_to_lps_points([[0.5, 0.5, 0.0]])[0]
    m[:3, :2] *= 2.0
    return ImageVolume(np.zeros((1, 1, 1), np.int8), m), np.ascontiguousarray(out)


def _motion_of(slab_to_ct: F64, centre: F64) -> tuple[float, float]:
    moved = slab_to_ct[:3, :3] @ centre + slab_to_ct[:3, 3]
    trans = float(np.linalg.norm(moved - centre))
    cos = (float(np.trace(slab_to_ct[:3, :3])) - 1.0) / 2.0
    return trans, math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def register_slab(slab: ImageVolume, planning_ct: ImageVolume,
                  initial_slab_to_ct: F64 | None = None,
                  config: RegistrationConfig | None = None,
                  roi_lps: F64 | None = None) -> PatientMotion:
    """Rigid motion of the patient: slab (scanner LPS) -> planning CT (LPS).

    Args:
        slab: the control slab, (K, J, I) HU.
        planning_ct: the planning CT, HU.
        initial_slab_to_ct: (4, 4) start (the last motion found), identity if None.
        config: settings.
        roi_lps: (N, 3) points (slab LPS) whose in-plane centre the registered region
            is centred on (the plan's path in the slab); None: the slab's centre.

    Returns:
        The motion; ``ok`` False with the reason when it cannot be trusted (the
        transform is then the initial one).
    """
    import SimpleITK as sitk  # noqa: N813

    c = config or RegistrationConfig()
    t0 = time.perf_counter()
    init = np.eye(4) if initial_slab_to_ct is None else np.asarray(initial_slab_to_ct, float)
    method = ("SimpleITK Euler3D rigid, mean squares on bone (HU >= "
              f"{c.bone_hu:g}), in-plane pixels halved, initialised at the last motion")

    def refused(reason: str, metric: float = math.nan, it: int = 0) -> PatientMotion:
        tr, rot = _motion_of(init, centre)
        return PatientMotion(init, tr, rot, False, reason, metric, it,
                             (time.perf_counter() - t0) * 1e3, method)

    slab = _roi(slab, roi_lps, c.roi_half_mm)
    i, j, k = slab.size_ijk
    centre = slab.ijk_to_lps_points([[(i - 1) / 2, (j - 1) / 2, (k - 1) / 2]])[0]
    vox = slab.voxels.astype(np.float32)
    metal = vox >= c.metal_hu
    bone = (vox >= c.bone_hu) & ~metal
    if metal.any():
        px = float(slab.spacing_mm[:2].mean())
        r = max(1, round(c.metal_pad_mm / px))
        struct = np.zeros((1, 2 * r + 1, 2 * r + 1), bool)
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        struct[0] = yy ** 2 + xx ** 2 <= r * r
        bone &= ~ndimage.binary_dilation(metal, struct)
    n_bone = int(bone.sum())
    if n_bone < c.min_bone_voxels:
        return refused(f"registration not possible: {n_bone} bone voxels in the slab "
                       f"(< {c.min_bone_voxels})")
    try:
        moving_vol = _crop(planning_ct, slab, c.crop_pad_mm)
    except ValueError as e:
        return refused(f"registration not possible: {e}")
    # One level on images halved in-plane (area averaging: the smoothing a pyramid
    # would do, at a fraction of its cost).
    f_vol, f_vox = _halve(slab, np.clip(vox, -200.0, 1500.0))
    m_vol, m_vox = _halve(moving_vol, np.clip(moving_vol.voxels.astype(np.float32),
                                               -200.0, 1500.0))
    fixed = _sitk_image(f_vol, f_vox)
    moving = _sitk_image(m_vol, m_vox)
    _, b_vox = _halve(slab, bone.astype(np.float32))
    mask = _sitk_image(f_vol, (b_vox >= 0.5).astype(np.uint8))
    tx = sitk.Euler3DTransform()
    tx.SetCenter([float(v) for v in centre])
    tx.SetMatrix([float(v) for v in init[:3, :3].ravel()], 1e-4)
    # Affine with centre c: x -> R (x - c) + c + t  ==  R x + (c - R c + t).
    tx.SetTranslation([float(v) for v in init[:3, 3] - centre + init[:3, :3] @ centre])
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMeanSquares()
    reg.SetMetricFixedMask(mask)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(c.sampling, c.seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=0.02, numberOfIterations=c.iterations,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([1])
    reg.SetSmoothingSigmasPerLevel([0.0])
    reg.SetInitialTransform(tx, inPlace=True)
    try:
        reg.Execute(fixed, moving)
    except RuntimeError as e:
        return refused(f"registration failed: {str(e).strip().splitlines()[-1][:120]}")
    metric = float(reg.GetMetricValue())
    it = int(reg.GetOptimizerIteration())
    rmat = np.array(tx.GetMatrix()).reshape(3, 3)
    t = np.array(tx.GetTranslation())
    cen = np.array(tx.GetCenter())
    found = np.eye(4)
    found[:3, :3] = rmat
    found[:3, 3] = cen + t - rmat @ cen
    trans, rot = _motion_of(found, centre)
    ms = (time.perf_counter() - t0) * 1e3
    rms = math.sqrt(max(metric, 0.0))
    reason = ""
    if not math.isfinite(metric) or rms > c.max_rms_hu:
        reason = (f"registration ambiguous: residual {rms:.0f} HU RMS on bone (limit "
                  f"{c.max_rms_hu:g})")
    elif trans > c.max_translation_mm or rot > c.max_rotation_deg:
        reason = (f"registration implausible: {trans:.1f} mm / {rot:.1f} deg (limits "
                  f"{c.max_translation_mm:g} mm / {c.max_rotation_deg:g} deg)")
    if reason:
        tr0, rot0 = _motion_of(init, centre)
        return PatientMotion(init, tr0, rot0, False, reason, metric, it, ms, method)
    return PatientMotion(found, trans, rot, True, "", metric, it, ms, method)
