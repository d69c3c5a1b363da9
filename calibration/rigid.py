"""Rigid 4x4 transforms: validation at the boundary and closed-form inversion."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from calibration._checks import as_array, as_rotations_translations

__all__ = ["invert_rigid", "is_identity", "validate_rigid"]


def validate_rigid(matrix: object, name: str = "matrix") -> npt.NDArray[np.float64]:
    """Check that ``matrix`` is a finite rigid 4x4 transform and return it as float64.

    Args:
        matrix: (4, 4) array-like, ``a_to_b`` in mm.
        name: parameter name used in error messages.

    Returns:
        (4, 4) float64 copy, with the rotation re-orthonormalised (SVD) so that float32
        round-off from the wire does not accumulate when transforms are composed.

    Raises:
        TypeError: not numeric array-like.
        ValueError: not 4x4, not finite, bottom row not [0, 0, 0, 1], rotation not
            orthonormal within 1e-4 or determinant not +1 (a reflection).
    """
    arr = as_array(matrix, name)
    if arr.shape != (4, 4):
        raise ValueError(f"{name} must be 4x4, got shape {arr.shape}")
    try:
        rot, trans = as_rotations_translations(arr[None], name)
    except ValueError as e:
        raise ValueError(str(e).replace(f"{name}[0]", name)) from None
    u, _, vt = np.linalg.svd(rot[0])
    out = np.eye(4)
    out[:3, :3] = u @ vt
    out[:3, 3] = trans[0]
    return out


def invert_rigid(a_to_b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``b_to_a`` from a rigid ``a_to_b`` (R^T, -R^T t); no validation."""
    out = np.eye(4)
    rot_t = a_to_b[:3, :3].T
    out[:3, :3] = rot_t
    out[:3, 3] = -rot_t @ a_to_b[:3, 3]
    return out


def is_identity(matrix: npt.NDArray[np.float64], atol: float = 1e-9) -> bool:
    """True when ``matrix`` equals the 4x4 identity within ``atol`` (what a tracker may
    send for a tool out of view)."""
    return bool(np.allclose(matrix, np.eye(4), rtol=0.0, atol=atol))
