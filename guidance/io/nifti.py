"""NIfTI volumes to :class:`~guidance.geometry.ImageVolume` (RAS converted to LPS here).

NIfTI stores ``data[i, j, k]`` (Fortran order, i fastest on disk) with an affine from
(i, j, k) to RAS mm. We return ``voxels[k, j, i]`` and ``ijk_to_lps`` so that the
project's single convention holds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from guidance.geometry import ImageVolume, ras_to_lps
from guidance.io.validate import InputError

__all__ = ["NiftiError", "load_nifti"]

log = logging.getLogger(__name__)


class NiftiError(InputError):
    """A NIfTI file that cannot be read or has unusable geometry."""


def load_nifti(path: str | Path, dtype: np.dtype | type | None = None) -> ImageVolume:
    """Load a 3D NIfTI file.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        dtype: convert voxels to this dtype (default: the file's stored dtype, with
            scaling applied only when the header asks for it).

    Returns:
        ImageVolume with ``voxels`` shaped (k, j, i) and ``ijk_to_lps`` in LPS mm.

    Raises:
        NiftiError: missing file, unreadable file, not 3D, or bad affine; the message
            names the file.
    """
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise NiftiError(f"{p}: no such NIfTI file")
    try:
        img: Any = nib.load(str(p))
        proxy = img.dataobj
        slope = float(getattr(proxy, "slope", 1.0))
        inter = float(getattr(proxy, "inter", 0.0))
        raw = np.asarray(proxy.get_unscaled()) if hasattr(proxy, "get_unscaled") else None
        if raw is not None and raw.dtype.kind in "iu" and slope.is_integer() and inter.is_integer():
            # Integer storage with integer scaling (CT HU): stay integer, no float copy.
            scaled = raw.astype(np.int32) * int(slope) + int(inter)
            data: np.ndarray = scaled
            if scaled.min() >= -32768 and scaled.max() <= 32767:
                data = scaled.astype(np.int16)
            if slope == 1.0 and inter == 0.0:
                data = raw
        else:
            data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # nibabel raises many types for broken files
        raise NiftiError(f"{p}: cannot read NIfTI: {e}") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise NiftiError(f"{p}: expected a 3D volume, got shape {data.shape}")
    affine = np.asarray(img.affine, dtype=np.float64)
    try:
        ijk_to_lps = ras_to_lps(affine)
    except ValueError as e:
        raise NiftiError(f"{p}: bad affine: {e}") from e
    voxels = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    if dtype is not None:
        voxels = voxels.astype(dtype, copy=False)
    log.info("loaded %s: %s %s", p, voxels.shape, voxels.dtype)
    try:
        return ImageVolume(voxels=voxels, ijk_to_lps=ijk_to_lps)
    except ValueError as e:
        raise NiftiError(f"{p}: {e}") from e
