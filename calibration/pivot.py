"""Pivot calibration: the tip of a tracked tool from poses rotated about a fixed point.

Each pose ``tool_to_tracker_i = [R_i | t_i]`` satisfies ``R_i p_tip + t_i = p_pivot``
(tip offset ``p_tip`` in the tool frame, pivot point ``p_pivot`` in the tracker frame).
Stacking ``[R_i, -I] [p_tip; p_pivot] = -t_i`` gives one linear least-squares problem
(the "algebraic" method; Yaniv, "Which pivot calibration?", Proc. SPIE 9415, 2015, eq. 2;
also scikit-surgerycalibration ``pivot_calibration``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from calibration._checks import as_positive, as_rotations_translations
from calibration.errors import CalibrationError

__all__ = ["PivotResult", "angular_range_deg", "pivot_calibration", "tip_frame"]

_log = logging.getLogger(__name__)

#: Smallest ratio of smallest to largest singular value of the stacked system accepted.
_MIN_SINGULAR_RATIO = 1e-6


@dataclass(frozen=True, eq=False)
class PivotResult:
    """Result of :func:`pivot_calibration`.

    Attributes:
        tip_offset_mm: (3,) tool tip in the tool frame, mm (``tip_to_tool`` translation).
        pivot_point_mm: (3,) pivot point in the tracker frame, mm.
        rms_mm: RMS over poses of the 3D residual ``|R_i p_tip + t_i - p_pivot|``, mm
            (inlier poses only when RANSAC was used).
        residuals_mm: (N,) residual norm per pose (all poses), mm.
        inliers: (N,) bool, poses used in the final fit.
        angular_range_deg: largest rotation angle between any two inlier poses, degrees.
        tip_offset_std_mm: (3,) standard deviation of ``tip_offset_mm`` per axis from the
            least-squares covariance ``s^2 (A^T A)^-1`` (s^2 from the residuals), mm.
        condition_number: ratio of largest to smallest singular value of the system.
    """

    tip_offset_mm: npt.NDArray[np.float64]
    pivot_point_mm: npt.NDArray[np.float64]
    rms_mm: float
    residuals_mm: npt.NDArray[np.float64]
    inliers: npt.NDArray[np.bool_]
    angular_range_deg: float
    tip_offset_std_mm: npt.NDArray[np.float64]
    condition_number: float

    @property
    def tip_to_tool(self) -> npt.NDArray[np.float64]:
        """(4, 4) float64: the tip frame to the tool frame, from :func:`tip_frame` with the
        default axis (+z from the tool origin towards the tip)."""
        return tip_frame(self.tip_offset_mm)


def tip_frame(
    tip_offset_mm: npt.ArrayLike, axis_tool: npt.ArrayLike | None = None
) -> npt.NDArray[np.float64]:
    """The tool's tip frame as ``tip_to_tool``: origin at the tip, +z along the shaft from
    hub to tip (DESIGN.md: ``NeedleTip``), x and y completing a right-handed frame
    (rotation about the shaft is arbitrary: a needle is symmetric).

    A pivot calibration gives the tip but not the shaft. Without ``axis_tool`` the shaft
    is taken along the line from the tool origin to the tip: exact when the marker's
    origin lies on the shaft's line (a marker behind the hub), off by the angle under
    which the origin's distance from the shaft is seen from the tip otherwise; a spin
    calibration (:func:`calibration.spin_calibration`) measures the shaft instead.

    Args:
        tip_offset_mm: (3,) tip in the tool frame, mm (the pivot result).
        axis_tool: (3,) shaft direction hub -> tip in the tool frame (spin result);
            default ``tip_offset_mm`` normalised.

    Returns:
        (4, 4) float64 rigid ``tip_to_tool``.

    Raises:
        ValueError: non-finite input, a zero tip offset without an axis, a zero axis.
    """
    tip = np.asarray(tip_offset_mm, dtype=np.float64).reshape(-1)
    if tip.shape != (3,) or not np.all(np.isfinite(tip)):
        raise ValueError(f"tip_offset_mm must be 3 finite numbers, got {tip_offset_mm!r}")
    z = tip if axis_tool is None else np.asarray(axis_tool, dtype=np.float64).reshape(-1)
    if z.shape != (3,) or not np.all(np.isfinite(z)):
        raise ValueError(f"axis_tool must be 3 finite numbers, got {axis_tool!r}")
    n = float(np.linalg.norm(z))
    if n < 1e-9:
        raise ValueError("the shaft direction is undefined: give axis_tool or a non-zero tip "
                         "offset")
    z = z / n
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, np.cross(z, x), z, tip
    return m


def angular_range_deg(rotations: npt.NDArray[np.float64], max_poses: int = 1500) -> float:
    """Largest rotation angle between any two of (N, 3, 3) rotations, in degrees.

    The angle of ``R_i^T R_j`` is ``arccos((trace - 1) / 2)`` and
    ``trace(R_i^T R_j) = sum(R_i * R_j)``, so all pairs come from one (N, 9) product.
    Above ``max_poses`` an evenly spaced subset is used (bounded memory).
    """
    rots = rotations
    if len(rots) > max_poses:
        rots = rots[np.linspace(0, len(rots) - 1, max_poses).astype(int)]
    flat = rots.reshape(len(rots), 9)
    cos = np.clip((flat @ flat.T - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos.min())))


def _solve(
    rot: npt.NDArray[np.float64], trans: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Least-squares [p_tip; p_pivot] and singular values of the (3N, 6) system."""
    n = len(rot)
    a = np.zeros((3 * n, 6))
    a[:, :3] = rot.reshape(3 * n, 3)
    a[:, 3:] = np.tile(-np.eye(3), (n, 1))
    x, _, _, sv = np.linalg.lstsq(a, -trans.reshape(3 * n), rcond=None)
    sol: npt.NDArray[np.float64] = np.asarray(x, dtype=np.float64)
    return sol[:3], sol[3:], np.asarray(sv, dtype=np.float64)


def _residuals(
    rot: npt.NDArray[np.float64],
    trans: npt.NDArray[np.float64],
    tip: npt.NDArray[np.float64],
    pivot: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    return np.linalg.norm(rot @ tip + trans - pivot, axis=1)


def pivot_calibration(
    tool_to_tracker: npt.ArrayLike,
    *,
    min_poses: int = 10,
    min_angular_range_deg: float = 15.0,
    ransac_threshold_mm: float | None = None,
    rng: np.random.Generator | None = None,
    ransac_iterations: int = 200,
    ransac_sample_size: int = 4,
) -> PivotResult:
    """Tip offset and pivot point from poses of a tool pivoting about its tip.

    Args:
        tool_to_tracker: (N, 4, 4) rigid poses of the tool, tool frame to tracker frame, mm.
        min_poses: fewest poses accepted.
        min_angular_range_deg: least rotation between the two most different poses.
        ransac_threshold_mm: when given, RANSAC (Fischler and Bolles 1981) over random
            minimal-ish samples of ``ransac_sample_size`` poses; a pose is an inlier when
            its residual is below this threshold (mm). Needs ``rng``.
        rng: random generator for RANSAC sampling.
        ransac_iterations: number of RANSAC samples.
        ransac_sample_size: poses per RANSAC sample (>= 2; 2 is the minimum for 6
            unknowns, 4 is better conditioned).

    Returns:
        :class:`PivotResult`.

    Raises:
        TypeError: wrong argument types (e.g. RANSAC threshold without a Generator).
        ValueError: wrong shapes or non-rigid poses.
        CalibrationError: too few poses, too little rotation, rank-deficient system
            (e.g. rotations about a single axis only), or too few RANSAC inliers.
    """
    rot, trans = as_rotations_translations(tool_to_tracker, "tool_to_tracker")
    n = len(rot)
    if n < min_poses:
        raise CalibrationError(f"pivot calibration needs at least {min_poses} poses, got {n}")
    rng_used: np.random.Generator | None = None
    if ransac_threshold_mm is not None:
        ransac_threshold_mm = as_positive(ransac_threshold_mm, "ransac_threshold_mm")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"rng must be a numpy.random.Generator for RANSAC, got {type(rng).__name__}"
            )
        if not 2 <= ransac_sample_size <= n:
            raise ValueError(f"ransac_sample_size must be in [2, {n}], got {ransac_sample_size}")
        if ransac_iterations < 1:
            raise ValueError(f"ransac_iterations must be >= 1, got {ransac_iterations}")
        rng_used = rng

    range_deg = angular_range_deg(rot)
    if range_deg < min_angular_range_deg:
        raise CalibrationError(
            f"too little rotation for pivot calibration: angular range {range_deg:.2f} deg "
            f"< {min_angular_range_deg:.1f} deg (is the tool static?)"
        )

    inliers = np.ones(n, dtype=bool)
    if rng_used is not None and ransac_threshold_mm is not None:
        best_count = -1
        for _ in range(ransac_iterations):
            idx = rng_used.choice(n, size=ransac_sample_size, replace=False)
            tip, piv, sv = _solve(rot[idx], trans[idx])
            if sv[-1] < _MIN_SINGULAR_RATIO * sv[0]:
                continue
            mask = _residuals(rot, trans, tip, piv) < ransac_threshold_mm
            count = int(mask.sum())
            if count > best_count:
                best_count, inliers = count, mask
        if best_count < min_poses:
            raise CalibrationError(
                f"RANSAC found {max(best_count, 0)} inlier poses within "
                f"{ransac_threshold_mm} mm, fewer than the {min_poses} required"
            )
        range_deg = angular_range_deg(rot[inliers])
        if range_deg < min_angular_range_deg:
            raise CalibrationError(
                f"too little rotation among RANSAC inliers: angular range {range_deg:.2f} deg "
                f"< {min_angular_range_deg:.1f} deg"
            )
        _log.debug("pivot RANSAC: %d of %d poses are inliers", best_count, n)

    tip, piv, sv = _solve(rot[inliers], trans[inliers])
    if sv[-1] < _MIN_SINGULAR_RATIO * sv[0]:
        raise CalibrationError(
            "pivot system is rank deficient (singular values "
            f"{np.array2string(sv, precision=3)}): the rotations are about a single axis; "
            "tilt the tool in two directions"
        )
    residuals = _residuals(rot, trans, tip, piv)
    m = int(inliers.sum())
    rms = float(np.sqrt(np.mean(residuals[inliers] ** 2)))
    # Covariance of the LS estimate: s^2 (A^T A)^-1, with s^2 = SSR / (3m - 6).
    dof = max(3 * m - 6, 1)
    s2 = float(np.sum(residuals[inliers] ** 2)) / dof
    a = np.zeros((3 * m, 6))
    a[:, :3] = rot[inliers].reshape(3 * m, 3)
    a[:, 3:] = np.tile(-np.eye(3), (m, 1))
    cov = s2 * np.linalg.inv(a.T @ a)
    return PivotResult(
        tip_offset_mm=tip,
        pivot_point_mm=piv,
        rms_mm=rms,
        residuals_mm=residuals,
        inliers=inliers,
        angular_range_deg=range_deg,
        tip_offset_std_mm=np.sqrt(np.diag(cov)[:3]),
        condition_number=float(sv[0] / sv[-1]),
    )
