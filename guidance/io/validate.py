"""Validation of every loaded volume and document, before any computation.

One place for the checks every loader runs on what it read: a CT (finite HU after the
rescale, a rescale slope that is a finite non-zero number, spacing > 0 and finite, pixel
data as long as its header says, orthonormal orientation, consistent slice positions), a
label map (integer, 3D, on the CT's grid), a JSON document (size cap, strict JSON: no
``NaN``/``Infinity``, no duplicate keys), numbers and points in documents (finite, no
booleans as numbers), points inside a volume, and the guard that keeps a NaN from ever
reaching a clearance.

Every refusal is an :class:`InputError` (a ``ValueError``) whose one-line message names
the file, the field and the value: ``"ct/slice_0001.dcm: RescaleSlope must be a finite
non-zero number, got 0"``. Loaders raise their own subclass (``DicomSeriesError``,
``PlanError``...) through the ``error`` argument, so callers keep catching what they
caught; the CLI turns any of them into exit status 2.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from guidance.geometry import ImageVolume

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "InputError",
    "NonFiniteError",
    "check_ct_volume",
    "check_label_volume",
    "check_orientation",
    "check_pixel_data_length",
    "check_points_in_volume",
    "check_rescale",
    "check_slice_positions",
    "check_spacing",
    "finite_number",
    "holds_bool",
    "parse_json_document",
    "point3",
    "read_document_bytes",
    "read_json_document",
    "require_finite",
]

#: Largest JSON document (plan, configuration, calibration) read, bytes. Real ones are
#: kilobytes; a larger file is not one of them (or is padded to exhaust memory).
MAX_DOCUMENT_BYTES = 8 * 1024 * 1024

#: Largest deviation from unit length / orthogonality of DICOM direction cosines.
_ORTHO_TOL = 1e-3
#: Largest deviation of a slice's ImagePositionPatient from the straight line through
#: all of them, as a share of the in-plane pixel spacing.
_POSITION_TOL = 0.5


class InputError(ValueError):
    """An input file or value that is refused: one line naming the file, the field and
    the value. Loaders' own errors (``DicomSeriesError``, ``LabelMapError``,
    ``PlanError``, ``ConfigError``, ``CalibrationFileError``) derive from it."""


class NonFiniteError(ValueError):
    """A NaN or infinite value reached a computation that must never see one (a
    distance, a clearance, a margin). A bug or an unchecked input; never 'safe'."""


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -- documents ---------------------------------------------------------------------------


class _Constant(ValueError):
    """NaN, Infinity or -Infinity in a JSON text."""


def _no_constant(name: str) -> Any:
    raise _Constant(name)


def _nonfinite_at(o: Any, path: str = "") -> str | None:
    """The key path (``anatomy.roi_center_lps_mm[1]``) of the first NaN/infinity in ``o``."""
    if isinstance(o, float) and not math.isfinite(o):
        return path or "(the document)"
    items = (o.items() if isinstance(o, dict)
             else ((f"[{n}]", v) for n, v in enumerate(o)) if isinstance(o, list) else ())
    for key, value in items:
        sub = f"{path}{key}" if key.startswith("[") else (f"{path}.{key}" if path else key)
        found = _nonfinite_at(value, sub)
        if found is not None:
            return found
    return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def read_document_bytes(
    path: str | os.PathLike[str],
    what: str = "JSON file",
    *,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    error: type[InputError] = InputError,
) -> bytes:
    """The bytes of a document file, refused before reading when over ``max_bytes``.

    Raises:
        InputError (``error``): missing, a folder, unreadable, or too large; the message
            names the file.
    """
    p = Path(path)
    try:
        if p.is_dir():
            raise error(f"{p}: is a folder, not a {what}")
        size = p.stat().st_size
        if size > max_bytes:
            raise error(f"{p}: {size} bytes is more than a {what} can be "
                        f"({max_bytes} bytes at most)")
        return p.read_bytes()
    except FileNotFoundError:
        raise error(f"{p}: cannot read: no such {what}") from None
    except OSError as e:
        raise error(f"{p}: cannot read {what}: {e.strerror or e}") from None


def parse_json_document(
    raw: bytes, where: str, what: str = "JSON file", *, error: type[InputError] = InputError,
) -> Any:
    """Parse a document's bytes strictly: UTF-8, valid JSON, no ``NaN``/``Infinity``
    (the message names the key that holds one), no duplicate keys.

    Raises:
        InputError (``error``): naming ``where`` and the line and column or the key.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{where}: {what} is not UTF-8 text (byte {e.start})") from None
    try:
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except _Constant as e:
        try:  # once more, leniently, only to name the key
            key = _nonfinite_at(json.loads(text))
        except (ValueError, RecursionError):
            key = None
        raise error(f"{where}: {key or what}: {e} is not a number JSON allows (write a "
                    "number, or null where a value may be unknown)") from None
    except json.JSONDecodeError as e:
        raise error(f"{where}: invalid JSON at line {e.lineno} column {e.colno}: "
                    f"{e.msg}") from None
    except ValueError as e:
        raise error(f"{where}: {what}: {e}") from None
    except RecursionError:
        raise error(f"{where}: {what} is nested too deeply") from None


def read_json_document(
    path: str | os.PathLike[str],
    what: str = "JSON file",
    *,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    error: type[InputError] = InputError,
) -> Any:
    """Read a JSON document strictly (:func:`read_document_bytes`, then
    :func:`parse_json_document`).

    Args:
        path: the file.
        what: what it is, for messages (``"plan file"``, ``"config file"``).
        max_bytes: larger files are refused before they are read.
        error: the exception class raised.

    Returns:
        The parsed document (any JSON value; the caller checks its shape).

    Raises:
        InputError (``error``): missing or unreadable file, a file over ``max_bytes``,
            not UTF-8, invalid JSON (line and column), ``NaN``/``Infinity`` (naming the
            key), a duplicate key; the message names the file.
    """
    raw = read_document_bytes(path, what, max_bytes=max_bytes, error=error)
    return parse_json_document(raw, str(path), what, error=error)


def holds_bool(value: object) -> bool:
    """Whether ``value`` is, or (nested lists, an array) holds, a boolean: JSON's
    ``true`` converts silently to 1.0, so a document's numbers are checked for it."""
    if isinstance(value, (bool, np.bool_)):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype == np.bool_ or (value.dtype == object
                                           and any(holds_bool(v) for v in value.flat))
    return isinstance(value, (list, tuple)) and any(holds_bool(v) for v in value)


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)))


def finite_number(
    where: str, field: str, value: object, *, positive: bool = False,
    error: type[InputError] = InputError,
) -> float:
    """``value`` as a float: a number (not a boolean), finite, and > 0 with ``positive``.

    Raises:
        InputError (``error``): naming ``where``, ``field`` and the value.
    """
    if not _is_number(value):
        raise error(f"{where}: {field} must be a number, got {_short(value)}")
    v = float(value)  # type: ignore[arg-type]
    if not math.isfinite(v):
        raise error(f"{where}: {field} must be finite, got {_short(value)}")
    if positive and not v > 0:
        raise error(f"{where}: {field} must be > 0, got {_short(value)}")
    return v


def point3(
    where: str, field: str, value: object, *, error: type[InputError] = InputError,
) -> npt.NDArray[np.float64]:
    """A document's point: a list of 3 finite numbers (booleans are not numbers).

    Returns:
        (3,) float64.

    Raises:
        InputError (``error``): naming ``where``, ``field`` and the value.
    """
    seq = value.tolist() if isinstance(value, np.ndarray) else value
    if not (isinstance(seq, (list, tuple)) and len(seq) == 3
            and all(_is_number(v) for v in seq)):
        raise error(f"{where}: {field} must be 3 finite numbers (LPS mm), got "
                    f"{_short(value)}")
    p = np.array(seq, dtype=np.float64)
    if not np.all(np.isfinite(p)):
        raise error(f"{where}: {field} must be 3 finite numbers (LPS mm), got {_short(value)}")
    return p


# -- DICOM geometry and pixel values -----------------------------------------------------


def check_rescale(
    where: str, slope: object, intercept: object, *, error: type[InputError] = InputError,
) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept as floats (absent: 1 and 0).

    A slope of 0 maps every voxel to the intercept (a blank CT), and NaN makes every
    voxel NaN: both are refused, never replaced by a default.

    Raises:
        InputError (``error``): a slope that is not a finite non-zero number, an
            intercept that is not finite.
    """
    try:
        s = 1.0 if slope is None else float(slope)  # type: ignore[arg-type]
        b = 0.0 if intercept is None else float(intercept)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise error(f"{where}: RescaleSlope/RescaleIntercept must be numbers, got "
                    f"{_short(slope)} and {_short(intercept)}") from None
    if not math.isfinite(s) or s == 0.0:
        raise error(f"{where}: RescaleSlope must be a finite non-zero number, got {slope}")
    if not math.isfinite(b):
        raise error(f"{where}: RescaleIntercept must be finite, got {intercept}")
    return s, b


def check_spacing(
    where: str, field: str, spacing: npt.ArrayLike, *, error: type[InputError] = InputError,
) -> npt.NDArray[np.float64]:
    """Pixel or voxel spacing: every value finite and > 0 (mm).

    Raises:
        InputError (``error``): naming the field and the values.
    """
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise error(f"{where}: {field} must be finite and > 0 mm, got {sp.tolist()}")
    return sp


def check_orientation(
    where: str, iop: npt.ArrayLike, *, error: type[InputError] = InputError,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """ImageOrientationPatient: two orthogonal unit vectors (row, column direction).

    Raises:
        InputError (``error``): not 6 finite values, not unit length, not orthogonal.
    """
    v = np.asarray(iop, dtype=np.float64).reshape(-1)
    if v.shape != (6,) or not np.all(np.isfinite(v)):
        raise error(f"{where}: ImageOrientationPatient must be 6 finite values, "
                    f"got {v.tolist()}")
    row, col = v[:3], v[3:]
    norms = (float(np.linalg.norm(row)), float(np.linalg.norm(col)))
    if max(abs(n - 1.0) for n in norms) > _ORTHO_TOL:
        raise error(f"{where}: ImageOrientationPatient is not two unit vectors (lengths "
                    f"{norms[0]:.4f}, {norms[1]:.4f}), got {v.tolist()}")
    dot = float(row @ col)
    if abs(dot) > _ORTHO_TOL:
        raise error(f"{where}: ImageOrientationPatient rows and columns are not "
                    f"orthogonal (cosine {dot:.4f}), got {v.tolist()}")
    return row, col


def check_pixel_data_length(
    where: str, ds: Any, *, error: type[InputError] = InputError,
) -> None:
    """Uncompressed PixelData holds Rows x Columns x frames x samples x bytes per sample
    (a trailing pad byte allowed); compressed data is left to its decoder.

    Raises:
        InputError (``error``): naming both lengths.
    """
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            return
        raise error(f"{where}: no PixelData")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and getattr(ts, "is_encapsulated", False):
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as e:
        raise error(f"{where}: Rows/Columns/BitsAllocated missing or not integers ({e})") \
            from None
    if min(rows, cols, frames, samples) < 1 or bits not in (1, 8, 16, 32, 64):
        raise error(f"{where}: Rows {rows}, Columns {cols}, NumberOfFrames {frames}, "
                    f"BitsAllocated {bits}: not an image")
    expected = (rows * cols * frames * samples * bits + 7) // 8
    have = len(ds.PixelData)
    if have < expected or have > expected + 1:
        raise error(f"{where}: PixelData has {have} bytes, Rows x Columns x frames = "
                    f"{rows} x {cols} x {frames} at {bits} bits needs {expected}")


def check_slice_positions(
    where: str, ipps: npt.ArrayLike, positions_mm: npt.ArrayLike, pixel_spacing_mm: float,
    *, error: type[InputError] = InputError,
) -> npt.NDArray[np.float64]:
    """The slices' ImagePositionPatient lie on one straight line (a volume, possibly
    with gantry tilt), ordered by their position along the slice normal.

    Args:
        ipps: (K, 3) positions, LPS mm, in the order of ``positions_mm``.
        positions_mm: (K,) position along the slice normal, increasing.
        pixel_spacing_mm: the smaller in-plane spacing (sets the tolerance).

    Returns:
        (3,) mm of ImagePositionPatient per mm along the normal (the slice direction,
        sheared by gantry tilt).

    Raises:
        InputError (``error``): non-finite positions, or a slice off the line by more
            than half a pixel (slices of different volumes mixed in one series).
    """
    p = np.asarray(ipps, dtype=np.float64)
    s = np.asarray(positions_mm, dtype=np.float64)
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(s))):
        raise error(f"{where}: ImagePositionPatient must be finite")
    rel = s - s[0]
    design = np.stack([np.ones_like(rel), rel], axis=1)
    coef = np.linalg.lstsq(design, p, rcond=None)[0]
    off = np.linalg.norm(design @ coef - p, axis=1)
    worst = int(np.argmax(off))
    if off[worst] > _POSITION_TOL * pixel_spacing_mm:
        raise error(f"{where}: slice at {s[worst]:.2f} mm is {off[worst]:.2f} mm off the line "
                    f"of the other slices' ImagePositionPatient {p[worst].round(2).tolist()}: "
                    "not one volume")
    drift: npt.NDArray[np.float64] = coef[1]
    return drift


# -- volumes ------------------------------------------------------------------------------


def _check_geometry(volume: ImageVolume, where: str, error: type[InputError]) -> None:
    m = volume.ijk_to_lps
    spacing = np.sqrt((m[:3, :3] ** 2).sum(axis=0))
    check_spacing(where, "voxel spacing (i, j, k)", spacing, error=error)
    # Axes that are nearly collinear are a broken header, not a volume: the unit axes'
    # determinant is 1 for orthogonal axes and 0 for collinear ones (gantry tilt of
    # 30 degrees gives 0.87).
    det = abs(float(np.linalg.det(m[:3, :3]))) / float(np.prod(spacing))
    if det < 0.5:
        raise error(f"{where}: voxel axes are nearly collinear (unit-axis determinant "
                    f"{det:.3f}): not a volume")
    if any(n < 1 for n in volume.voxels.shape[:3]):
        raise error(f"{where}: empty volume, shape {volume.voxels.shape}")


def check_ct_volume(
    volume: ImageVolume, where: str, *, error: type[InputError] = InputError,
) -> ImageVolume:
    """A CT as loaded: 3D scalar, every voxel finite, spacing finite and > 0, axes not
    collinear.

    Returns:
        ``volume`` unchanged.

    Raises:
        InputError (``error``): naming ``where``, what is wrong and the value (the count
            and first index of non-finite voxels).
    """
    v = volume.voxels
    if v.ndim != 3:
        raise error(f"{where}: a CT must be a 3D scalar volume, got shape {v.shape}")
    if v.dtype.kind not in "iuf":
        raise error(f"{where}: CT voxels must be numbers, got dtype {v.dtype}")
    _check_geometry(volume, where, error)
    if v.dtype.kind == "f":
        bad = ~np.isfinite(v)
        if bad.any():
            k, j, i = (int(x) for x in np.argwhere(bad)[0])
            raise error(f"{where}: {int(bad.sum())} voxel(s) are not finite (e.g. "
                        f"{v[k, j, i]} at i={i}, j={j}, k={k}): a damaged CT is never planned")
    return volume


def check_label_volume(
    volume: ImageVolume, where: str, *, error: type[InputError] = InputError,
) -> ImageVolume:
    """A label map as loaded: 3D, integer labels (whole-valued floats are converted),
    spacing finite and > 0.

    Returns:
        the volume with integer voxels.

    Raises:
        InputError (``error``): non-integer values, a non-numeric dtype, bad geometry.
    """
    from guidance.geometry import ImageVolume

    v = volume.voxels
    if v.ndim != 3:
        raise error(f"{where}: a label map must be a 3D scalar volume, got shape {v.shape}")
    _check_geometry(volume, where, error)
    if v.dtype.kind == "f":
        whole = np.isfinite(v) & (v == np.round(v))
        if not whole.all():
            k, j, i = (int(x) for x in np.argwhere(~whole)[0])
            raise error(f"{where}: label map has non-integer values (e.g. {v[k, j, i]} at "
                        f"i={i}, j={j}, k={k}): is it an image?")
        if v.size and (v.min() < np.iinfo(np.int32).min or v.max() > np.iinfo(np.int32).max):
            raise error(f"{where}: label values out of range ({v.min()}..{v.max()})")
        return ImageVolume(v.astype(np.int32), volume.ijk_to_lps)
    if v.dtype.kind not in "iu":
        raise error(f"{where}: label map dtype {v.dtype} is not integer")
    return volume


def check_points_in_volume(
    where: str, points: Mapping[str, npt.ArrayLike] | Sequence[tuple[str, npt.ArrayLike]],
    volume: ImageVolume, *, what: str = "CT", tol_mm: float = 1.0,
    error: type[InputError] = InputError,
) -> None:
    """Every named point lies inside the volume (its voxels' extent, plus ``tol_mm``).

    Args:
        points: name -> (3,) LPS mm.
        volume: the CT (or a label map on its grid).
        what: the volume's name in messages.

    Raises:
        InputError (``error``): naming the point, its coordinates and how far outside.
    """
    items = points.items() if isinstance(points, Mapping) else points
    spacing = volume.spacing_mm
    hi = np.array(volume.size_ijk, dtype=np.float64) - 0.5
    for name, value in items:
        p = np.asarray(value, dtype=np.float64).reshape(1, 3)
        ijk = volume.lps_to_ijk_points(p)[0]
        below = np.maximum(-0.5 - ijk, 0.0)
        above = np.maximum(ijk - hi, 0.0)
        outside_mm = float(np.linalg.norm((below + above) * spacing))
        if not math.isfinite(outside_mm) or outside_mm > tol_mm:
            raise error(f"{where}: {name} {np.round(p[0], 1).tolist()} LPS mm is "
                        f"{outside_mm:.0f} mm outside the {what} (a plan for another scan?)")


# -- the guard before clearances ------------------------------------------------------------


def require_finite(what: str, values: npt.ArrayLike) -> None:
    """Raise :class:`NonFiniteError` if ``values`` holds a NaN or infinity.

    Used where distances, clearances and margins are computed: a NaN compares false with
    every threshold, so it would read as 'no warning'.
    """
    a = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise NonFiniteError(f"{what}: {int(np.count_nonzero(~np.isfinite(a)))} of "
                             f"{a.size} values are not finite: refusing to compute a clearance")
