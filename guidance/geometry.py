"""Image geometry: a voxel array plus its ``ijk_to_lps`` 4x4 matrix (DESIGN.md).

Every image in the application (OpenIGTLink IMAGE, DICOM series, NIfTI volume, a
simulated frame) is converted to :class:`ImageVolume` at the boundary. The world frame
is DICOM patient coordinates: LPS, millimetres. NIfTI and Slicer use RAS; they are
converted here, once, by :func:`ras_to_lps`.

Array layout: ``voxels`` is indexed ``[k, j, i]`` (slice, row, column), i.e. numpy's
C order with i fastest, the same order as DICOM pixel data and the OpenIGTLink IMAGE
body. ``ijk_to_lps @ [i, j, k, 1]`` gives the voxel centre in LPS mm. A 2D frame is a
volume with one slice (``voxels.shape == (1, rows, cols)``), optionally with a trailing
component axis for RGB (``(k, j, i, c)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["RAS_TO_LPS", "ImageVolume", "ras_to_lps", "spacing_of"]

#: Flips x and y: maps RAS coordinates to LPS and back (it is its own inverse).
RAS_TO_LPS: npt.NDArray[np.float64] = np.diag([-1.0, -1.0, 1.0, 1.0])


def ras_to_lps(matrix_to_ras: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Convert a 4x4 matrix whose output is RAS (a NIfTI affine, a Slicer transform's
    output side) into the same matrix with LPS output.

    This is the one place RAS enters LPS. For a full RAS->RAS transform (both sides RAS)
    use ``RAS_TO_LPS @ m @ RAS_TO_LPS``.

    Args:
        matrix_to_ras: (4, 4) matrix mapping some frame to RAS mm.

    Returns:
        (4, 4) float64 matrix mapping the same frame to LPS mm.

    Raises:
        ValueError: if the matrix is not 4x4 or not finite.
    """
    m = np.asarray(matrix_to_ras, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"matrix_to_ras must be 4x4, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("matrix_to_ras contains NaN or infinite values")
    return RAS_TO_LPS @ m


def spacing_of(ijk_to_lps: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Voxel spacing (i, j, k) in mm: the column norms of the 3x3 part."""
    m = np.asarray(ijk_to_lps, dtype=np.float64)
    spacing: npt.NDArray[np.float64] = np.sqrt((m[:3, :3] ** 2).sum(axis=0))
    return spacing


@dataclass(frozen=True, eq=False)
class ImageVolume:
    """A voxel array with its geometry.

    Attributes:
        voxels: array indexed ``[k, j, i]`` or ``[k, j, i, c]`` (see module docstring).
        ijk_to_lps: (4, 4) float64, voxel index (i, j, k) to LPS mm.
    """

    voxels: np.ndarray
    ijk_to_lps: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        if not isinstance(self.voxels, np.ndarray):
            raise TypeError(f"voxels must be a numpy array, got {type(self.voxels).__name__}")
        if self.voxels.ndim not in (3, 4):
            raise ValueError(
                f"voxels must be 3D [k, j, i] or 4D [k, j, i, c], got shape {self.voxels.shape}"
            )
        m = np.asarray(self.ijk_to_lps, dtype=np.float64)
        if m.shape != (4, 4):
            raise ValueError(f"ijk_to_lps must be 4x4, got shape {m.shape}")
        if not np.all(np.isfinite(m)):
            raise ValueError("ijk_to_lps contains NaN or infinite values")
        if abs(np.linalg.det(m[:3, :3])) < 1e-12:
            raise ValueError("ijk_to_lps is singular (zero spacing or collinear axes)")
        object.__setattr__(self, "ijk_to_lps", m)

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k."""
        k, j, i = self.voxels.shape[:3]
        return (i, j, k)

    @property
    def spacing_mm(self) -> npt.NDArray[np.float64]:
        """Voxel spacing along i, j, k in mm."""
        return spacing_of(self.ijk_to_lps)

    @property
    def lps_to_ijk(self) -> npt.NDArray[np.float64]:
        """Inverse of ``ijk_to_lps``."""
        inv: npt.NDArray[np.float64] = np.linalg.inv(self.ijk_to_lps).astype(np.float64)
        return inv

    def ijk_to_lps_points(self, ijk: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map (N, 3) voxel indices (i, j, k; may be fractional) to (N, 3) LPS mm."""
        p = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        return p @ self.ijk_to_lps[:3, :3].T + self.ijk_to_lps[:3, 3]

    def lps_to_ijk_points(self, lps: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map (N, 3) LPS mm points to (N, 3) fractional voxel indices (i, j, k)."""
        p = np.atleast_2d(np.asarray(lps, dtype=np.float64))
        inv = self.lps_to_ijk
        return p @ inv[:3, :3].T + inv[:3, 3]
