"""Real needle-free images from installed data packages, for measuring false needle detections.

A needle model must not report needles where there are none. These frames are real
images with no needle in them:

- ``"us"``: every ultrasound file of ``pydicom-data`` listed in :data:`_PYDICOM_US` (one
  encoding per distinct image) and every file of ``deid-data`` whose Modality is US
  (including the cines zipped in the package, read from the zip in memory). Colour
  (RGB, YBR, palette) is converted to grey (ITU-R BT.601 luma). When the file has a
  SequenceOfUltrasoundRegions, each frame is cropped to its 2D tissue (B-mode) region:
  the largest one, plus any other of at least 80 % of its area that does not overlap it
  (dual views); regions of other data types (colour flow, spectral Doppler, waveforms)
  are never used, and a file with regions but no 2D tissue region is skipped. Spacing
  is PhysicalDeltaX/Y (cm -> mm) when the region says cm and X and Y agree within 2 %,
  else NaN. Without regions the whole frame is used (annotations included) and spacing
  is NaN. Colour-flow overlays inside a B-mode image (``US1_UNCR.dcm``,
  ``color-pl.dcm``) stay, as their grey.
- ``"fluoro"``: the real projection radiographs (Modality CR/DX/XA/RF) of both packages:
  ``RG1_UNCR.dcm`` (chest PA), ``RG3_UNCR.dcm`` (extremity) and deid-data's
  ``animals/cat.dcm`` (DX, lateral thorax of a cat). There is no real fluoroscopy in any
  package, so each radiograph gives the whole image plus 4 fixed crops the size of a
  fluoroscopy field of view (:data:`FLUORO_CROPS`: 150-230 mm), labelled ``crop n`` in
  ``source``. Display as a radiograph: Modality LUT (rescale), VOI (window or VOI LUT
  sequence; 0.5-99.5 % percentiles without one), MONOCHROME1 inverted, so that bone is
  bright; output uint16 0-65535 like the simulated fluoroscopy.
- ``"ct"``: real CT slices (no needle): ``CT_small.dcm``, ``693_UNCR.dcm``,
  ``J2K_pixelrep_mismatch.dcm``, ``bad_sequence.dcm`` (neck, decodes despite its broken
  sequence), ``explicit_VR-UN.dcm`` (abdomen) from pydicom-data, and InVesalius'
  ``Cranium.inv3`` head CT (every 4th slice) when ``invesalius-examples`` is installed.
  HU = stored * RescaleSlope + RescaleIntercept, clipped to [-1024, 3071], int16.
  Skipped on purpose: ``eCT_Supplemental.dcm`` (a derived perfusion map, not HU) and
  deid-data's ``ctbrain*.dcm`` (8-bit colour secondary captures, not HU).

Files are only read from installed packages (``get_testdata_file(name,
download=False)``): nothing is downloaded. A file that cannot be read or decoded is
skipped with a warning naming it, and counted (:func:`describe_sources`).

Licences: pydicom-data is MIT (its package metadata and LICENSE, "Dicom in Python");
its files are public DICOM test images. deid-data is MIT (Copyright 2016-2022 Vanessa
Sochat). invesalius-examples (Debian) is the InVesalius project's example data, GPL-2
(its ``/usr/share/doc/invesalius-examples/copyright``).
"""

from __future__ import annotations

import functools
import gzip
import io
import logging
import math
import plistlib
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from guidance.io.validate import check_rescale
from guidance.records import MODALITIES
from guidance.training.real_sources import (
    _INVESALIUS_STEP,
    _Source,
    _sources,
)

__all__ = [
    "FLUORO_CROPS",
    "MODALITIES",
    "PlacedFrame",
    "RealFrame",
    "describe_sources",
    "dicom_file_frames",
    "needle_free_frames",
]

log = logging.getLogger(__name__)


#: Fluoroscopy-sized crops of each radiograph: (centre column, centre row) as fractions
#: of the image, and the field of view in mm.
FLUORO_CROPS: tuple[tuple[float, float, float], ...] = (
    (0.50, 0.50, 230.0),
    (0.50, 0.35, 150.0),
    (0.42, 0.62, 180.0),
    (0.60, 0.55, 200.0),
)
#: Pixel size assumed only to size the crops of radiographs without a spacing (RG1 and
#: RG3 carry none; RG1's collimator edges in mm suggest 0.2 mm). The frames' own
#: ``spacing_mm`` stays NaN.
_NOMINAL_RADIOGRAPH_MM = 0.2

_CT_MIN_HU, _CT_MAX_HU = -1024.0, 3071.0


@dataclass(frozen=True, eq=False)
class RealFrame:
    """One real needle-free image.

    Attributes:
        image: (rows, cols), read-only. ``"us"``: uint8 grey; ``"fluoro"``: uint16
            display (bone bright, 0-65535); ``"ct"``: int16 HU in [-1024, 3071].
        spacing_mm: pixel spacing, mm (NaN when the file does not give it).
        source: where it comes from, e.g. ``"pydicom-data:US1_UNCR.dcm frame 0"``.
        licence: licence of the data package.
    """

    image: np.ndarray
    spacing_mm: float
    source: str
    licence: str


@dataclass(frozen=True, eq=False)
class PlacedFrame:
    """A frame of a DICOM file and where it lies in the stored frame.

    Attributes:
        frame: the image as the real-image check uses it.
        index: frame number in the file (0-based).
        box: (x0, y0, x1, y1), inclusive, of the stored frame's pixels it shows (an
            ultrasound B-mode region), or None: the whole stored frame.
    """

    frame: RealFrame
    index: int
    box: tuple[int, int, int, int] | None


@dataclass(frozen=True)
class _FileReport:
    source: _Source
    frames: int
    error: str



# -- decoding -----------------------------------------------------------------------


def _read(src: _Source) -> Any:
    import pydicom

    if src.member is None:
        return pydicom.dcmread(str(src.path))
    with zipfile.ZipFile(src.path) as zf:
        data = zf.read(src.member)
    return pydicom.dcmread(io.BytesIO(data))


def _n_frames(ds: Any) -> int:
    return max(int(getattr(ds, "NumberOfFrames", 1) or 1), 1)


def _frame_indices(n: int, max_frames: int | None) -> list[int]:
    if max_frames is None or max_frames >= n:
        return list(range(n))
    return sorted({round(float(x)) for x in np.linspace(0, n - 1, max_frames)})


def _decode_frame(ds: Any, index: int) -> np.ndarray:
    """Stored pixels of one frame: (rows, cols) or (rows, cols, 3) RGB (palette and YBR
    converted)."""
    try:
        from pydicom.pixels import apply_color_lut, convert_color_space, pixel_array

        arr = pixel_array(ds, index=index)  # YBR is converted to RGB by default
        converted = True
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import (  # type: ignore[no-redef]
            apply_color_lut,
            convert_color_space,
        )

        full = ds.pixel_array
        arr = full[index] if _n_frames(ds) > 1 else full
        converted = False
    pi = str(getattr(ds, "PhotometricInterpretation", "")).strip()
    if pi == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    elif pi.startswith("YBR") and not converted:
        arr = convert_color_space(arr, pi, "RGB")
    return np.asarray(arr)


def _to_grey_u8(arr: np.ndarray, ds: Any) -> npt.NDArray[np.uint8]:
    if arr.ndim == 3:
        top = 65535.0 if arr.dtype.itemsize > 1 else 255.0
        grey = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        grey *= np.float32(255.0 / top)
    else:
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        grey = arr.astype(np.float32) * np.float32(255.0 / (2**bits - 1))
    out: npt.NDArray[np.uint8] = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return out


def _us_regions(ds: Any, rows: int, cols: int) -> list[tuple[int, int, int, int, float]] | None:
    """(x0, y0, x1, y1 inclusive, spacing mm) of the 2D tissue regions to use; None when
    the file has no region sequence; [] when it has regions but none is 2D tissue."""
    seq = getattr(ds, "SequenceOfUltrasoundRegions", None)
    if not seq:
        return None
    for r in seq:
        # A region beyond the pixel matrix means the sequence was copied from another
        # image size (examples_ybr_color.dcm): its crop and spacing would be wrong.
        if int(r.RegionLocationMaxX1) >= cols or int(r.RegionLocationMaxY1) >= rows:
            log.info("ultrasound regions exceed the %dx%d image; using the whole frame",
                     cols, rows)
            return None
    cands = []
    for r in seq:
        if int(getattr(r, "RegionSpatialFormat", -1)) != 1:
            continue
        if int(getattr(r, "RegionDataType", -1)) != 1:
            continue
        x0 = max(int(r.RegionLocationMinX0), 0)
        y0 = max(int(r.RegionLocationMinY0), 0)
        x1, y1 = int(r.RegionLocationMaxX1), int(r.RegionLocationMaxY1)
        if x1 - x0 < 16 or y1 - y0 < 16:
            continue
        spacing = float("nan")
        ux = int(getattr(r, "PhysicalUnitsXDirection", 0))
        uy = int(getattr(r, "PhysicalUnitsYDirection", 0))
        dx = abs(float(getattr(r, "PhysicalDeltaX", 0.0) or 0.0))
        dy = abs(float(getattr(r, "PhysicalDeltaY", 0.0) or 0.0))
        if ux == 3 and uy == 3 and dx > 0 and dy > 0 and abs(dx - dy) <= 0.02 * max(dx, dy):
            spacing = 10.0 * math.sqrt(dx * dy)  # cm -> mm
        cands.append((x0, y0, x1, y1, spacing))
    cands.sort(key=lambda c: -(c[2] - c[0] + 1) * (c[3] - c[1] + 1))
    chosen: list[tuple[int, int, int, int, float]] = []
    for c in cands:
        area = (c[2] - c[0] + 1) * (c[3] - c[1] + 1)
        if chosen:
            big = chosen[0]
            if area < 0.8 * (big[2] - big[0] + 1) * (big[3] - big[1] + 1):
                continue
            if any(c[0] <= o[2] and o[0] <= c[2] and c[1] <= o[3] and o[1] <= c[3]
                   for o in chosen):
                continue
        chosen.append(c)
    return chosen


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def _us_placed(src: _Source, max_frames: int | None) -> list[PlacedFrame]:
    ds = _read(src)
    rows, cols = int(ds.Rows), int(ds.Columns)
    regions = _us_regions(ds, rows, cols)
    if regions == []:
        log.info("%s:%s has no 2D tissue region (Doppler only?); skipped",
                 src.package, src.label)
        return []
    out: list[PlacedFrame] = []
    n = _n_frames(ds)
    for f in _frame_indices(n, max_frames):
        grey = _to_grey_u8(_decode_frame(ds, f), ds)
        if regions is None:
            out.append(PlacedFrame(RealFrame(_frozen(grey), float("nan"),
                                             f"{src.package}:{src.label} frame {f}",
                                             src.licence), f, None))
            continue
        for k, (x0, y0, x1, y1, spacing) in enumerate(regions):
            tag = f" region {k}" if len(regions) > 1 else ""
            out.append(PlacedFrame(
                RealFrame(_frozen(grey[y0:y1 + 1, x0:x1 + 1]), spacing,
                          f"{src.package}:{src.label} frame {f}{tag}", src.licence),
                f, (x0, y0, x1, y1)))
    return out


def _us_frames(src: _Source, max_frames: int | None) -> list[RealFrame]:
    return [p.frame for p in _us_placed(src, max_frames)]


def _spacing(ds: Any) -> float:
    for tag in ("ImagerPixelSpacing", "PixelSpacing"):
        value = getattr(ds, tag, None)
        if value is None:
            continue
        try:
            sp = [float(v) for v in value]
        except (TypeError, ValueError):
            continue
        if len(sp) == 2 and all(np.isfinite(sp)) and min(sp) > 0:
            return float(math.sqrt(sp[0] * sp[1]))
    return float("nan")


def _radiograph_display(ds: Any, arr: np.ndarray) -> npt.NDArray[np.uint16]:
    """Modality LUT, VOI, MONOCHROME1 inversion -> uint16 with bone bright."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import (  # type: ignore[no-redef]
            apply_modality_lut,
            apply_voi_lut,
        )
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if "VOILUTSequence" in ds:
        values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        wc, ww = ds.WindowCenter, ds.WindowWidth
        c = float(wc[0] if isinstance(wc, Sequence) and not isinstance(wc, str) else wc)
        w = float(ww[0] if isinstance(ww, Sequence) and not isinstance(ww, str) else ww)
        lo, hi = c - 0.5 * w, c + 0.5 * w
    else:
        lo, hi = (float(x) for x in np.percentile(values, [0.5, 99.5]))
    if hi <= lo:
        hi = lo + 1.0
    disp = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    if str(getattr(ds, "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        disp = 1.0 - disp  # MONOCHROME1: low values are white
    out: npt.NDArray[np.uint16] = np.rint(disp * 65535.0).astype(np.uint16)
    return out


def _fluoro_frames(src: _Source, max_frames: int | None) -> list[RealFrame]:
    ds = _read(src)
    spacing = _spacing(ds)
    out: list[RealFrame] = []
    for f in _frame_indices(_n_frames(ds), max_frames):
        raw = _decode_frame(ds, f)
        if raw.ndim != 2:
            raise ValueError(f"expected a grey radiograph, got pixel shape {raw.shape}")
        disp = _radiograph_display(ds, raw)
        name = f"{src.package}:{src.label} frame {f}"
        out.append(RealFrame(_frozen(disp), spacing, f"{name} whole", src.licence))
        px_mm = spacing if np.isfinite(spacing) else _NOMINAL_RADIOGRAPH_MM
        rows, cols = disp.shape
        for k, (fx, fy, fov_mm) in enumerate(FLUORO_CROPS):
            side = min(round(fov_mm / px_mm), rows, cols)
            x0 = int(np.clip(round(fx * cols - side / 2), 0, cols - side))
            y0 = int(np.clip(round(fy * rows - side / 2), 0, rows - side))
            crop = disp[y0:y0 + side, x0:x0 + side]
            assumed = "" if np.isfinite(spacing) else f" assuming {px_mm} mm/px"
            out.append(RealFrame(
                _frozen(crop), spacing,
                f"{name} crop {k} (~{fov_mm:.0f} mm field at x{x0} y{y0}{assumed})",
                src.licence,
            ))
    return out


def _hu(values: np.ndarray) -> npt.NDArray[np.int16]:
    out: npt.NDArray[np.int16] = np.clip(np.rint(values), _CT_MIN_HU, _CT_MAX_HU).astype(
        np.int16
    )
    return out


def _ct_frames(src: _Source, max_frames: int | None) -> list[RealFrame]:
    if src.package == "invesalius-examples":
        return _invesalius_frames(src, max_frames)
    ds = _read(src)
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise ValueError("colour pixel data is not CT HU")
    # A slope of 0 or NaN is a broken file (skipped by _load), never replaced by 1.
    slope, intercept = check_rescale(f"{src.package}:{src.label}",
                                     getattr(ds, "RescaleSlope", None),
                                     getattr(ds, "RescaleIntercept", None))
    spacing = _spacing(ds)
    out = []
    for f in _frame_indices(_n_frames(ds), max_frames):
        raw = _decode_frame(ds, f).astype(np.float64)
        out.append(RealFrame(_frozen(_hu(raw * slope + intercept)), spacing,
                             f"{src.package}:{src.label} frame {f}", src.licence))
    return out


def _invesalius_frames(src: _Source, max_frames: int | None) -> list[RealFrame]:
    """Axial slices of InVesalius' Cranium.inv3 (gzip tar: main.plist, matrix.dat)."""
    with gzip.open(src.path, "rb") as gz, tarfile.open(fileobj=io.BytesIO(gz.read())) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        plist_fh = tar.extractfile(members["main.plist"])
        if plist_fh is None:
            raise ValueError("main.plist unreadable")
        meta = plistlib.load(plist_fh)
        matrix = meta.get("matrix", meta)
        shape = tuple(int(x) for x in matrix["shape"])
        spacing_xyz = [float(x) for x in meta.get("spacing", matrix.get("spacing", []))]
        fname = Path(str(matrix.get("filename", "matrix.dat"))).name
        dtype = np.dtype(str(matrix.get("dtype", "int16")))
        data_fh = tar.extractfile(members[fname])
        if data_fh is None:
            raise ValueError(f"{fname} unreadable")
        vol = np.frombuffer(data_fh.read(), dtype=dtype).reshape(shape)
    spacing = (math.sqrt(spacing_xyz[0] * spacing_xyz[1]) if len(spacing_xyz) >= 2
               else float("nan"))
    ks = list(range(0, vol.shape[0], _INVESALIUS_STEP))
    if max_frames is not None:
        ks = [ks[i] for i in _frame_indices(len(ks), max_frames)]
    return [
        RealFrame(_frozen(_hu(vol[k].astype(np.float64))), spacing,
                  f"{src.package}:{src.label} slice {k}", src.licence)
        for k in ks
    ]


_LOADERS = {"us": _us_frames, "fluoro": _fluoro_frames, "ct": _ct_frames}


def _load(
    modality: str, sources: Sequence[_Source], max_frames: int | None
) -> tuple[list[RealFrame], list[_FileReport]]:
    """Frames of every readable source; a file that fails is logged, counted, skipped."""
    loader = _LOADERS[modality]
    frames: list[RealFrame] = []
    reports: list[_FileReport] = []
    for src in sources:
        try:
            got = loader(src, max_frames)
        except Exception as e:  # pydicom raises many types for broken files
            log.warning("skipped %s:%s (%s): %s: %s", src.package, src.label, src.path,
                        type(e).__name__, e)
            reports.append(_FileReport(src, 0, f"{type(e).__name__}: {e}"))
            continue
        frames += got
        reports.append(_FileReport(src, len(got), ""))
    n_failed = sum(1 for r in reports if r.error)
    log.info("%s needle-free frames: %d from %d files (%d failed)", modality, len(frames),
             len(reports) - n_failed, n_failed)
    return frames, reports


def _check_args(modality: object, max_frames_per_file: object) -> None:
    if not isinstance(modality, str):
        raise TypeError(f"modality must be a str, got {type(modality).__name__}")
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if max_frames_per_file is not None:
        if not isinstance(max_frames_per_file, int) or isinstance(max_frames_per_file, bool):
            raise TypeError(
                f"max_frames_per_file must be an int or None, got {max_frames_per_file!r}"
            )
        if max_frames_per_file < 1:
            raise ValueError(f"max_frames_per_file must be >= 1, got {max_frames_per_file}")


@functools.lru_cache(maxsize=8)
def _cached(
    modality: str, max_frames: int | None
) -> tuple[tuple[RealFrame, ...], tuple[_FileReport, ...]]:
    frames, reports = _load(modality, _sources(modality), max_frames)
    return tuple(frames), tuple(reports)


def needle_free_frames(modality: str, max_frames_per_file: int | None = None) -> list[RealFrame]:
    """Real images with no needle, for measuring how often a model reports one.

    Results are cached per (modality, max_frames_per_file); images are read-only.

    Args:
        modality: ``"us"``, ``"fluoro"`` or ``"ct"`` (see the module docstring).
        max_frames_per_file: take at most this many frames of a multi-frame file, evenly
            spread (None: all). Fluoroscopy crops and ultrasound regions of a kept frame
            do not count against it.

    Returns:
        Frames in a stable order (by package, file, frame).

    Raises:
        TypeError: arguments of the wrong type.
        ValueError: unknown modality, or max_frames_per_file < 1.
    """
    _check_args(modality, max_frames_per_file)
    return list(_cached(modality, max_frames_per_file)[0])


def describe_sources(
    modality: str, max_frames_per_file: int | None = None
) -> list[dict[str, object]]:
    """Per source file, for an evaluation report (JSON-ready).

    Returns:
        One dict per file: ``file`` (``package:name``), ``path``, ``frames`` (frames it
        gave, crops and regions included), ``licence``, ``error`` (empty when it loaded).

    Raises:
        TypeError, ValueError: as :func:`needle_free_frames`.
    """
    _check_args(modality, max_frames_per_file)
    return [
        {
            "file": f"{r.source.package}:{r.source.label}",
            "path": str(r.source.path),
            "frames": r.frames,
            "licence": r.source.licence,
            "error": r.error,
        }
        for r in _cached(modality, max_frames_per_file)[1]
    ]


def dicom_file_frames(path: Path, modality: str) -> list[PlacedFrame]:
    """Every frame of one DICOM file, decoded as the real-image check decodes the
    packages' files (``guidance eval --images``: a site's own annotated images).

    Ultrasound: grey, cropped to the 2D tissue region(s) when the file has a
    SequenceOfUltrasoundRegions (``box`` says where). Fluoroscopy: the radiograph
    display (bone bright), whole frame only (no fixed crops). CT: HU.

    Args:
        path: the DICOM file.
        modality: ``"us"``, ``"fluoro"`` or ``"ct"``.

    Returns:
        The frames in file order (``[]`` for an ultrasound file without a 2D region).

    Raises:
        ValueError: unknown modality, or a file pydicom cannot read or decode (the
            message names the file).
    """
    _check_args(modality, None)
    src = _Source("site", Path(path).name, Path(path), "site data")
    try:
        if modality == "us":
            return _us_placed(src, None)
        got = _ct_frames(src, None) if modality == "ct" else [
            f for f in _fluoro_frames(src, None) if f.source.endswith(" whole")]
    except Exception as e:  # pydicom raises many types for broken files
        raise ValueError(f"{path}: not a readable {modality} DICOM image: "
                         f"{type(e).__name__}: {e}") from e
    return [PlacedFrame(f, k, None) for k, f in enumerate(got)]
