"""Paired-point rigid registration and its expected target registration error.

The rotation is the closed-form SVD solution (Arun, Huang and Blostein, IEEE TPAMI 9(5)
1987; Horn 1987), with Umeyama's correction (IEEE TPAMI 13(4) 1991, eq. 39-43) so that
the result is never a reflection, including for coplanar fiducials.

The expected TRE follows Fitzpatrick, West and Maurer, "Predicting error in rigid-body
point-based registration", IEEE TMI 17(5) 1998, eq. 46:
``<TRE^2(r)> ~= <FLE^2>/N (1 + 1/3 sum_k d_k^2 / f_k^2)``, where ``d_k`` is the distance of
the target from principal axis ``k`` of the fiducial configuration and ``f_k`` the RMS
distance of the fiducials from that axis; and eq. 10, ``<FRE^2> ~= (1 - 2/N) <FLE^2>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from calibration._checks import as_points, as_positive
from calibration.errors import CalibrationError

__all__ = [
    "RegistrationResult",
    "expected_fre",
    "expected_tre",
    "fle_from_fre",
    "register_points",
]

#: Second singular value / first singular value of the centred fiducials below which
#: the configuration is called collinear.
MIN_NONCOLLINEARITY = 1e-3


@dataclass(frozen=True, eq=False)
class RegistrationResult:
    """Result of :func:`register_points`.

    Attributes:
        moving_to_fixed: (4, 4) float64 rigid transform, moving frame to fixed frame, mm.
        fre_mm: fiducial registration error, RMS over fiducials of the 3D residual, mm.
        residuals_mm: (N,) residual norm per fiducial after registration, mm.
        fle_mm: RMS 3D fiducial localisation error used for the TRE prediction, mm.
        fle_estimated: True when ``fle_mm`` was estimated from FRE (eq. 10 of
            Fitzpatrick et al.) rather than given.
        targets_fixed_mm: (M, 3) targets in the fixed frame, mm (M may be 0).
        expected_tre_mm: (M,) predicted RMS TRE at each target, mm.
    """

    moving_to_fixed: npt.NDArray[np.float64]
    fre_mm: float
    residuals_mm: npt.NDArray[np.float64]
    fle_mm: float
    fle_estimated: bool
    targets_fixed_mm: npt.NDArray[np.float64]
    expected_tre_mm: npt.NDArray[np.float64]


def _check_not_collinear(points: npt.NDArray[np.float64], name: str) -> None:
    sv = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    ratio = float(sv[1] / sv[0]) if sv[0] > 0 else 0.0
    if ratio < MIN_NONCOLLINEARITY:
        spread = sv[1] / np.sqrt(len(points))
        raise CalibrationError(
            f"{name} are collinear (RMS spread off their line {spread:.3g} mm, singular "
            f"value ratio {ratio:.2e} < {MIN_NONCOLLINEARITY:.0e}); at least 3 non-collinear "
            "fiducials are needed"
        )


def _rigid_fit(
    moving: npt.NDArray[np.float64], fixed: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    mc, fc = moving.mean(axis=0), fixed.mean(axis=0)
    h = (moving - mc).T @ (fixed - fc)  # cross-covariance, Arun eq. 11
    u, _, vt = np.linalg.svd(h)
    # Umeyama's sign matrix: force det(R) = +1 (a reflection is never returned).
    s = np.diag([1.0, 1.0, float(np.sign(np.linalg.det(vt.T @ u.T))) or 1.0])
    rot = vt.T @ s @ u.T
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = fc - rot @ mc
    return out


def expected_fre(fle_mm: float, n_fiducials: int) -> float:
    """Expected RMS FRE for RMS FLE ``fle_mm`` and N fiducials (Fitzpatrick 1998 eq. 10)."""
    return float(fle_mm * np.sqrt(max(1.0 - 2.0 / n_fiducials, 0.0)))


def fle_from_fre(fre_mm: float, n_fiducials: int) -> float:
    """RMS FLE estimated from a measured FRE by inverting eq. 10 (needs N >= 3)."""
    if n_fiducials < 3:
        raise ValueError(f"n_fiducials must be >= 3, got {n_fiducials}")
    return float(fre_mm / np.sqrt(1.0 - 2.0 / n_fiducials))


def expected_tre(
    fiducials_mm: npt.ArrayLike, targets_mm: npt.ArrayLike, fle_mm: float
) -> npt.NDArray[np.float64]:
    """Predicted RMS TRE at each target (Fitzpatrick, West and Maurer 1998, eq. 46).

    Args:
        fiducials_mm: (N, 3) fiducial positions (in the frame the targets are given in), mm.
        targets_mm: (M, 3) target positions, mm.
        fle_mm: RMS 3D fiducial localisation error, mm (isotropic, independent).

    Returns:
        (M,) expected RMS TRE, mm.

    Raises:
        CalibrationError: fewer than 3 or collinear fiducials.
    """
    fid = as_points(fiducials_mm, "fiducials_mm", 3)
    tgt = as_points(targets_mm, "targets_mm", 3)
    fle = as_positive(fle_mm, "fle_mm", allow_zero=True)
    if len(fid) < 3:
        raise CalibrationError(f"expected TRE needs at least 3 fiducials, got {len(fid)}")
    _check_not_collinear(fid, "fiducials")
    centroid = fid.mean(axis=0)
    centred = fid - centroid
    _, _, vt = np.linalg.svd(centred)
    axes = vt  # rows: principal axes of the fiducial configuration
    n = len(fid)
    # Squared distance from principal axis k = |x|^2 - (x . a_k)^2.
    fid_proj = centred @ axes.T
    fid_sq = np.sum(centred**2, axis=1)[:, None] - fid_proj**2
    f2 = fid_sq.mean(axis=0)  # f_k^2, RMS distance of fiducials from axis k, squared
    tc = tgt - centroid
    tgt_proj = tc @ axes.T
    d2 = np.sum(tc**2, axis=1)[:, None] - tgt_proj**2
    tre2 = fle**2 / n * (1.0 + np.sum(d2 / f2, axis=1) / 3.0)
    return np.sqrt(tre2)


def register_points(
    fixed_mm: npt.ArrayLike,
    moving_mm: npt.ArrayLike,
    *,
    targets_mm: npt.ArrayLike | None = None,
    fle_mm: float | None = None,
) -> RegistrationResult:
    """Rigid ``moving_to_fixed`` minimising the squared distances of paired fiducials.

    Args:
        fixed_mm: (N, 3) fiducials in the fixed frame (e.g. CT, LPS mm).
        moving_mm: (N, 3) the same fiducials in the moving frame (e.g. tracker), mm.
        targets_mm: optional (M, 3) targets in the fixed frame for the TRE prediction.
        fle_mm: RMS 3D fiducial localisation error, mm. When omitted it is estimated from
            the FRE (eq. 10; noisy for few fiducials; needs N >= 4 to be meaningful).

    Returns:
        :class:`RegistrationResult`.

    Raises:
        TypeError, ValueError: wrong types or shapes, different point counts.
        CalibrationError: fewer than 3 fiducials or collinear fiducials (in either set).
    """
    fixed = as_points(fixed_mm, "fixed_mm", 3)
    moving = as_points(moving_mm, "moving_mm", 3)
    if len(fixed) != len(moving):
        raise ValueError(
            f"fixed_mm and moving_mm must have the same number of points, got "
            f"{len(fixed)} and {len(moving)}"
        )
    n = len(fixed)
    if n < 3:
        raise CalibrationError(f"registration needs at least 3 fiducials, got {n}")
    _check_not_collinear(fixed, "fixed fiducials")
    _check_not_collinear(moving, "moving fiducials")
    tgt = np.zeros((0, 3)) if targets_mm is None else as_points(targets_mm, "targets_mm", 3)
    m2f = _rigid_fit(moving, fixed)
    residuals = np.linalg.norm(moving @ m2f[:3, :3].T + m2f[:3, 3] - fixed, axis=1)
    fre = float(np.sqrt(np.mean(residuals**2)))
    if fle_mm is None:
        fle, estimated = fle_from_fre(fre, n), True
    else:
        fle, estimated = as_positive(fle_mm, "fle_mm", allow_zero=True), False
    tre = expected_tre(fixed, tgt, fle) if len(tgt) else np.zeros(0)
    return RegistrationResult(
        moving_to_fixed=m2f,
        fre_mm=fre,
        residuals_mm=residuals,
        fle_mm=fle,
        fle_estimated=estimated,
        targets_fixed_mm=tgt,
        expected_tre_mm=tre,
    )
