"""A CT control slab from an OpenIGTLink IMAGE message, checked before anything uses it.

A control scan is 2-64 contiguous slices (int16 HU, or uint16 with a rescale in the
IGTLv3 metadata ``RescaleSlope`` / ``RescaleIntercept``) whose ijk -> RAS matrix may be
in any orientation (flipped axes, negative spacing, a tilted gantry). Anything else is
refused with a :class:`~guidance.ctscan.result.SlabError` that names what is wrong; the
live loop reports it and goes on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from guidance.ctscan.result import SlabError
from guidance.geometry import RAS_TO_LPS, ImageVolume

__all__ = ["MAX_SLICES", "MIN_SLICES", "check_slab_geometry", "slab_from_message"]

#: Slices a control slab may have.
MIN_SLICES, MAX_SLICES = 2, 64


def _meta_float(metadata: object, key: str) -> float | None:
    if not isinstance(metadata, dict):
        return None
    for k, v in metadata.items():
        if str(k).lower() == key.lower():
            try:
                return float(str(v).strip())
            except ValueError as e:
                raise SlabError(f"metadata {key}={str(v)[:40]!r} is not a number") from e
    return None


def check_slab_geometry(matrix: Any, shape: tuple[int, ...], where: str = "slab") -> np.ndarray:
    """Check a slab's ijk -> LPS matrix and voxel shape.

    Args:
        matrix: (4, 4) ijk -> LPS mm.
        shape: the voxel array's shape (K, J, I[, C]).
        where: what to name in messages (the device name).

    Returns:
        The matrix as (4, 4) float64.

    Raises:
        SlabError: a colour or 2D image, fewer than 2 or more than 64 slices, a
            non-finite matrix, a zero or non-finite spacing, a non-invertible matrix.
    """
    if len(shape) != 3:
        raise SlabError(f"{where}: a CT slab is one scalar component (K, J, I), got voxel "
                        f"shape {tuple(shape)}")
    k, j, i = shape
    if k < MIN_SLICES:
        raise SlabError(f"{where}: a control slab needs at least {MIN_SLICES} slices to give "
                        f"the needle's 3D axis, got {k}")
    if k > MAX_SLICES:
        raise SlabError(f"{where}: {k} slices; a control slab has at most {MAX_SLICES}")
    if min(i, j) < 16:
        raise SlabError(f"{where}: slices of {i} x {j} voxels are too small for a CT slab")
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise SlabError(f"{where}: ijk -> RAS matrix must be 4x4, got {m.shape}")
    if not np.all(np.isfinite(m)):
        raise SlabError(f"{where}: the ijk -> RAS matrix holds NaN or infinite values "
                        "(spacing or origin)")
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    if np.any(spacing < 1e-3) or np.any(spacing > 50.0):
        raise SlabError(f"{where}: voxel spacing {np.round(spacing, 4).tolist()} mm is not a "
                        "CT's (each axis must be 0.001-50 mm)")
    cols = m[:3, :3] / spacing
    det = float(np.linalg.det(cols))
    if abs(det) < 0.2:
        raise SlabError(f"{where}: the ijk -> RAS matrix is not invertible (axes nearly "
                        f"collinear, |det| of the direction cosines {abs(det):.3f})")
    return m


def slab_from_message(msg: Any, device_name: str = "") -> ImageVolume:
    """A checked CT slab (int16 HU, LPS geometry) from a pyigtl IMAGE message.

    Args:
        msg: ``pyigtl.ImageMessage`` (``image`` (K, J, I), ``ijk_to_world_matrix``,
            ``world_coordinate_system``, optional ``metadata``).
        device_name: named in messages.

    Raises:
        SlabError: see :func:`check_slab_geometry`; a dtype that is not int16 (or uint16
            or int32 with a rescale), a rescale that is not finite or has slope 0,
            values outside -2000..32767 HU after rescale.
    """
    where = f"CT slab {device_name!r}" if device_name else "CT slab"
    image = np.asarray(msg.image)
    m = np.asarray(msg.ijk_to_world_matrix, dtype=np.float64)
    if getattr(msg, "world_coordinate_system", "ras") == "ras" and np.all(np.isfinite(m)):
        m = RAS_TO_LPS @ m
    m = check_slab_geometry(m, image.shape, where)
    meta = getattr(msg, "metadata", None)
    slope = _meta_float(meta, "RescaleSlope")
    intercept = _meta_float(meta, "RescaleIntercept")
    if image.dtype == np.int16 and slope is None and intercept is None:
        hu = image
    elif image.dtype.kind in "iu" and image.dtype.itemsize <= 4:
        if slope is None and intercept is None:
            raise SlabError(f"{where}: {image.dtype} voxels need the metadata RescaleSlope "
                            "and RescaleIntercept to give HU (int16 voxels are HU as they are)")
        s = 1.0 if slope is None else slope
        b = 0.0 if intercept is None else intercept
        if not (math.isfinite(s) and math.isfinite(b)) or s == 0.0:
            raise SlabError(f"{where}: rescale slope {s} / intercept {b} must be finite, "
                            "slope non-zero")
        f = image.astype(np.float32) * np.float32(s) + np.float32(b)
        lo, hi = float(f.min()), float(f.max())
        if lo < -2000.0 or hi > 32767.0:
            raise SlabError(f"{where}: values {lo:.0f}..{hi:.0f} HU after rescale are not a "
                            "CT's")
        hu = np.rint(f).astype(np.int16)
    else:
        raise SlabError(f"{where}: voxel type {image.dtype} is not a CT's (int16 HU, or "
                        "uint16 with RescaleSlope/RescaleIntercept)")
    return ImageVolume(np.ascontiguousarray(hu), m)
