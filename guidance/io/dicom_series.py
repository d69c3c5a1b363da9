"""DICOM CT series (a folder of single-slice files) to :class:`~guidance.geometry.ImageVolume`.

Geometry comes from ImagePositionPatient (IPP), ImageOrientationPatient (IOP) and
PixelSpacing, which are already LPS millimetres, so no frame conversion happens here.
Slices are ordered by their position along the slice normal ``n = row x col`` (never by
file name or InstanceNumber). The slice step of ``ijk_to_lps`` is the mean vector between
consecutive slice positions, so gantry tilt (a step that is not parallel to ``n``) is
represented exactly as a sheared matrix.

Voxel values are HU: ``stored * RescaleSlope + RescaleIntercept`` per slice. Compressed
transfer syntaxes are decoded by pydicom's pixel handlers; JPEG, JPEG-LS and JPEG 2000
need the pylibjpeg plugins (``pip install pylibjpeg pylibjpeg-libjpeg
pylibjpeg-openjpeg pylibjpeg-rle``); RLE decodes without them.

Uneven slice spacing (a missing slice, a re-scanned slab) cannot be held by one
``ijk_to_lps``: it is detected and reported; the loader refuses unless asked to resample
(``allow_uneven=True``), in which case slices are linearly interpolated onto the median
step and the report says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from guidance.geometry import ImageVolume
from guidance.io.validate import (
    InputError,
    check_ct_volume,
    check_orientation,
    check_pixel_data_length,
    check_rescale,
    check_slice_positions,
    check_spacing,
)

__all__ = [
    "DicomSeries",
    "DicomSeriesError",
    "ProgressFn",
    "SeriesInfo",
    "list_series",
    "load_ct",
    "load_dicom_file",
    "load_dicom_series",
]

log = logging.getLogger(__name__)

#: progress(fraction in [0, 1], message) -- called from the loading thread.
ProgressFn = Callable[[float, str], None]

#: Relative deviation of a slice gap from the median gap above which spacing is uneven.
_GAP_REL_TOL = 0.05
#: Maximum angle (as 1 - cos) between slice orientations of one series.
_IOP_TOL = 1e-4


class DicomSeriesError(InputError):
    """A DICOM input that cannot be turned into a volume; the message names the path."""


@dataclass(frozen=True)
class SeriesInfo:
    """One series found in a folder.

    Attributes:
        series_uid: SeriesInstanceUID.
        modality: Modality tag (``"CT"``, ``"MR"``...; ``""`` if absent).
        description: SeriesDescription (may be empty).
        n_files: number of files of the series in the folder.
    """

    series_uid: str
    modality: str
    description: str
    n_files: int


@dataclass(frozen=True, eq=False)
class DicomSeries:
    """A loaded series and what was found while loading it.

    Attributes:
        volume: HU voxels ``[k, j, i]`` (int16 when every value is an integer in range,
            else float32) with ``ijk_to_lps`` in LPS mm.
        series_uid: SeriesInstanceUID of the series.
        slice_positions_mm: (K,) position of each slice along the slice normal, mm,
            increasing (the order of ``volume.voxels``' first axis) -- of the *files*,
            before any resampling.
        issues: human-readable findings (uneven spacing, missing slices, resampling).
    """

    volume: ImageVolume
    series_uid: str
    slice_positions_mm: npt.NDArray[np.float64]
    issues: tuple[str, ...]


def _dcmread(path: Path, header_only: bool) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=header_only)
    except InvalidDicomError as e:
        raise DicomSeriesError(f"{path}: not a DICOM file ({e})") from e
    except Exception as e:  # pydicom raises many types for broken files
        raise DicomSeriesError(f"{path}: cannot read DICOM: {e}") from e


def _files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _scan_headers(
    folder: Path, progress: ProgressFn | None
) -> dict[str, list[tuple[Path, Any]]]:
    """SeriesInstanceUID -> [(file, header dataset)]; non-DICOM files are skipped."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not folder.is_dir():
        raise DicomSeriesError(f"{folder}: no such folder")
    files = _files_in(folder)
    if not files:
        raise DicomSeriesError(f"{folder}: empty folder, no DICOM files")
    by_series: dict[str, list[tuple[Path, Any]]] = {}
    skipped = 0
    for n, f in enumerate(files):
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            skipped += 1
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", ""))
        has_geometry = ("ImagePositionPatient" in ds
                        or "PerFrameFunctionalGroupsSequence" in ds)
        if not uid or not has_geometry:
            # DICOMDIR, structured reports, presentation states: not image slices.
            skipped += 1
            continue
        by_series.setdefault(uid, []).append((f, ds))
        if progress is not None and (n % 16 == 0 or n == len(files) - 1):
            progress(0.3 * (n + 1) / len(files), f"reading headers {n + 1}/{len(files)}")
    if skipped:
        log.info("%s: skipped %d non-image or non-DICOM files", folder, skipped)
    if not by_series:
        raise DicomSeriesError(
            f"{folder}: no DICOM image files among {len(files)} files"
        )
    return by_series


def list_series(folder: str | Path) -> tuple[SeriesInfo, ...]:
    """The image series in a folder (searched recursively), largest first.

    Raises:
        DicomSeriesError: missing or empty folder, or no DICOM image in it.
    """
    groups = _scan_headers(Path(folder), None)
    infos = [
        SeriesInfo(
            series_uid=uid,
            modality=str(getattr(items[0][1], "Modality", "")),
            description=str(getattr(items[0][1], "SeriesDescription", "")),
            n_files=len(items),
        )
        for uid, items in groups.items()
    ]
    return tuple(sorted(infos, key=lambda s: -s.n_files))


def _float_list(ds: Any, tag: str, n: int, where: Path) -> npt.NDArray[np.float64]:
    value = getattr(ds, tag, None)
    if value is None:
        raise DicomSeriesError(f"{where}: missing {tag}")
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DicomSeriesError(f"{where}: bad {tag} {value!r}") from e
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise DicomSeriesError(f"{where}: {tag} must have {n} finite values, got {value!r}")
    return arr


def _check_modality(ds: Any, where: Path, modalities: Sequence[str]) -> None:
    modality = str(getattr(ds, "Modality", ""))
    if modalities and modality not in modalities:
        raise DicomSeriesError(
            f"{where}: modality {modality or '(missing)'!s} is not {'/'.join(modalities)}; "
            "a planning or control CT is expected"
        )


def _rescale(source: Any, where: Path, default: Any = None) -> tuple[float, float]:
    """(slope, intercept) of ``source`` (``default``'s when it has none), checked."""

    def value(name: str) -> Any:
        for src in (source, default):
            v = getattr(src, name, None) if src is not None else None
            if v is not None and v != "":
                return v
        return None

    return check_rescale(str(where), value("RescaleSlope"), value("RescaleIntercept"),
                         error=DicomSeriesError)


def _pixels(ds: Any, where: Path) -> npt.NDArray[np.float64]:
    """Stored pixels of one frame times RescaleSlope plus RescaleIntercept (HU)."""
    slope, intercept = _rescale(ds, where)
    check_pixel_data_length(str(where), ds, error=DicomSeriesError)
    try:
        raw = ds.pixel_array
    except Exception as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", str(ts))
        raise DicomSeriesError(
            f"{where}: cannot decode pixel data (transfer syntax {name}): {e}. "
            "Compressed CT needs `pip install pylibjpeg pylibjpeg-libjpeg "
            "pylibjpeg-openjpeg pylibjpeg-rle`"
        ) from e
    return np.asarray(raw, dtype=np.float64) * slope + intercept


def _volume(stack: npt.NDArray[np.float64], ijk_to_lps: npt.NDArray[np.float64],
            where: Path) -> ImageVolume:
    """The HU volume, checked (finite voxels, usable geometry) before anything uses it."""
    try:
        volume = ImageVolume(_to_hu_dtype(stack), ijk_to_lps)
    except ValueError as e:
        raise DicomSeriesError(f"{where}: {e}") from e
    return check_ct_volume(volume, str(where), error=DicomSeriesError)


def _to_hu_dtype(stack: npt.NDArray[np.float64]) -> np.ndarray:
    if (np.all(stack == np.round(stack)) and stack.size and stack.min() >= -32768
            and stack.max() <= 32767):
        return stack.astype(np.int16)
    return stack.astype(np.float32)


def _gap_report(positions: npt.NDArray[np.float64], where: Path) -> tuple[float, list[str]]:
    """Median gap and a list of uneven-spacing findings (empty when even)."""
    gaps = np.diff(positions)
    if np.any(gaps < 1e-3):
        dup = positions[1:][gaps < 1e-3]
        raise DicomSeriesError(
            f"{where}: {int(dup.size)} duplicate slice position(s) along the normal "
            f"(e.g. {dup[0]:.2f} mm): two acquisitions mixed in one series?"
        )
    median = float(np.median(gaps))
    issues: list[str] = []
    bad = np.flatnonzero(np.abs(gaps - median) > _GAP_REL_TOL * median)
    for b in bad:
        ratio = gaps[b] / median
        n_missing = round(ratio) - 1
        if n_missing >= 1 and abs(ratio - round(ratio)) < 0.1:
            issues.append(
                f"{n_missing} missing slice(s) between {positions[b]:.2f} and "
                f"{positions[b + 1]:.2f} mm (gap {gaps[b]:.2f} mm, spacing {median:.2f} mm)"
            )
        else:
            issues.append(
                f"uneven slice gap {gaps[b]:.2f} mm between {positions[b]:.2f} and "
                f"{positions[b + 1]:.2f} mm (spacing {median:.2f} mm)"
            )
    return median, issues


def load_dicom_series(
    folder: str | Path,
    series_uid: str | None = None,
    *,
    progress: ProgressFn | None = None,
    modalities: Sequence[str] = ("CT",),
    allow_uneven: bool = False,
) -> DicomSeries:
    """Load one single-frame-per-file series from a folder (searched recursively).

    Args:
        folder: directory holding the files (any names; non-DICOM files are skipped).
        series_uid: SeriesInstanceUID to load; required when the folder holds several
            image series.
        progress: optional callback ``progress(fraction, message)``.
        modalities: accepted Modality values (default CT only; empty = any).
        allow_uneven: resample uneven slice spacing onto the median step instead of
            refusing.

    Returns:
        :class:`DicomSeries` with the HU volume ``[k, j, i]`` ordered by position along
        the slice normal, and the findings.

    Raises:
        DicomSeriesError: empty folder, several series and no ``series_uid`` (the
            message lists them), unknown ``series_uid``, non-CT modality, inconsistent
            orientation/size/spacing, duplicate positions, uneven spacing (unless
            allowed), undecodable pixel data.
    """
    folder = Path(folder)
    groups = _scan_headers(folder, progress)
    if series_uid is None and len(groups) > 1 and modalities:
        # A study from the PACS also holds derived objects (our SEG, say): when exactly
        # one series has an accepted modality, it is the one.
        wanted = {uid: items for uid, items in groups.items()
                  if str(getattr(items[0][1], "Modality", "")) in modalities}
        if len(wanted) == 1:
            skipped = ", ".join(f"{getattr(items[0][1], 'Modality', '')!s} {uid}"
                                for uid, items in groups.items() if uid not in wanted)
            log.info("%s: the one %s series taken; not images to load: %s", folder,
                     "/".join(modalities), skipped)
            groups = wanted
    if series_uid is None:
        if len(groups) > 1:
            listing = "; ".join(
                f"{uid} ({getattr(items[0][1], 'Modality', '')!s}, {len(items)} files, "
                f"'{getattr(items[0][1], 'SeriesDescription', '')!s}')"
                for uid, items in sorted(groups.items(), key=lambda kv: -len(kv[1]))
            )
            raise DicomSeriesError(
                f"{folder}: {len(groups)} series in the folder, choose one by "
                f"SeriesInstanceUID: {listing}"
            )
        series_uid = next(iter(groups))
    elif series_uid not in groups:
        raise DicomSeriesError(
            f"{folder}: series_uid {series_uid!r} not found; present: {sorted(groups)}"
        )
    items = groups[series_uid]
    first_path, first = items[0]
    _check_modality(first, first_path, modalities)
    if len(items) == 1:
        # One file: a single slice or an enhanced multi-frame object.
        return load_dicom_file(first_path, modalities=modalities, progress=progress)

    iop = _float_list(first, "ImageOrientationPatient", 6, first_path)
    row_dir, col_dir = check_orientation(str(first_path), iop, error=DicomSeriesError)
    normal = np.cross(row_dir, col_dir)
    rows, cols = int(first.Rows), int(first.Columns)
    spacing = check_spacing(str(first_path), "PixelSpacing",
                            _float_list(first, "PixelSpacing", 2, first_path),
                            error=DicomSeriesError)
    positions = np.empty(len(items), dtype=np.float64)
    ipps = np.empty((len(items), 3), dtype=np.float64)
    for n, (path, ds) in enumerate(items):
        _check_modality(ds, path, modalities)
        other = _float_list(ds, "ImageOrientationPatient", 6, path)
        if 1 - float(np.dot(other[:3], row_dir)) > _IOP_TOL or (
            1 - float(np.dot(other[3:], col_dir)) > _IOP_TOL
        ):
            raise DicomSeriesError(
                f"{path}: orientation {other.round(4).tolist()} differs from "
                f"{iop.round(4).tolist()} in {first_path.name}: not one volume"
            )
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise DicomSeriesError(
                f"{path}: size {ds.Rows}x{ds.Columns} differs from {rows}x{cols}"
            )
        if not np.allclose(_float_list(ds, "PixelSpacing", 2, path), spacing, atol=1e-4):
            raise DicomSeriesError(f"{path}: PixelSpacing differs within the series")
        ipps[n] = _float_list(ds, "ImagePositionPatient", 3, path)
        positions[n] = float(np.dot(ipps[n], normal))
    order = np.argsort(positions, kind="stable")
    positions, ipps = positions[order], ipps[order]
    items = [items[o] for o in order]
    median_gap, issues = _gap_report(positions, folder)
    if issues and not allow_uneven:
        raise DicomSeriesError(
            f"{folder}: uneven slice spacing: " + "; ".join(issues)
            + " (load with allow_uneven=True to resample onto the median spacing)"
        )

    stack = np.empty((len(items), rows, cols), dtype=np.float64)
    for n, (path, _) in enumerate(items):
        ds = _dcmread(path, header_only=False)
        pix = _pixels(ds, path)
        if pix.shape != (rows, cols):
            raise DicomSeriesError(f"{path}: pixel data shape {pix.shape} is not {rows}x{cols}")
        stack[n] = pix
        if progress is not None and (n % 8 == 0 or n == len(items) - 1):
            progress(0.3 + 0.7 * (n + 1) / len(items), f"reading slices {n + 1}/{len(items)}")

    # Slice step: least-squares fit of IPP against the position along the normal, so
    # gantry tilt (in-plane drift of IPP per slice) is kept as shear; a slice off that
    # line is refused.
    rel = positions - positions[0]
    drift = check_slice_positions(str(folder), ipps, positions, float(spacing.min()),
                                  error=DicomSeriesError)
    if issues:
        new_pos = positions[0] + median_gap * np.arange(round(rel[-1] / median_gap) + 1)
        stack = _resample_slices(stack, positions, new_pos)
        issues.append(
            f"resampled {len(positions)} slices onto {len(new_pos)} at "
            f"{median_gap:.3f} mm by linear interpolation along the normal"
        )
    step = drift * median_gap
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, 0] = row_dir * spacing[1]  # i: along a row, column spacing
    ijk_to_lps[:3, 1] = col_dir * spacing[0]  # j: down a column, row spacing
    ijk_to_lps[:3, 2] = step
    ijk_to_lps[:3, 3] = ipps[0]
    for issue in issues:
        log.warning("%s: %s", folder, issue)
    volume = _volume(stack, ijk_to_lps, folder)
    log.info("loaded DICOM series %s: %s from %s", series_uid, volume.voxels.shape, folder)
    return DicomSeries(volume, series_uid, positions, tuple(issues))


def _resample_slices(
    stack: npt.NDArray[np.float64], pos: npt.NDArray[np.float64], new_pos: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    idx = np.clip(np.searchsorted(pos, new_pos, side="right") - 1, 0, len(pos) - 2)
    w = np.clip((new_pos - pos[idx]) / (pos[idx + 1] - pos[idx]), 0.0, 1.0)
    return stack[idx] * (1 - w)[:, None, None] + stack[idx + 1] * w[:, None, None]


def load_dicom_file(
    path: str | Path,
    *,
    modalities: Sequence[str] = ("CT",),
    progress: ProgressFn | None = None,
) -> DicomSeries:
    """Load one DICOM file: a single slice (a 1-slice volume, thickness from
    SliceThickness or 1 mm) or an enhanced multi-frame CT (per-frame positions).

    Raises:
        DicomSeriesError: unreadable file, wrong modality, missing geometry.
    """
    path = Path(path)
    if not path.is_file():
        raise DicomSeriesError(f"{path}: no such file")
    ds = _dcmread(path, header_only=False)
    _check_modality(ds, path, modalities)
    uid = str(getattr(ds, "SeriesInstanceUID", ""))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1 and "PerFrameFunctionalGroupsSequence" in ds:
        return _load_enhanced(ds, path, uid)
    iop = _float_list(ds, "ImageOrientationPatient", 6, path)
    check_orientation(str(path), iop, error=DicomSeriesError)
    ipp = _float_list(ds, "ImagePositionPatient", 3, path)
    spacing = check_spacing(str(path), "PixelSpacing", _float_list(ds, "PixelSpacing", 2, path),
                            error=DicomSeriesError)
    thickness = 1.0  # one slice: its thickness only sizes the voxel
    if getattr(ds, "SliceThickness", None) not in (None, "", 0):
        thickness = float(check_spacing(str(path), "SliceThickness", [ds.SliceThickness],
                                        error=DicomSeriesError)[0])
    pix = _pixels(ds, path)
    if pix.ndim == 2:
        pix = pix[None]
    if progress is not None:
        progress(1.0, "read 1 file")
    m = np.eye(4)
    m[:3, 0] = iop[:3] * spacing[1]
    m[:3, 1] = iop[3:] * spacing[0]
    m[:3, 2] = np.cross(iop[:3], iop[3:]) * thickness
    m[:3, 3] = ipp
    pos = np.array([float(np.dot(ipp, m[:3, 2])) / thickness])
    return DicomSeries(_volume(pix, m, path), uid, pos, ())


def _load_enhanced(ds: Any, path: Path, uid: str) -> DicomSeries:
    shared = getattr(ds, "SharedFunctionalGroupsSequence", [None])[0]
    per_frame = ds.PerFrameFunctionalGroupsSequence

    def group(frame: Any, name: str) -> Any:
        for src in (frame, shared):
            if src is not None and name in src:
                return getattr(src, name)[0]
        raise DicomSeriesError(f"{path}: enhanced CT without {name}")

    iop = _float_list(group(per_frame[0], "PlaneOrientationSequence"),
                      "ImageOrientationPatient", 6, path)
    check_orientation(str(path), iop, error=DicomSeriesError)
    spacing = check_spacing(
        str(path), "PixelSpacing",
        _float_list(group(per_frame[0], "PixelMeasuresSequence"), "PixelSpacing", 2, path),
        error=DicomSeriesError)
    ipps = np.array([
        _float_list(group(f, "PlanePositionSequence"), "ImagePositionPatient", 3, path)
        for f in per_frame
    ])
    normal = np.cross(iop[:3], iop[3:])
    positions = ipps @ normal
    order = np.argsort(positions, kind="stable")
    check_pixel_data_length(str(path), ds, error=DicomSeriesError)
    try:
        raw = np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as e:
        raise DicomSeriesError(f"{path}: cannot decode pixel data: {e}") from e
    if raw.ndim != 3 or raw.shape[0] != len(per_frame):
        raise DicomSeriesError(f"{path}: pixel data shape {raw.shape} does not hold "
                               f"{len(per_frame)} frames")
    slopes = np.ones(len(per_frame))
    inters = np.zeros(len(per_frame))
    for n, f in enumerate(per_frame):
        try:
            t = group(f, "PixelValueTransformationSequence")
        except DicomSeriesError:
            t = None
        slopes[n], inters[n] = _rescale(t, path, default=ds)
    stack = raw * slopes[:, None, None] + inters[:, None, None]
    stack, positions, ipps = stack[order], positions[order], ipps[order]
    issues: list[str] = []
    m = np.eye(4)
    m[:3, 0] = iop[:3] * spacing[1]
    m[:3, 1] = iop[3:] * spacing[0]
    if len(positions) > 1:
        _, issues = _gap_report(positions, path)
        if issues:
            raise DicomSeriesError(f"{path}: uneven frame spacing: " + "; ".join(issues))
        m[:3, 2] = (ipps[-1] - ipps[0]) / (len(ipps) - 1)
    else:
        m[:3, 2] = normal
    m[:3, 3] = ipps[0]
    return DicomSeries(_volume(stack, m, path), uid, positions, tuple(issues))


def load_ct(
    path: str | Path,
    *,
    series_uid: str | None = None,
    progress: ProgressFn | None = None,
    allow_uneven: bool = False,
) -> ImageVolume:
    """Load a CT from a NIfTI file, a DICOM series folder or a single DICOM file.

    Args:
        path: ``.nii``/``.nii.gz`` file, a folder of DICOM files, or one DICOM file.
        series_uid: for folders with several series.
        progress: optional ``progress(fraction, message)`` callback (DICOM only).
        allow_uneven: see :func:`load_dicom_series`.

    Returns:
        HU volume, ``voxels[k, j, i]``, ``ijk_to_lps`` in LPS mm.

    Raises:
        DicomSeriesError: (a ValueError) for anything that cannot be loaded; NIfTI
            errors are re-raised as this type with the original as cause.
    """
    p = Path(path)
    if p.is_dir():
        volume = load_dicom_series(
            p, series_uid, progress=progress, allow_uneven=allow_uneven
        ).volume
    elif not p.exists():
        raise DicomSeriesError(f"{p}: no such file or folder")
    elif p.name.endswith((".nii", ".nii.gz")):
        from guidance.io.nifti import NiftiError, load_nifti

        try:
            volume = load_nifti(p)
        except NiftiError as e:
            raise DicomSeriesError(str(e)) from e
    else:
        volume = load_dicom_file(p, progress=progress).volume
    return check_ct_volume(volume, str(p), error=DicomSeriesError)
