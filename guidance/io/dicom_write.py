"""Write an :class:`~guidance.geometry.ImageVolume` as a DICOM CT series (one file per slice).

Used by tests (round trips: volume -> files -> :func:`guidance.io.dicom_series.load_dicom_series`)
and by the control-CT simulator. Geometry is written from ``ijk_to_lps`` (LPS mm, which is
DICOM's patient frame): IOP from the i and j columns, PixelSpacing from their norms, IPP
of slice k from ``ijk_to_lps @ [0, 0, k, 1]``. HU are stored as unsigned 16 bit with
``RescaleIntercept`` -1024 (and an optional slope), the common scanner layout.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from guidance.geometry import ImageVolume

__all__ = ["write_dicom_series"]

log = logging.getLogger(__name__)


def write_dicom_series(
    volume: ImageVolume,
    folder: str | Path,
    *,
    series_uid: str | None = None,
    modality: str = "CT",
    description: str = "guidance synthetic series",
    file_names: Sequence[str] | None = None,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    transfer_syntax: str | None = None,
    instance_numbers: Sequence[int] | None = None,
) -> str:
    """Write one file per slice; returns the SeriesInstanceUID.

    Args:
        volume: HU voxels ``[k, j, i]``; the i and j columns of ``ijk_to_lps`` must be
            orthogonal (DICOM rows and columns are).
        folder: created if missing.
        series_uid: default: a new UID.
        modality: Modality tag (write ``"MR"`` to test refusal).
        file_names: one name per slice k (default ``slice_{k:04d}.dcm``); lets tests
            write names that do not follow the slice order.
        rescale_slope, rescale_intercept: stored = round((HU - intercept) / slope).
        transfer_syntax: UID to compress to (e.g. RLE Lossless ``1.2.840.10008.1.2.5``);
            default explicit VR little endian, uncompressed.
        instance_numbers: InstanceNumber per slice (default k + 1).

    Raises:
        ValueError: non-orthogonal i/j axes, wrong number of names, values that do not
            fit 16 bits after rescaling.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    m = volume.ijk_to_lps
    if volume.voxels.ndim != 3:
        raise ValueError(f"volume must be 3D, got shape {volume.voxels.shape}")
    sp = volume.spacing_mm
    row_dir, col_dir = m[:3, 0] / sp[0], m[:3, 1] / sp[1]
    if abs(float(np.dot(row_dir, col_dir))) > 1e-6:
        raise ValueError("ijk_to_lps i and j columns must be orthogonal for DICOM")
    n_slices = volume.voxels.shape[0]
    names = list(file_names) if file_names is not None else [
        f"slice_{k:04d}.dcm" for k in range(n_slices)
    ]
    if len(names) != n_slices:
        raise ValueError(f"file_names must have {n_slices} entries, got {len(names)}")
    numbers = list(instance_numbers) if instance_numbers is not None else list(
        range(1, n_slices + 1)
    )
    stored_all = np.round((volume.voxels.astype(np.float64) - rescale_intercept) / rescale_slope)
    if stored_all.min() < 0 or stored_all.max() > 65535:
        raise ValueError(
            f"HU range {volume.voxels.min()}..{volume.voxels.max()} does not fit uint16 with "
            f"slope {rescale_slope} and intercept {rescale_intercept}"
        )
    stored_all = stored_all.astype(np.uint16)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    import datetime

    stamp = datetime.datetime.now()
    today, now = stamp.strftime("%Y%m%d"), stamp.strftime("%H%M%S")
    frame_uid = generate_uid()
    thickness = float(abs(np.dot(m[:3, 2], np.cross(row_dir, col_dir))))
    for k in range(n_slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.SeriesDescription = description
        ds.PatientName = "Synthetic^Guidance"
        ds.PatientID = "GUIDANCE-TEST"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyDate, ds.StudyTime = today, now
        ds.SeriesDate, ds.SeriesTime = today, now
        ds.ContentDate, ds.ContentTime = today, now
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.Manufacturer = "guidance (synthetic)"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.KVP = ""
        ds.AcquisitionNumber = 1
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = "LSPINE"
        ds.InstanceNumber = int(numbers[k])
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in (m[:3, 2] * k + m[:3, 3])]
        ds.PixelSpacing = [f"{sp[1]:.8f}", f"{sp[0]:.8f}"]
        ds.SliceThickness = f"{thickness:.6f}"
        ds.RescaleSlope = f"{rescale_slope:g}"
        ds.RescaleIntercept = f"{rescale_intercept:g}"
        ds.RescaleType = "HU"
        ds.Rows, ds.Columns = volume.voxels.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = np.ascontiguousarray(stored_all[k]).tobytes()
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        ds.save_as(str(out / names[k]), enforce_file_format=True)
    log.info("wrote %d slices of series %s to %s", n_slices, series_uid, out)
    return str(series_uid)
