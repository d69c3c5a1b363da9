"""Ultrasound probe calibration (``image_to_probe``) from a tracked stylus tip.

For each observation the stylus tip, known in the tracker frame, is mapped into the
probe frame through the inverse tracked probe pose, and its image position (pixel
column ``u``, row ``v``) is scaled to mm by the pixel spacing. The pairs
``(image_mm_i, probe_mm_i)`` are then registered with the closed-form rigid fit
(Arun/Umeyama, see :mod:`calibration.registration`). This is the point-based stylus
method reviewed by Mercier et al., "A review of calibration techniques for freehand 3-D
ultrasound systems", Ultrasound Med. Biol. 31(2) 2005, section "point target" (eq. 1:
``p_tracker = probe_to_tracker @ image_to_probe @ S @ [u, v, 0, 1]``).

Image frame: origin at the centre of pixel (0, 0), x along increasing column ``u``, y
along increasing row ``v``, z = x cross y (out of the image plane), mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from calibration._checks import as_array, as_points, as_rotations_translations
from calibration.errors import CalibrationError
from calibration.registration import register_points

__all__ = ["ProbeCalibrationResult", "probe_calibration"]


@dataclass(frozen=True, eq=False)
class ProbeCalibrationResult:
    """Result of :func:`probe_calibration`.

    Attributes:
        image_to_probe: (4, 4) float64 rigid transform, image frame (mm, see module
            docstring) to probe (marker) frame, mm.
        pixel_spacing_mm: (2,) spacing along u (columns) and v (rows), mm/pixel.
        rms_mm: RMS 3D residual over observations, mm.
        in_plane_rms_mm: RMS of the residual component within the image plane, mm.
        out_of_plane_rms_mm: RMS of the residual component normal to the image plane (beam
            thickness, stylus not in the plane), mm.
        residuals_mm: (N,) residual norm per observation, mm.
    """

    image_to_probe: npt.NDArray[np.float64]
    pixel_spacing_mm: npt.NDArray[np.float64]
    rms_mm: float
    in_plane_rms_mm: float
    out_of_plane_rms_mm: float
    residuals_mm: npt.NDArray[np.float64]

    @property
    def pixel_to_probe(self) -> npt.NDArray[np.float64]:
        """(4, 4) float64, pixel (u, v, 0) to probe mm, spacing included (not rigid; the
        PLUS ``ImageToProbe`` convention)."""
        return self.image_to_probe @ np.diag([*self.pixel_spacing_mm, 1.0, 1.0])


def probe_calibration(
    probe_to_tracker: npt.ArrayLike,
    stylus_tip_tracker_mm: npt.ArrayLike,
    pixels_uv: npt.ArrayLike,
    pixel_spacing_mm: npt.ArrayLike,
    *,
    min_points: int = 6,
) -> ProbeCalibrationResult:
    """``image_to_probe`` from stylus-tip observations.

    Args:
        probe_to_tracker: (N, 4, 4) rigid probe poses at each observation, mm.
        stylus_tip_tracker_mm: (N, 3) stylus tip in the tracker frame (stylus pose applied
            to its pivot-calibrated tip offset), mm.
        pixels_uv: (N, 2) tip position in the image, (column, row) pixels.
        pixel_spacing_mm: (2,) mm per pixel along u and v (both > 0).
        min_points: fewest observations accepted.

    Returns:
        :class:`ProbeCalibrationResult`.

    Raises:
        TypeError, ValueError: wrong types, shapes, or non-positive spacing.
        CalibrationError: too few observations, or image points that are collinear.
    """
    rot, trans = as_rotations_translations(probe_to_tracker, "probe_to_tracker")
    tips = as_points(stylus_tip_tracker_mm, "stylus_tip_tracker_mm", 3)
    uv = as_points(pixels_uv, "pixels_uv", 2)
    spacing = as_array(pixel_spacing_mm, "pixel_spacing_mm")
    if spacing.shape != (2,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"pixel_spacing_mm must be two positive numbers, got {spacing}")
    n = len(rot)
    if len(tips) != n or len(uv) != n:
        raise ValueError(
            f"probe_to_tracker, stylus_tip_tracker_mm and pixels_uv must have the same "
            f"length, got {n}, {len(tips)}, {len(uv)}"
        )
    if n < min_points:
        raise CalibrationError(f"probe calibration needs at least {min_points} points, got {n}")
    # Tip in the probe frame: R_i^T (p_i - t_i).
    probe_pts = np.einsum("nji,nj->ni", rot, tips - trans)
    image_pts = np.column_stack([uv * spacing, np.zeros(n)])
    try:
        reg = register_points(probe_pts, image_pts)
    except CalibrationError as e:
        raise CalibrationError(f"probe calibration: {e}") from None
    mapped = image_pts @ reg.moving_to_fixed[:3, :3].T + reg.moving_to_fixed[:3, 3]
    # Residual in image coordinates: its z component is out of plane.
    res_img = (probe_pts - mapped) @ reg.moving_to_fixed[:3, :3]
    return ProbeCalibrationResult(
        image_to_probe=reg.moving_to_fixed,
        pixel_spacing_mm=spacing.copy(),
        rms_mm=reg.fre_mm,
        in_plane_rms_mm=float(np.sqrt(np.mean(np.sum(res_img[:, :2] ** 2, axis=1)))),
        out_of_plane_rms_mm=float(np.sqrt(np.mean(res_img[:, 2] ** 2))),
        residuals_mm=reg.residuals_mm,
    )
