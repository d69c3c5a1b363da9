"""A plan's anatomy: which CT, labels and label names it was planned on (with their
SHA-256), the structure config and the analysed region, and the rebuild of exactly those
structures for the live check.

The CT is the frame of the plan: a different CT is a different patient or scan, so its
hash is checked too although the structures are built from the labels alone. ``real``
(the embedded CT, see :mod:`guidance.data`) is recorded with the package file's path and
hash, and checked against the installed package's file wherever the plan is used.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from guidance.planning.config import StructureConfig

if TYPE_CHECKING:
    from guidance.geometry import ImageVolume
    from guidance.planning.plan import Plan
    from guidance.planning.structures import StructureSet

__all__ = [
    "REAL",
    "PlanAnatomy",
    "SourceRef",
    "check_plan_inside",
    "file_sha256",
    "load_plan_ct",
    "load_plan_structures",
    "record_anatomy",
]

#: The source argument naming the embedded real CT and its labels.
REAL = "real"

ProgressFn = Callable[[float, str], None]

_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REAL_INDEX = {"CT": 0, "labels": 1}  # index into guidance.data.real_ct_paths()


def _feed(h: Any, path: Path) -> None:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, or of a folder's files (a DICOM series folder).

    A folder hashes every regular file under it (symbolic links followed, as the DICOM
    loader does), sorted by relative POSIX path; each contributes its relative path
    (UTF-8, file system encoding), a NUL byte, then its bytes. Files are streamed in
    1 MiB chunks, never read whole.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: ``path`` is neither a file nor a folder.
    """
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        files = sorted((f.relative_to(p).as_posix(), f) for f in p.rglob("*") if f.is_file())
        for rel, f in files:
            h.update(os.fsencode(rel))
            h.update(b"\0")
            _feed(h, f)
    elif p.is_file():
        _feed(h, p)
    elif not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    else:
        raise ValueError(f"{p}: neither a regular file nor a folder")
    return h.hexdigest()


def _check_keys(data: object, where: str, required: set[str]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - required)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(required)}")
    missing = sorted(required - set(data))
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")
    return data


@dataclass(frozen=True)
class SourceRef:
    """One input file (or DICOM folder) of a plan.

    Attributes:
        arg: what the user gave (``"real"`` or a path, as typed).
        path: the file or folder actually read (absolute when recorded; for ``real`` the
            package file of :func:`guidance.data.real_ct_paths`).
        sha256: :func:`file_sha256` of ``path`` when planned (64 lowercase hex digits).
    """

    arg: str
    path: str
    sha256: str

    def __post_init__(self) -> None:
        for name in ("arg", "path", "sha256"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a string, got {value!r}")
            if not value:
                raise ValueError(f"{name} must not be empty")
        if not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")

    def to_json(self) -> dict[str, str]:
        return {"arg": self.arg, "path": self.path, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: object, where: str) -> SourceRef:
        """Read ``{"arg", "path", "sha256"}``; ``where`` names it in errors
        (``"anatomy.labels"``).

        Raises:
            ValueError: not an object, an unknown or missing key, a bad value.
        """
        d = _check_keys(data, where, {"arg", "path", "sha256"})
        for name in ("arg", "path", "sha256"):
            if not isinstance(d[name], str):
                raise ValueError(f"{where}.{name} must be a string, got {d[name]!r}")
        try:
            return cls(d["arg"], d["path"], d["sha256"])
        except ValueError as e:
            raise ValueError(f"{where}.{e}") from e


def _vector(name: str, value: object, positive: bool) -> npt.NDArray[np.float64]:
    seq = value.tolist() if isinstance(value, np.ndarray) else value
    ok = (isinstance(seq, (list, tuple)) and len(seq) == 3
          and all(isinstance(v, (int, float, np.integer, np.floating))
                  and not isinstance(v, bool) and math.isfinite(v) for v in seq))
    if not ok:
        raise ValueError(f"{name} must be 3 finite numbers (mm), got {value!r}")
    arr = np.array(seq, dtype=np.float64)
    if positive and np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0, got {arr.tolist()}")
    arr.flags.writeable = False
    return arr


def _json_copy(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a JSON object, got {type(value).__name__}")
    try:
        copy = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be plain JSON: {e}") from e
    assert isinstance(copy, dict)
    try:
        StructureConfig.from_dict(copy)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: {e}") from e
    return copy


@dataclass(frozen=True, eq=False)
class PlanAnatomy:
    """Everything needed to rebuild a plan's critical structures.

    Attributes:
        ct: the planning CT (checked, not read: it is the frame of the plan).
        labels: the label map on the CT's grid.
        label_names: the ``id,structure`` CSV; ``None``: the embedded data's
            TotalSegmentator names.
        structures_config: the raw mapping given to
            :meth:`~guidance.planning.config.StructureConfig.from_dict` (``{}``: defaults).
        roi_center_lps_mm: (3,) float64 centre of the analysed box, LPS mm.
        roi_half_size_mm: (3,) float64 half extents of the box along L, P, S, mm (> 0).
    """

    ct: SourceRef
    labels: SourceRef
    label_names: SourceRef | None
    structures_config: dict[str, Any]
    roi_center_lps_mm: npt.NDArray[np.float64]
    roi_half_size_mm: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        for name in ("ct", "labels", "label_names"):
            value = getattr(self, name)
            if not isinstance(value, SourceRef) and not (name == "label_names"
                                                         and value is None):
                raise TypeError(f"{name} must be a SourceRef, got {type(value).__name__}")
        object.__setattr__(self, "structures_config",
                           _json_copy("structures_config", self.structures_config))
        object.__setattr__(self, "roi_center_lps_mm",
                           _vector("roi_center_lps_mm", self.roi_center_lps_mm, False))
        object.__setattr__(self, "roi_half_size_mm",
                           _vector("roi_half_size_mm", self.roi_half_size_mm, True))

    def structure_config(self) -> StructureConfig:
        """The parsed :attr:`structures_config`."""
        return StructureConfig.from_dict(self.structures_config)

    def to_json(self) -> dict[str, Any]:
        # Full float precision: the box must be rebuilt to the voxel.
        return {
            "ct": self.ct.to_json(),
            "labels": self.labels.to_json(),
            "label_names": None if self.label_names is None else self.label_names.to_json(),
            "structures_config": json.loads(json.dumps(self.structures_config)),
            "roi_center_lps_mm": [float(v) for v in self.roi_center_lps_mm],
            "roi_half_size_mm": [float(v) for v in self.roi_half_size_mm],
        }

    @classmethod
    def from_json(cls, data: object, where: str = "anatomy") -> PlanAnatomy:
        """Read :meth:`to_json`'s output strictly.

        Raises:
            ValueError: an unknown or missing key, a wrong type or shape, a non-finite
                number, a bad structures config; the message names the key
                (``anatomy.roi_half_size_mm``).
        """
        keys = {"ct", "labels", "label_names", "structures_config", "roi_center_lps_mm",
                "roi_half_size_mm"}
        d = _check_keys(data, where, keys)
        names = d["label_names"]
        return cls(
            ct=SourceRef.from_json(d["ct"], f"{where}.ct"),
            labels=SourceRef.from_json(d["labels"], f"{where}.labels"),
            label_names=None if names is None else SourceRef.from_json(
                names, f"{where}.label_names"),
            structures_config=_json_copy(f"{where}.structures_config",
                                         d["structures_config"]),
            roi_center_lps_mm=_vector(f"{where}.roi_center_lps_mm", d["roi_center_lps_mm"],
                                      False),
            roi_half_size_mm=_vector(f"{where}.roi_half_size_mm", d["roi_half_size_mm"],
                                     True),
        )


def _real_path(what: str) -> Path:
    from guidance.data import real_ct_paths

    return real_ct_paths()[_REAL_INDEX[what]]


def _source(arg: str, what: str) -> SourceRef:
    """Record one input: ``real`` (CT and labels only) is the package file."""
    path = _real_path(what) if arg == REAL and what in _REAL_INDEX else Path(arg)
    path = path.resolve()
    return SourceRef(arg, str(path), file_sha256(path))


def record_anatomy(
    ct_arg: str,
    labels_arg: str,
    names_arg: str | None,
    structures_config: Mapping[str, Any],
    roi_center: npt.ArrayLike,
    roi_half: npt.ArrayLike,
) -> PlanAnatomy:
    """Record the inputs of a plan with their hashes.

    Args:
        ct_arg, labels_arg: ``"real"`` or a path (a DICOM folder for the CT), as given.
        names_arg: the label-names CSV path, or ``None`` for the embedded names.
        structures_config: the raw mapping given to ``StructureConfig.from_dict``.
        roi_center: (3,) centre of the analysed box, LPS mm, exactly as given to
            :func:`~guidance.planning.structures.build_structures`.
        roi_half: (3,) or scalar half size of the box, mm, likewise.

    Raises:
        FileNotFoundError: an input does not exist.
        guidance.data.RealDataMissing: ``real`` without the data package.
        ValueError: a bad config or box.
    """
    half = np.broadcast_to(np.asarray(roi_half, dtype=np.float64), (3,))
    return PlanAnatomy(
        ct=_source(ct_arg, "CT"),
        labels=_source(labels_arg, "labels"),
        label_names=None if names_arg is None else _source(names_arg, "label names"),
        structures_config=dict(structures_config),
        roi_center_lps_mm=np.asarray(roi_center, dtype=np.float64).reshape(-1),
        roi_half_size_mm=half.copy(),
    )


class _Progress:
    """Maps the steps onto one 0..1 scale; says 1.0 exactly once."""

    def __init__(self, progress: ProgressFn | None) -> None:
        self.progress, self.last = progress, 0.0

    def __call__(self, fraction: float, message: str) -> None:
        self.last = fraction
        if self.progress is not None:
            self.progress(fraction, message)


def _anatomy_of(plan: Plan, plan_path: str | Path | None
                ) -> tuple[str, PlanAnatomy, Path]:
    """(name for messages, the anatomy, the folder relative paths start from)."""
    from guidance.planning.plan import PlanError

    where = str(plan_path) if plan_path is not None else "plan"
    if plan.anatomy is None:
        raise PlanError(f"{where}: records no anatomy (written by an older guidance plan or "
                        "by hand): re-plan with guidance plan to check the structures live")
    base = Path(plan_path).parent if plan_path is not None else Path.cwd()
    return where, plan.anatomy, base


def _checked_path(ref: SourceRef, what: str, where: str, base: Path) -> Path:
    """The recorded file, refused (PlanError) when missing or changed."""
    from guidance.data import RealDataMissing
    from guidance.planning.plan import PlanError

    if ref.arg == REAL and what in _REAL_INDEX:
        try:
            path = _real_path(what)
        except RealDataMissing as e:
            raise PlanError(f"{where}: {what} real (embedded CT): {e}") from e
    else:
        path = base / ref.path  # an absolute recorded path stays as it is
    try:
        now = file_sha256(path)
    except FileNotFoundError as e:
        raise PlanError(f"{where}: {what} {path} missing (recorded at planning): restore "
                        "it or re-plan") from e
    except (OSError, ValueError) as e:
        raise PlanError(f"{where}: {what} {path} cannot be read: {e}") from e
    if now != ref.sha256:
        raise PlanError(
            f"{where}: {what} {path} changed since planning (sha256 {ref.sha256[:8]}... "
            f"recorded, {now[:8]}... now): re-plan or give the original file")
    return path


def load_plan_ct(plan: Plan, plan_path: str | Path | None = None,
                 progress: ProgressFn | None = None) -> ImageVolume:
    """The planning CT a plan records, checked unchanged (for the navigation view).

    Raises:
        guidance.planning.plan.PlanError: no anatomy, the CT missing, changed or
            unreadable (one line naming the plan and the file).
    """
    from guidance.data import RealDataMissing, load_real_ct
    from guidance.io.dicom_series import DicomSeriesError, load_ct
    from guidance.planning.plan import PlanError

    where, anatomy, base = _anatomy_of(plan, plan_path)
    path = _checked_path(anatomy.ct, "CT", where, base)
    try:
        ct = load_real_ct() if anatomy.ct.arg == REAL else load_ct(path, progress=progress)
    except (DicomSeriesError, RealDataMissing) as e:
        raise PlanError(f"{where}: CT {path}: {e}") from e
    check_plan_inside(plan, ct, where)
    return ct


def check_plan_inside(plan: Plan, volume: ImageVolume, where: str,
                      what: str = "planning CT") -> None:
    """Refuse a plan whose entry or target lies outside the scan it is used with.

    Args:
        volume: the CT, or a label map on its grid.

    Raises:
        guidance.planning.plan.PlanError: naming the plan, the point and how far out.
    """
    from guidance.io.validate import check_points_in_volume
    from guidance.planning.plan import PlanError

    check_points_in_volume(where, (("entry_lps_mm", plan.entry_lps),
                                   ("target_lps_mm", plan.target_lps)),
                           volume, what=what, error=PlanError)


def load_plan_structures(
    plan: Plan, plan_path: str | Path | None = None, progress: ProgressFn | None = None
) -> StructureSet:
    """Rebuild the critical structures a plan was made with, after checking that every
    recorded file is there and unchanged.

    Args:
        plan: a plan with :attr:`~guidance.planning.plan.Plan.anatomy`.
        plan_path: the plan file: named in errors, and recorded relative paths are
            resolved against its folder (without it: the current folder).
        progress: optional ``progress(fraction, message)``.

    Returns:
        The structures, built (or taken from the in-memory cache) with the recorded
        labels, names, config and region.

    Raises:
        guidance.planning.plan.PlanError: no anatomy recorded, a file missing or changed,
            a file that cannot be read, structures that cannot be built; one line naming
            the plan file, the input and what is wrong.
    """
    # Imported here: plan.py imports this module for PlanAnatomy, and the structures
    # (scipy) are only needed when a plan is rebuilt.
    from guidance.data import RealDataMissing, load_real_labels, structure_names
    from guidance.io.labels_io import (
        LabelMapError,
        load_labels_and_names,
        read_label_names,
    )
    from guidance.planning.plan import PlanError
    from guidance.planning.structures import build_structures

    where, anatomy, base = _anatomy_of(plan, plan_path)
    step = _Progress(progress)

    def checked(ref: SourceRef, what: str) -> Path:
        return _checked_path(ref, what, where, base)

    step(0.0, "checking the CT")
    checked(anatomy.ct, "CT")
    step(0.04, "checking the labels")
    labels_path = checked(anatomy.labels, "labels")
    names_path = None
    if anatomy.label_names is not None:
        step(0.06, "checking the label names")
        names_path = checked(anatomy.label_names, "label names")
    step(0.08, "loading the labels")
    try:
        own = None
        if anatomy.labels.arg == REAL:
            labels = load_real_labels()
        else:
            labels, own = load_labels_and_names(labels_path)  # a SEG names its segments
        names = (read_label_names(names_path) if names_path is not None
                 else own if own is not None else structure_names())
    except (LabelMapError, RealDataMissing) as e:
        raise PlanError(f"{where}: {e}") from e
    # The labels are on the planning CT's grid (checked when planning).
    check_plan_inside(plan, labels, where)
    step(0.1, "distance fields")
    try:
        structures = build_structures(
            labels, names, anatomy.structure_config(),
            roi_center_lps=anatomy.roi_center_lps_mm,
            roi_half_size_mm=anatomy.roi_half_size_mm,
            progress=lambda f, m: step(0.1 + 0.9 * f, m))
    except (TypeError, ValueError) as e:
        raise PlanError(f"{where}: cannot build the structures: {e}") from e
    if step.last < 1.0:
        step(1.0, "structures ready")
    return structures
