"""The control CT's own DICOM datasets, in the order of the loaded volume's slices.

Every DICOM object the verification writes takes its patient, study and frame of
reference from these datasets (highdicom copies them), so identity is never invented;
a control CT that is not DICOM (NIfTI) has no identity to copy and gets no DICOM
objects (:class:`NoDicomSource`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from guidance.geometry import ImageVolume

__all__ = ["NoDicomSource", "SourceSeries", "read_source_series"]

#: Largest distance between a file's ImagePositionPatient and the loaded volume's slice.
_POSITION_TOL_MM = 0.05


class NoDicomSource(ValueError):
    """The control CT is not a DICOM series (or not the one the volume came from)."""


@dataclass(frozen=True, eq=False)
class SourceSeries:
    """The source images of a CT volume.

    Attributes:
        datasets: one pydicom Dataset per slice (pixel data included), in the order of
            ``volume.voxels``' first axis (k).
        folder: where they were read.
    """

    datasets: tuple[Any, ...]
    folder: Path

    @property
    def first(self) -> Any:
        """The first slice's dataset (patient, study, frame of reference)."""
        return self.datasets[0]

    @property
    def study_uid(self) -> str:
        return str(self.first.StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.first.SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.first.FrameOfReferenceUID)


def read_source_series(path: str | Path, volume: ImageVolume,
                       series_uid: str | None = None) -> SourceSeries:
    """Read the DICOM files of ``volume`` (a series loaded from ``path``) and order them
    as its slices.

    Args:
        path: the DICOM folder (or one file of the series) the volume was loaded from.
        volume: the loaded CT (``voxels[k, j, i]``, ``ijk_to_lps``).
        series_uid: the series, when the folder holds several.

    Raises:
        NoDicomSource: ``path`` is a NIfTI file, holds no such series, an enhanced
            (multi-frame) CT, or files whose positions do not match the volume's slices
            (naming the file and the distance).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    p = Path(path)
    if p.is_file() and p.name.endswith((".nii", ".nii.gz")):
        raise NoDicomSource(f"{p}: a NIfTI file has no patient or study identity; DICOM "
                            "objects are written only for a DICOM control CT")
    folder = p if p.is_dir() else p.parent
    files = sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith("."))
    chosen: list[Any] = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            continue
        if "ImagePositionPatient" not in ds:
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", ""))
        if series_uid is not None and uid != series_uid:
            continue
        if p.is_file() and series_uid is None:
            series_uid = str(pydicom.dcmread(str(p), stop_before_pixels=True)
                             .SeriesInstanceUID)
            if uid != series_uid:
                continue
        chosen.append((f, ds))
    if not chosen:
        raise NoDicomSource(f"{p}: no DICOM image slices"
                            + (f" of series {series_uid}" if series_uid else ""))
    uids = {str(ds.SeriesInstanceUID) for _f, ds in chosen}
    if len(uids) > 1:
        raise NoDicomSource(f"{folder}: {len(uids)} series; give the series UID")
    m = volume.ijk_to_lps
    k_count = volume.voxels.shape[0]
    if len(chosen) != k_count:
        raise NoDicomSource(f"{folder}: {len(chosen)} slice files, the volume has {k_count} "
                            "slices (resampled or enhanced CT?)")
    inv = np.linalg.inv(m)
    ordered: list[Any] = [None] * k_count
    for f, ds in chosen:
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        k_float = (inv @ np.append(ipp, 1.0))[2]
        k = round(k_float)
        expected = (m @ np.array([0.0, 0.0, k, 1.0]))[:3]
        off = float(np.linalg.norm(ipp - expected))
        if not 0 <= k < k_count or off > _POSITION_TOL_MM or ordered[k] is not None:
            raise NoDicomSource(f"{f}: ImagePositionPatient {np.round(ipp, 2).tolist()} is "
                                f"{off:.2f} mm from the volume's slice {k}")
        ordered[k] = pydicom.dcmread(str(f))
    return SourceSeries(tuple(ordered), folder)
