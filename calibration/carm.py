"""C-arm (X-ray) projection calibration from known 3D fiducials and their 2D detections.

1. Direct linear transform with Hartley normalisation (Hartley and Zisserman, Multiple
   View Geometry, 2nd ed. 2004, Algorithm 7.1: normalise, DLT, denormalise).
2. Decomposition ``P = K [R | t]`` by RQ of the left 3x3 block (H&Z section 6.2.4).
3. Non-linear refinement of the 11 parameters (fx, fy, skew, cx, cy, rotation vector,
   translation) minimising the geometric reprojection error (H&Z Algorithm 7.1 (iii))
   with ``scipy.optimize.least_squares``.

Conventions: ``x ~ P [X; 1]`` with ``X`` in the fiducial (phantom) frame, mm, and ``x``
in pixels (u = column, v = row). The camera frame has its origin at the X-ray source,
z towards the detector (points in front have positive depth). ``fx < 0`` means a
mirrored image (flat-panel read-out flipped), which X-ray systems can produce.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.linalg
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from calibration._checks import as_points
from calibration.errors import CalibrationError

__all__ = ["CArmResult", "carm_calibration", "decompose_projection", "project"]

#: Smallest singular value / largest of the centred 3D points; below = coplanar.
MIN_NONPLANARITY = 1e-3


@dataclass(frozen=True, eq=False)
class CArmResult:
    """Result of :func:`carm_calibration`.

    Attributes:
        projection: (3, 4) float64 ``P = K [R | t]``, phantom mm to pixels (homogeneous),
            scaled so that ``P[2, :3]`` has unit norm.
        intrinsics: (3, 3) float64 ``K`` (pixels), ``K[2, 2] = 1``.
        phantom_to_camera: (4, 4) float64 rigid ``[R | t]``, phantom frame to camera
            (source) frame, mm.
        source_position_mm: (3,) X-ray source (camera centre) in the phantom frame, mm.
        reprojection_rms_px: RMS over points of the 2D reprojection distance, pixels.
        residuals_px: (N,) reprojection distance per point, pixels.
        dlt_reprojection_rms_px: the same for the linear (DLT) estimate, before refinement.
    """

    projection: npt.NDArray[np.float64]
    intrinsics: npt.NDArray[np.float64]
    phantom_to_camera: npt.NDArray[np.float64]
    source_position_mm: npt.NDArray[np.float64]
    reprojection_rms_px: float
    residuals_px: npt.NDArray[np.float64]
    dlt_reprojection_rms_px: float


def project(
    projection: npt.NDArray[np.float64], points_mm: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """(N, 2) pixels of (N, 3) points under a (3, 4) projection."""
    h = points_mm @ projection[:, :3].T + projection[:, 3]
    return h[:, :2] / h[:, 2:3]


def _normaliser(points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Similarity moving the centroid to 0 and the mean distance to sqrt(dim) (H&Z 4.4.4)."""
    dim = points.shape[1]
    c = points.mean(axis=0)
    mean_dist = float(np.mean(np.linalg.norm(points - c, axis=1)))
    s = np.sqrt(dim) / mean_dist
    t = np.eye(dim + 1)
    t[:dim, :dim] *= s
    t[:dim, dim] = -s * c
    return t


def _dlt(
    points: npt.NDArray[np.float64], pixels: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    t3, t2 = _normaliser(points), _normaliser(pixels)
    xn = points @ t3[:3, :3].T + t3[:3, 3]
    un = pixels @ t2[:2, :2].T + t2[:2, 2]
    n = len(points)
    xh = np.column_stack([xn, np.ones(n)])
    a = np.zeros((2 * n, 12))
    # H&Z eq. 7.2: rows [0, -w X^T, y X^T] and [w X^T, 0, -x X^T] with w = 1.
    a[0::2, 4:8] = -xh
    a[0::2, 8:12] = un[:, 1:2] * xh
    a[1::2, 0:4] = xh
    a[1::2, 8:12] = -un[:, 0:1] * xh
    _, _, vt = np.linalg.svd(a)
    p_norm = vt[-1].reshape(3, 4)
    p = np.linalg.inv(t2) @ p_norm @ t3
    return p


def decompose_projection(
    projection: npt.ArrayLike,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Split a (3, 4) projection into ``K`` (3, 3) and ``phantom_to_camera`` (4, 4).

    The sign of ``P`` is fixed so that ``det(M) > 0`` for the 3x3 block M when K has a
    positive diagonal; a mirrored projection (det < 0) gives ``fx < 0``. The depth sign
    of the points is the caller's to check.
    """
    p = np.asarray(projection, dtype=np.float64)
    if p.shape != (3, 4):
        raise ValueError(f"projection must be 3x4, got shape {p.shape}")
    m = p[:, :3]
    k, r = scipy.linalg.rq(m)
    # Make K's diagonal positive: K D, D R with D = diag(sign(K_ii)).
    d = np.diag(np.sign(np.diag(k)))
    k, r = k @ d, d @ r
    if np.linalg.det(r) < 0:
        # Mirror: M = (K F)(F R) with F = diag(-1, 1, 1) -> rotation with det +1.
        f = np.diag([-1.0, 1.0, 1.0])
        k, r = k @ f, f @ r
    scale = k[2, 2]
    t = np.linalg.solve(k, p[:, 3])
    k = k / scale
    pose = np.eye(4)
    pose[:3, :3] = r
    # P = K_u [R | t] with the unscaled K_u, so t = K_u^-1 p4 whatever the scale of P.
    pose[:3, 3] = t
    return k, pose


def _compose(params: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    fx, fy, skew, cx, cy = params[:5]
    k = np.array([[fx, skew, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    r = Rotation.from_rotvec(params[5:8]).as_matrix()
    return k @ np.column_stack([r, params[8:11]])


def carm_calibration(
    points_mm: npt.ArrayLike,
    pixels: npt.ArrayLike,
    *,
    min_points: int = 6,
) -> CArmResult:
    """3x4 projection of a C-arm view from >= 6 non-coplanar fiducials.

    Args:
        points_mm: (N, 3) fiducial positions in the phantom frame, mm.
        pixels: (N, 2) their detections (u = column, v = row), pixels.
        min_points: fewest points accepted (>= 6: 11 unknowns, 2 equations per point).

    Returns:
        :class:`CArmResult`.

    Raises:
        TypeError, ValueError: wrong types or shapes, different point counts.
        CalibrationError: too few points, coplanar points (reports the measured spread
            off the best plane), or points behind the source.
    """
    pts = as_points(points_mm, "points_mm", 3)
    px = as_points(pixels, "pixels", 2)
    if len(pts) != len(px):
        raise ValueError(
            f"points_mm and pixels must have the same length, got {len(pts)} and {len(px)}"
        )
    n = len(pts)
    need = max(min_points, 6)
    if n < need:
        raise CalibrationError(f"C-arm calibration needs at least {need} points, got {n}")
    sv = np.linalg.svd(pts - pts.mean(axis=0), compute_uv=False)
    if sv[2] <= MIN_NONPLANARITY * sv[0]:
        ratio = sv[2] / sv[0] if sv[0] > 0 else 0.0
        raise CalibrationError(
            f"fiducials are coplanar (RMS distance from their best plane "
            f"{sv[2] / np.sqrt(n):.3g} mm, singular value ratio {ratio:.2e}); the "
            "projection is undetermined: use a 3D phantom"
        )
    px_spread = float(np.sqrt(np.mean(np.sum((px - px.mean(axis=0)) ** 2, axis=1))))
    if px_spread < 1.0:
        raise CalibrationError(
            f"detections are not spread over the image (RMS spread {px_spread:.3g} px < 1 px)"
        )
    p_dlt = _dlt(pts, px)
    # Points must be in front of the source: fix the overall sign of P by their depth.
    depth = pts @ p_dlt[2, :3] + p_dlt[2, 3]
    if np.median(depth) < 0:
        p_dlt = -p_dlt
    dlt_res = np.linalg.norm(project(p_dlt, pts) - px, axis=1)
    k, pose = decompose_projection(p_dlt)
    x0 = np.concatenate(
        [
            [k[0, 0], k[1, 1], k[0, 1], k[0, 2], k[1, 2]],
            Rotation.from_matrix(pose[:3, :3]).as_rotvec(),
            pose[:3, 3],
        ]
    )

    def residuals(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return (project(_compose(x), pts) - px).ravel()

    sol = least_squares(residuals, x0, method="lm", x_scale="jac")
    p = _compose(sol.x)
    res = np.linalg.norm(project(p, pts) - px, axis=1)
    if np.sqrt(np.mean(res**2)) > np.sqrt(np.mean(dlt_res**2)):
        # Refinement never makes things worse than the linear solution.
        p, res = p_dlt, dlt_res
    depth = pts @ p[2, :3] + p[2, 3]
    if np.any(depth <= 0):
        raise CalibrationError(
            f"{int(np.sum(depth <= 0))} fiducials project from behind the source; the "
            "point/pixel correspondences are inconsistent"
        )
    p = p / np.linalg.norm(p[2, :3])
    k, pose = decompose_projection(p)
    return CArmResult(
        projection=p,
        intrinsics=k,
        phantom_to_camera=pose,
        source_position_mm=-pose[:3, :3].T @ pose[:3, 3],
        reprojection_rms_px=float(np.sqrt(np.mean(res**2))),
        residuals_px=res,
        dlt_reprojection_rms_px=float(np.sqrt(np.mean(dlt_res**2))),
    )
