"""Argument parsers shared by the calibration functions (TypeError for a wrong type,
ValueError for a wrong shape or value; messages name the parameter and the bad value)."""

from __future__ import annotations

import numbers

import numpy as np
import numpy.typing as npt

__all__ = ["as_array", "as_points", "as_positive", "as_rotations_translations"]


def as_array(value: object, name: str) -> npt.NDArray[np.float64]:
    """``value`` as a float64 array; TypeError if it is not numeric array-like."""
    if value is None or isinstance(value, (str, bytes, dict, set)):
        raise TypeError(f"{name} must be an array of numbers, got {type(value).__name__}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except TypeError as e:
        raise TypeError(f"{name} must be an array of numbers, got {type(value).__name__}") from e
    except ValueError as e:
        raise ValueError(f"{name} is not a rectangular array of numbers: {e}") from e
    return arr


def as_points(value: object, name: str, dim: int, min_count: int = 0) -> npt.NDArray[np.float64]:
    """(N, dim) finite float64 points with N >= ``min_count``."""
    arr = as_array(value, name)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if arr.shape[0] < min_count:
        raise ValueError(f"{name} needs at least {min_count} points, got {arr.shape[0]}")
    return arr


def as_positive(value: object, name: str, allow_zero: bool = False) -> float:
    """A finite float > 0 (or >= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {v}")
    return v


def as_rotations_translations(
    value: object, name: str
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Split (N, 4, 4) rigid matrices into (N, 3, 3) rotations and (N, 3) translations.

    Raises:
        ValueError: wrong shape, non-finite values, a bottom row other than [0, 0, 0, 1],
            or a 3x3 part that is not a rotation (orthonormal, determinant +1; tolerance
            1e-4, enough for float32 matrices from the wire).
    """
    arr = as_array(value, name)
    if arr.ndim != 3 or arr.shape[1:] != (4, 4):
        raise ValueError(f"{name} must have shape (N, 4, 4), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(arr), axis=(1, 2)))[0])
        raise ValueError(f"{name}[{bad}] contains NaN or infinite values")
    bottom_err = np.abs(arr[:, 3, :] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1)
    if np.any(bottom_err > 1e-6):
        bad = int(np.argmax(bottom_err))
        raise ValueError(f"{name}[{bad}] bottom row must be [0, 0, 0, 1], got {arr[bad, 3]}")
    rot = arr[:, :3, :3]
    ortho_err = np.abs(np.einsum("nji,njk->nik", rot, rot) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(rot)
    bad_mask = (ortho_err > 1e-4) | (np.abs(det - 1.0) > 1e-4)
    if np.any(bad_mask):
        bad = int(np.flatnonzero(bad_mask)[0])
        raise ValueError(
            f"{name}[{bad}] is not rigid: orthonormality error {ortho_err[bad]:.2e}, "
            f"determinant {det[bad]:.6f} (need a rotation with determinant +1)"
        )
    return rot.copy(), arr[:, :3, 3].copy()
