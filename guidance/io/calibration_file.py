"""Calibration result files: writing the document and loading it back, validated.

A calibration file is one JSON object (format in ``calibration/FORMATS.md``)::

    {"format": "guidance-calibration", "format_version": 1, "kind": "pivot",
     "transforms": {"StylusTipToStylus": [[...4x4...]]},
     "provenance": {"created_utc": ..., "input_sha256": ..., ...},
     ...kind-specific figures (tip_offset_mm, rms_mm, ...)}

:func:`load_calibration` refuses unknown keys, missing keys, wrong shapes, non-finite
numbers, transform names not in ``FromToTo`` form and non-rigid transforms; every error
names the file and the key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from calibration.rigid import validate_rigid
from guidance.io.validate import InputError, holds_bool, read_json_document
from trackers.transform_graph import TransformGraph, parse_transform_name

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KINDS",
    "OPTIONAL",
    "CalibrationFile",
    "CalibrationFileError",
    "Provenance",
    "load_calibration",
    "make_document",
    "validate_document",
]

FORMAT_NAME = "guidance-calibration"
FORMAT_VERSION = 1

# Value specs: "float", "bool", "int", "str", or a shape tuple where -1 is "any length".
_Spec = str | tuple[int, ...]

#: Required kind-specific keys and their specs, per kind.
KINDS: Mapping[str, Mapping[str, _Spec]] = MappingProxyType(
    {
        "pivot": {
            "tip_offset_mm": (3,),
            "pivot_point_mm": (3,),
            "rms_mm": "float",
            "residuals_mm": (-1,),
            "angular_range_deg": "float",
            "tip_offset_std_mm": (3,),
            "condition_number": "float",
            "n_poses": "int",
            "n_inliers": "int",
        },
        "spin": {
            "axis_tool": (3,),
            "axis_point_tool_mm": (3,),
            "spin_range_deg": "float",
            "wobble_rms_deg": "float",
            "line_rms_mm": "float",
            "n_poses": "int",
        },
        "register": {
            "moving_to_fixed": (4, 4),
            "fre_mm": "float",
            "residuals_mm": (-1,),
            "fle_mm": "float",
            "fle_estimated": "bool",
            "targets_mm": (-1, 3),
            "expected_tre_mm": (-1,),
        },
        "probe": {
            "image_to_probe": (4, 4),
            "pixel_spacing_mm": (2,),
            "rms_mm": "float",
            "in_plane_rms_mm": "float",
            "out_of_plane_rms_mm": "float",
            "residuals_mm": (-1,),
        },
        "temporal": {
            "lag_s": "float",
            "peak_correlation": "float",
            "step_s": "float",
            "std_a": "float",
            "std_b": "float",
        },
        "carm": {
            "projection": (3, 4),
            "intrinsics": (3, 3),
            "phantom_to_camera": (4, 4),
            "source_position_mm": (3,),
            "reprojection_rms_px": "float",
            "dlt_reprojection_rms_px": "float",
            "residuals_px": (-1,),
        },
    }
)

#: Optional kind-specific keys (added after format version 1 was first written: files
#: without them still load).
OPTIONAL: Mapping[str, Mapping[str, _Spec]] = MappingProxyType(
    {
        # The fiducials in the fixed frame: the expected TRE anywhere (Fitzpatrick 1998
        # eq. 46), e.g. at the plan's target, not only at the listed targets.
        "register": {"fiducials_mm": (-1, 3)},
        # The pivot calibration's RMS when the spin file holds the tip transform too.
        "spin": {"tip_rms_mm": "float"},
    }
)

_COMMON = ("format", "format_version", "kind", "transforms", "provenance")
_PROVENANCE = ("created_utc", "input_sha256", "input_source", "software_version", "command")


class CalibrationFileError(InputError):
    """A calibration file is unreadable or invalid; the message names the file and key."""


@dataclass(frozen=True)
class Provenance:
    """Where a calibration came from.

    Attributes:
        created_utc: ISO 8601 UTC time of creation.
        input_sha256: SHA-256 (hex) of the input JSON bytes (or of the captured poses).
        input_source: input file path, or ``igtl://HOST:PORT/DEVICE`` for a live capture.
        software_version: ``guidance`` version that computed it.
        command: the sub-command and options used.
    """

    created_utc: str
    input_sha256: str
    input_source: str
    software_version: str
    command: str


@dataclass(frozen=True, eq=False)
class CalibrationFile:
    """A validated calibration file.

    Attributes:
        source: the file path (or ``"<document>"``).
        kind: one of :data:`KINDS`.
        transforms: read-only ``FromToTo`` name -> (4, 4) float64 rigid transform, mm.
        values: read-only kind-specific figures (floats, ints, bools, or float64 arrays
            of the shapes in :data:`KINDS`).
        provenance: :class:`Provenance`.
    """

    source: str
    kind: str
    transforms: Mapping[str, npt.NDArray[np.float64]]
    values: Mapping[str, Any]
    provenance: Provenance

    def transform(self, name: str) -> npt.NDArray[np.float64]:
        """A copy of one transform (KeyError naming the file and the known names)."""
        if name not in self.transforms:
            raise KeyError(f"{self.source}: no transform {name!r}; has {sorted(self.transforms)}")
        return self.transforms[name].copy()

    def apply_to(self, graph: TransformGraph) -> None:
        """Add every transform to ``graph`` as static (calibrations do not age)."""
        for name, matrix in self.transforms.items():
            graph.set_static(name, matrix)

    @property
    def lag_s(self) -> float | None:
        """Temporal calibration lag (s), or None for other kinds."""
        return float(self.values["lag_s"]) if self.kind == "temporal" else None

    @property
    def expected_tre_mm(self) -> npt.NDArray[np.float64] | None:
        """Registration: expected TRE per target (mm), or None for other kinds."""
        return self.values["expected_tre_mm"] if self.kind == "register" else None

    @property
    def projection(self) -> npt.NDArray[np.float64] | None:
        """C-arm: (3, 4) projection, or None for other kinds."""
        return self.values["projection"] if self.kind == "carm" else None


def _fail(source: str, key: str, problem: str) -> CalibrationFileError:
    return CalibrationFileError(f"{source}: key {key!r}: {problem}")


def _check_value(source: str, key: str, value: object, spec: _Spec) -> Any:
    if spec == "bool":
        if not isinstance(value, bool):
            raise _fail(source, key, f"must be true or false, got {value!r}")
        return value
    if spec == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(source, key, f"must be an integer, got {value!r}")
        return value
    if spec == "str":
        if not isinstance(value, str):
            raise _fail(source, key, f"must be a string, got {value!r}")
        return value
    if spec == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(source, key, f"must be a number, got {value!r}")
        if not np.isfinite(value):
            raise _fail(source, key, f"must be finite, got {value!r}")
        return float(value)
    assert isinstance(spec, tuple)
    if holds_bool(value):
        raise _fail(source, key, "must be numbers, got true/false")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _fail(source, key, f"must be an array of numbers, got {value!r:.80}") from None
    if arr.ndim != len(spec) or any(s not in (-1, d) for s, d in zip(spec, arr.shape, strict=True)):
        want = "(" + ", ".join("N" if s == -1 else str(s) for s in spec) + ")"
        raise _fail(source, key, f"must have shape {want}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise _fail(source, key, "contains NaN or infinite values")
    arr.setflags(write=False)
    return arr


def validate_document(doc: object, source: str = "<document>") -> CalibrationFile:
    """Validate a parsed calibration document.

    Raises:
        CalibrationFileError: naming ``source`` and the offending key.
    """
    if not isinstance(doc, dict):
        raise CalibrationFileError(f"{source}: must be a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT_NAME:
        # Say first what the file is not (a plan.json given as --calibration, say).
        raise _fail(source, "format", f"must be {FORMAT_NAME!r}, got {doc.get('format')!r}: "
                                      "not a calibration file of guidance calibrate")
    for key in _COMMON:
        if key not in doc:
            raise _fail(source, key, "missing")
    if isinstance(doc["format_version"], bool) or doc["format_version"] != FORMAT_VERSION:
        raise _fail(source, "format_version", f"unsupported version {doc['format_version']!r}")
    kind = doc["kind"]
    if kind not in KINDS:
        raise _fail(source, "kind", f"must be one of {sorted(KINDS)}, got {kind!r}")
    specs = KINDS[kind]
    optional = OPTIONAL.get(kind, {})
    unknown = sorted(set(doc) - set(_COMMON) - set(specs) - set(optional))
    if unknown:
        raise _fail(source, unknown[0], f"unknown key for kind {kind!r}")
    values: dict[str, Any] = {}
    for key, spec in specs.items():
        if key not in doc:
            raise _fail(source, key, f"missing (required for kind {kind!r})")
        values[key] = _check_value(source, key, doc[key], spec)
    for key, spec in optional.items():
        if key in doc:
            values[key] = _check_value(source, key, doc[key], spec)

    raw_t = doc["transforms"]
    if not isinstance(raw_t, dict):
        raise _fail(source, "transforms", f"must be an object, got {type(raw_t).__name__}")
    transforms: dict[str, npt.NDArray[np.float64]] = {}
    for name, matrix in raw_t.items():
        key = f"transforms.{name}"
        try:
            parse_transform_name(name)
            m = validate_rigid(_check_value(source, key, matrix, (4, 4)), name)
        except (TypeError, ValueError) as e:
            if isinstance(e, CalibrationFileError):
                raise
            raise _fail(source, key, str(e)) from None
        m.setflags(write=False)
        transforms[name] = m

    prov = doc["provenance"]
    if not isinstance(prov, dict):
        raise _fail(source, "provenance", f"must be an object, got {type(prov).__name__}")
    unknown = sorted(set(prov) - set(_PROVENANCE))
    if unknown:
        raise _fail(source, f"provenance.{unknown[0]}", "unknown key")
    for key in _PROVENANCE:
        if key not in prov:
            raise _fail(source, f"provenance.{key}", "missing")
        _check_value(source, f"provenance.{key}", prov[key], "str")
    return CalibrationFile(
        source=source,
        kind=kind,
        transforms=MappingProxyType(transforms),
        values=MappingProxyType(values),
        provenance=Provenance(**{k: prov[k] for k in _PROVENANCE}),
    )


def load_calibration(path: str | os.PathLike[str]) -> CalibrationFile:
    """Read and validate a calibration file.

    Args:
        path: JSON file written by ``guidance calibrate ...``.

    Returns:
        :class:`CalibrationFile`.

    Raises:
        CalibrationFileError: unreadable file, invalid JSON (with line and column), or an
            invalid document (naming the key).
    """
    source = os.fspath(path)
    doc = read_json_document(source, "calibration file", error=CalibrationFileError)
    return validate_document(doc, source)


def _jsonable(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def make_document(
    kind: str,
    values: Mapping[str, object],
    transforms: Mapping[str, npt.ArrayLike],
    provenance: Provenance,
) -> dict[str, object]:
    """Build a calibration document and validate it (what is written can be loaded).

    Raises:
        CalibrationFileError: if the result would not load.
    """
    doc: dict[str, object] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        **{k: _jsonable(v) for k, v in values.items()},
        "transforms": {k: np.asarray(v, dtype=np.float64).tolist() for k, v in transforms.items()},
        "provenance": {k: getattr(provenance, k) for k in _PROVENANCE},
    }
    validate_document(json.loads(json.dumps(doc)), "<new document>")
    return doc
