"""A minimal MetaImage (.mha) writer, for handing volumes to ITK-based tools.

Used to check the projector against ``plastimatch drr``, which reads MetaImage but
ignores direction cosines: :func:`to_identity_direction` first flips an axis-aligned
volume so that its direction is the identity in LPS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from guidance.geometry import ImageVolume

__all__ = ["to_identity_direction", "write_metaimage"]

_MET_TYPES = {
    np.dtype(np.int16): "MET_SHORT",
    np.dtype(np.uint16): "MET_USHORT",
    np.dtype(np.uint8): "MET_UCHAR",
    np.dtype(np.int32): "MET_INT",
    np.dtype(np.float32): "MET_FLOAT",
    np.dtype(np.float64): "MET_DOUBLE",
}


def to_identity_direction(volume: ImageVolume) -> ImageVolume:
    """The same volume with axes flipped (and permuted) so that ``ijk_to_lps`` is diagonal
    with positive spacing.

    Raises:
        ValueError: the volume is oblique (not axis-aligned).
    """
    m = volume.ijk_to_lps
    r = m[:3, :3] / volume.spacing_mm
    perm = np.argmax(np.abs(r), axis=0)  # LPS axis of each index axis i, j, k
    if sorted(perm.tolist()) != [0, 1, 2] or not np.allclose(np.abs(r).max(axis=0), 1.0, atol=1e-6):
        raise ValueError("volume is oblique; only axis-aligned volumes can be reoriented")
    vox = volume.voxels
    new = m.copy()
    for a in range(3):  # index axis a = i, j, k -> array axis 2 - a
        if r[perm[a], a] < 0:
            vox = np.flip(vox, axis=2 - a)
            n = volume.size_ijk[a]
            new[:3, 3] = new[:3, 3] + new[:3, a] * (n - 1)
            new[:3, a] = -new[:3, a]
    # Permute so that index axis a follows LPS axis a: array axes are (k, j, i).
    order = np.argsort(perm)  # index axis for LPS x, y, z
    vox = np.transpose(vox, [2 - order[2], 2 - order[1], 2 - order[0]])
    out = np.eye(4)
    out[:3, :3] = new[:3, :3][:, order]
    out[:3, 3] = new[:3, 3]
    return ImageVolume(voxels=np.ascontiguousarray(vox), ijk_to_lps=out)


def write_metaimage(path: str | Path, volume: ImageVolume) -> Path:
    """Write a 3D scalar volume as a single-file MetaImage (``.mha``), LPS mm.

    Args:
        path: output file.
        volume: scalar ImageVolume (int16/uint16/uint8/int32/float32/float64).

    Returns:
        The path written.

    Raises:
        ValueError: not a 3D scalar volume, or an unsupported dtype.
    """
    vox = volume.voxels
    if vox.ndim != 3:
        raise ValueError(f"only 3D scalar volumes, got shape {vox.shape}")
    if vox.dtype not in _MET_TYPES:
        raise ValueError(f"unsupported dtype {vox.dtype}; use one of {list(map(str, _MET_TYPES))}")
    sp = volume.spacing_mm
    direction = volume.ijk_to_lps[:3, :3] / sp
    k, j, i = vox.shape
    header = "\n".join(
        [
            "ObjectType = Image",
            "NDims = 3",
            "BinaryData = True",
            "BinaryDataByteOrderMSB = False",
            "CompressedData = False",
            # MetaImage stores the direction matrix column by column (one axis per triple).
            "TransformMatrix = " + " ".join(f"{v:.9g}" for v in direction.T.ravel()),
            "Offset = " + " ".join(f"{v:.9g}" for v in volume.ijk_to_lps[:3, 3]),
            "CenterOfRotation = 0 0 0",
            "AnatomicalOrientation = RAI",
            "ElementSpacing = " + " ".join(f"{v:.9g}" for v in sp),
            f"DimSize = {i} {j} {k}",
            f"ElementType = {_MET_TYPES[vox.dtype]}",
            "ElementDataFile = LOCAL",
            "",
        ]
    )
    p = Path(path)
    data = np.ascontiguousarray(vox, dtype=vox.dtype.newbyteorder("<"))
    with p.open("wb") as f:
        f.write(header.encode("ascii"))
        f.write(data.tobytes())
    return p
