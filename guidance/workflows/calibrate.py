"""The calibrations of ``guidance calibrate``: pivot, spin, register, probe, temporal,
C-arm and the Monte-Carlo accuracy figures.

JSON in, JSON out (formats in ``calibration/FORMATS.md``). The maths lives in the pure
``calibration`` package; this module reads and checks the input file (or captures the
poses live, :mod:`guidance.workflows.pose_capture`), builds the calibration document with
its provenance, writes it and the residual plots. Coordinates are millimetres in the
frames the transform names say (``<From>To<To>``). Refusals (bad JSON, missing keys,
wrong shapes, degenerate data) are :class:`~guidance.io.validate.InputError` (the input
file) or :class:`~guidance.workflows.WorkflowError` (the data): one line each.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import calibration
from calibration.accuracy import AccuracyFigure, run_all
from guidance.io.calibration_file import Provenance, load_calibration, make_document
from guidance.io.validate import InputError, holds_bool, parse_json_document, read_document_bytes
from guidance.workflows.pose_capture import capture_tool_poses, tool_names
from guidance.workflows.shared import WorkflowError, software_version

__all__ = [
    "Calibrated",
    "CalibrationInput",
    "PoseSource",
    "accuracy",
    "accuracy_lines",
    "carm",
    "pivot",
    "probe",
    "register_points",
    "spin",
    "temporal",
    "write_accuracy_report",
    "write_document",
]


class CalibrationInput:
    """A parsed input JSON object with its file name and SHA-256.

    Raises:
        InputError: unreadable, not strict JSON, not an object, or an unknown key.
    """

    def __init__(self, path: str, allowed: set[str]) -> None:
        self.path = path
        raw = read_document_bytes(path, "input file")
        self.sha256 = hashlib.sha256(raw).hexdigest()
        doc = parse_json_document(raw, path, "input file")
        if not isinstance(doc, dict):
            raise InputError(f"{path}: must be a JSON object, got {type(doc).__name__}")
        unknown = sorted(set(doc) - allowed)
        if unknown:
            raise InputError(f"{path}: unknown key {unknown[0]!r} (allowed: {sorted(allowed)})")
        self.doc: dict[str, Any] = doc

    def has(self, key: str) -> bool:
        """Whether the top level has ``key``."""
        return key in self.doc

    def array(self, key: str, shape: tuple[int, ...], container: dict[str, Any] | None = None,
              label: str | None = None) -> npt.NDArray[np.float64]:
        """``key`` (of ``container``, default the top level) as a finite float64 array of
        ``shape`` (-1 = any length); errors name the file and ``label`` (default key)."""
        src = self.doc if container is None else container
        label = key if label is None else label
        if key not in src:
            raise InputError(f"{self.path}: missing key {label!r}")
        if holds_bool(src[key]):
            raise InputError(f"{self.path}: key {label!r}: must be numbers, got true/false")
        try:
            arr = np.asarray(src[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{self.path}: key {label!r}: must be an array of numbers") from None
        if arr.ndim != len(shape) or any(
            s not in (-1, d) for s, d in zip(shape, arr.shape, strict=True)
        ):
            want = "(" + ", ".join("N" if s == -1 else str(s) for s in shape) + ")"
            raise InputError(f"{self.path}: key {label!r}: expected shape {want}, got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{self.path}: key {label!r}: contains NaN or infinite values")
        return arr

    def number(self, key: str) -> float:
        """``key`` as a finite number."""
        v = self.doc[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise InputError(f"{self.path}: key {key!r}: must be a finite number, got {v!r}")
        return float(v)

    def obj(self, key: str, allowed: set[str]) -> dict[str, Any]:
        """``key`` as an object holding only ``allowed`` keys."""
        if key not in self.doc:
            raise InputError(f"{self.path}: missing key {key!r}")
        v = self.doc[key]
        if not isinstance(v, dict):
            raise InputError(f"{self.path}: key {key!r}: must be an object")
        unknown = sorted(set(v) - allowed)
        if unknown:
            raise InputError(f"{self.path}: key '{key}.{unknown[0]}': unknown")
        return v


@dataclass(frozen=True)
class Calibrated:
    """A calibration document (``calibration/FORMATS.md``, validated) and its one-line
    summary for people."""

    document: dict[str, object]
    summary: str


@dataclass(frozen=True)
class PoseSource:
    """Where a pivot or spin calibration's tool poses come from: the input file, or a
    live capture (``address`` HOST:PORT, for ``seconds``; ``save_to`` keeps them).

    ``tool`` is a frame name (``Stylus``) or a TRANSFORM device name
    (``StylusToTracker``)."""

    input_path: str | None
    address: str | None
    tool: str
    seconds: float
    save_to: str | None = None


def _provenance(source: str, sha256: str, command: str) -> Provenance:
    return Provenance(
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        input_sha256=sha256,
        input_source=source,
        software_version=software_version(),
        command=command,
    )


def write_document(doc: dict[str, object], out: str | Path | None) -> str:
    """The document as JSON text (2-space indent), written to ``out`` (with a final
    newline) when given.

    Raises:
        WorkflowError: ``out`` cannot be written.
    """
    text = json.dumps(doc, indent=2)
    if out:
        try:
            with open(out, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
        except OSError as e:
            raise WorkflowError(f"{out}: cannot write: {e.strerror or e}") from None
    return text


def _calibrated(fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
    """Run a calibration function; its refusals become one-line workflow errors."""
    try:
        return fn(*a, **kw)
    except (TypeError, ValueError) as e:  # CalibrationError is a ValueError
        raise WorkflowError(str(e)) from None


def _poses(src: PoseSource, allowed: set[str]
           ) -> tuple[npt.NDArray[np.float64], CalibrationInput | None, str, str]:
    """(poses (N, 4, 4), parsed input or None, source, sha256)."""
    if src.input_path is not None:
        inp = CalibrationInput(src.input_path, allowed)
        return inp.array("poses", (-1, 4, 4)), inp, src.input_path, inp.sha256
    device, _ = tool_names(src.tool)
    cap = capture_tool_poses(str(src.address), device, src.seconds, src.save_to)
    return cap.matrices, None, cap.source, cap.sha256


def _plot_bars(path: str | Path, title: str, labels: str, values: npt.NDArray[np.float64],
               rms: float, mask: npt.NDArray[np.bool_] | None = None) -> None:
    """Residuals (mm) as bars, outliers (``mask`` False) in red, the RMS as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    colors = [
        "tab:blue" if (mask is None or m) else "tab:red"
        for m in (mask if mask is not None else np.ones(len(values), bool))
    ]
    ax.bar(np.arange(len(values)), values, color=colors)
    ax.axhline(rms, color="k", linestyle="--", label=f"RMS {rms:.3f} mm")
    ax.set_xlabel(labels)
    ax.set_ylabel("residual (mm)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise WorkflowError(f"{path}: cannot write plot: {e.strerror or e}") from None
    finally:
        plt.close(fig)


def pivot(src: PoseSource, *, min_range_deg: float, ransac_mm: float | None, seed: int,
          plot: str | Path | None, command: str) -> Calibrated:
    """Pivot calibration: the tip offset (mm, tool frame) of ``<Tool>TipTo<Tool>`` from
    poses pivoting about the tip (:func:`calibration.pivot_calibration`; RANSAC with
    inlier threshold ``ransac_mm`` and ``seed`` when given); ``plot``: residual PNG."""
    poses, _, source, sha = _poses(src, {"poses"})
    rng = np.random.default_rng(seed) if ransac_mm is not None else None
    res = _calibrated(calibration.pivot_calibration, poses, min_angular_range_deg=min_range_deg,
                      ransac_threshold_mm=ransac_mm, rng=rng)
    _, frame = tool_names(src.tool)
    doc = make_document(
        "pivot",
        {
            "tip_offset_mm": res.tip_offset_mm,
            "pivot_point_mm": res.pivot_point_mm,
            "rms_mm": res.rms_mm,
            "residuals_mm": res.residuals_mm,
            "angular_range_deg": res.angular_range_deg,
            "tip_offset_std_mm": res.tip_offset_std_mm,
            "condition_number": res.condition_number,
            "n_poses": len(poses),
            "n_inliers": int(res.inliers.sum()),
        },
        {f"{frame}TipTo{frame}": _calibrated(lambda: res.tip_to_tool)},
        _provenance(source, sha, command),
    )
    if plot:
        _plot_bars(plot, f"Pivot calibration residuals ({frame})", "pose", res.residuals_mm,
                   res.rms_mm, res.inliers)
    return Calibrated(doc, f"pivot: tip {np.round(res.tip_offset_mm, 2).tolist()} mm, "
                           f"RMS {res.rms_mm:.3f} mm")


def _pivot_file(path: str, frame: str) -> tuple[npt.NDArray[np.float64], float]:
    """(tip offset (mm, tool frame), RMS (mm)) of a pivot calibration file of ``frame``."""
    calib = load_calibration(path)
    if calib.kind != "pivot":
        raise WorkflowError(f"--pivot {path}: a {calib.kind!r} calibration, not a pivot")
    name = f"{frame}TipTo{frame}"
    if name not in calib.transforms:
        raise WorkflowError(f"--pivot {path}: calibrates {sorted(calib.transforms)}, not "
                            f"{name} (--tool {frame})")
    return np.asarray(calib.values["tip_offset_mm"]), float(calib.values["rms_mm"])


def spin(src: PoseSource, *, pivot_file: str | None, min_spin_deg: float,
         command: str) -> Calibrated:
    """Spin calibration: the needle axis (tool frame) from rotations about the shaft
    (:func:`calibration.spin_calibration`). With the tip known (``tip_offset_mm`` in the
    input, or the pivot calibration ``pivot_file``) the document holds the whole tip
    frame ``<Tool>TipTo<Tool>`` (:func:`calibration.tip_frame`)."""
    poses, inp, source, sha = _poses(src, {"poses", "tip_offset_mm"})
    _, frame = tool_names(src.tool)
    tip = None
    tip_rms = None
    if pivot_file is not None:
        if inp is not None and inp.has("tip_offset_mm"):
            raise InputError(f"{inp.path}: give the tip offset either in 'tip_offset_mm' or "
                             "with --pivot, not both")
        tip, tip_rms = _pivot_file(pivot_file, frame)
    elif inp is not None and inp.has("tip_offset_mm"):
        tip = inp.array("tip_offset_mm", (3,))
    res = _calibrated(calibration.spin_calibration, poses, tip_offset_mm=tip,
                      min_spin_deg=min_spin_deg)
    values: dict[str, object] = {
        "axis_tool": res.axis_tool,
        "axis_point_tool_mm": res.axis_point_tool_mm,
        "spin_range_deg": res.spin_range_deg,
        "wobble_rms_deg": res.wobble_rms_deg,
        "line_rms_mm": res.line_rms_mm,
        "n_poses": len(poses),
    }
    transforms: dict[str, npt.NDArray[np.float64]] = {}
    if tip is not None:
        # With the tip known, the spin file holds the whole tip frame: the pivot's tip and
        # the measured shaft as +z (calibration.tip_frame).
        transforms[f"{frame}TipTo{frame}"] = _calibrated(calibration.tip_frame, tip,
                                                         res.axis_tool)
        if tip_rms is not None:
            values["tip_rms_mm"] = tip_rms
    doc = make_document("spin", values, transforms, _provenance(source, sha, command))
    return Calibrated(doc, f"spin: axis {np.round(res.axis_tool, 4).tolist()}, wobble "
                           f"{res.wobble_rms_deg:.2f} deg")


def register_points(input_path: str, *, name: str, plot: str | Path | None,
                    command: str) -> Calibrated:
    """Paired-point rigid registration ``name`` (moving → fixed, mm) with its FRE and the
    expected TRE at the targets (default: the fiducials' centroid)
    (:func:`calibration.register_points`); ``plot``: residual PNG."""
    inp = CalibrationInput(input_path, {"fixed_mm", "moving_mm", "targets_mm", "fle_mm"})
    fixed = inp.array("fixed_mm", (-1, 3))
    moving = inp.array("moving_mm", (-1, 3))
    fle = inp.number("fle_mm") if inp.has("fle_mm") else None
    targets: npt.NDArray[np.float64] | None = None
    if inp.has("targets_mm"):
        targets = inp.array("targets_mm", (-1, 3))
    elif len(fixed):  # no target given: the expected TRE at the fiducials' centroid
        targets = fixed.mean(axis=0, keepdims=True)
    res = _calibrated(calibration.register_points, fixed, moving, targets_mm=targets, fle_mm=fle)
    doc = make_document(
        "register",
        {
            "moving_to_fixed": res.moving_to_fixed,
            "fre_mm": res.fre_mm,
            "residuals_mm": res.residuals_mm,
            "fle_mm": res.fle_mm,
            "fle_estimated": res.fle_estimated,
            "targets_mm": res.targets_fixed_mm,
            "expected_tre_mm": res.expected_tre_mm,
            "fiducials_mm": fixed,
        },
        {name: res.moving_to_fixed},
        _provenance(input_path, inp.sha256, command),
    )
    if plot:
        _plot_bars(plot, "Registration residuals per fiducial", "fiducial", res.residuals_mm,
                   res.fre_mm)
    where = "target" if inp.has("targets_mm") else "fiducials' centroid"
    tre = ", ".join(f"{v:.2f}" for v in res.expected_tre_mm)
    return Calibrated(doc, f"register: FRE {res.fre_mm:.3f} mm, expected TRE at the {where} "
                           f"{tre} mm")


def probe(input_path: str, *, name: str, command: str) -> Calibrated:
    """Ultrasound calibration ``name`` (image → probe; pixels scaled by the pixel
    spacing, mm) from a tracked stylus tip (tracker frame, mm) seen in the image
    (:func:`calibration.probe_calibration`)."""
    allowed = {"probe_to_tracker", "stylus_tip_tracker_mm", "stylus_to_tracker",
               "stylus_tip_offset_mm", "pixels", "pixel_spacing_mm"}
    inp = CalibrationInput(input_path, allowed)
    probe_to_tracker = inp.array("probe_to_tracker", (-1, 4, 4))
    if inp.has("stylus_tip_tracker_mm"):
        tips = inp.array("stylus_tip_tracker_mm", (-1, 3))
    elif inp.has("stylus_to_tracker"):
        stylus = inp.array("stylus_to_tracker", (-1, 4, 4))
        offset = inp.array("stylus_tip_offset_mm", (3,))
        tips = stylus[:, :3, :3] @ offset + stylus[:, :3, 3]
    else:
        raise InputError(f"{input_path}: missing key 'stylus_tip_tracker_mm' (or "
                         "'stylus_to_tracker' with 'stylus_tip_offset_mm')")
    res = _calibrated(calibration.probe_calibration, probe_to_tracker, tips,
                      inp.array("pixels", (-1, 2)), inp.array("pixel_spacing_mm", (2,)))
    doc = make_document(
        "probe",
        {
            "image_to_probe": res.image_to_probe,
            "pixel_spacing_mm": res.pixel_spacing_mm,
            "rms_mm": res.rms_mm,
            "in_plane_rms_mm": res.in_plane_rms_mm,
            "out_of_plane_rms_mm": res.out_of_plane_rms_mm,
            "residuals_mm": res.residuals_mm,
        },
        {name: res.image_to_probe},
        _provenance(input_path, inp.sha256, command),
    )
    return Calibrated(doc, f"probe: RMS {res.rms_mm:.3f} mm")


def temporal(input_path: str, *, max_lag_s: float, min_std: float, command: str) -> Calibrated:
    """Lag (s) of stream ``b`` behind stream ``a`` (times ``t_s`` in seconds, signals
    ``x`` of at least ``min_std``), searched up to ``max_lag_s``
    (:func:`calibration.temporal_calibration`)."""
    inp = CalibrationInput(input_path, {"a", "b"})
    streams = []
    for key in ("a", "b"):
        obj = inp.obj(key, {"t_s", "x"})
        streams.append(inp.array("t_s", (-1,), obj, f"{key}.t_s"))
        streams.append(inp.array("x", (-1,), obj, f"{key}.x"))
    res = _calibrated(calibration.temporal_calibration, *streams, max_lag_s=max_lag_s,
                      min_std=min_std)
    doc = make_document(
        "temporal",
        {
            "lag_s": res.lag_s,
            "peak_correlation": res.peak_correlation,
            "step_s": res.step_s,
            "std_a": res.std_a,
            "std_b": res.std_b,
        },
        {},
        _provenance(input_path, inp.sha256, command),
    )
    return Calibrated(doc, f"temporal: b lags a by {res.lag_s * 1000:.1f} ms")


def carm(input_path: str, *, name: str, command: str) -> Calibrated:
    """C-arm 3x4 projection (pixels) from 3D fiducials (phantom frame, mm) and their
    pixels; ``name`` is the pose phantom → camera (:func:`calibration.carm_calibration`)."""
    inp = CalibrationInput(input_path, {"points_mm", "pixels"})
    res = _calibrated(calibration.carm_calibration, inp.array("points_mm", (-1, 3)),
                      inp.array("pixels", (-1, 2)))
    doc = make_document(
        "carm",
        {
            "projection": res.projection,
            "intrinsics": res.intrinsics,
            "phantom_to_camera": res.phantom_to_camera,
            "source_position_mm": res.source_position_mm,
            "reprojection_rms_px": res.reprojection_rms_px,
            "dlt_reprojection_rms_px": res.dlt_reprojection_rms_px,
            "residuals_px": res.residuals_px,
        },
        {name: res.phantom_to_camera},
        _provenance(input_path, inp.sha256, command),
    )
    return Calibrated(doc, f"carm: reprojection RMS {res.reprojection_rms_px:.3f} px")


def accuracy(seed: int) -> tuple[AccuracyFigure, ...]:
    """The Monte-Carlo accuracy figures (:func:`calibration.accuracy.run_all`) on data
    simulated with ``seed``."""
    return run_all(np.random.default_rng(seed))


def accuracy_lines(figures: Sequence[AccuracyFigure]) -> list[str]:
    """The figures for people: PASS/FAIL, measured and reference value, criterion, and
    their details indented below."""
    lines = []
    for f in figures:
        status = "PASS" if f.passed else "FAIL"
        lines.append(f"{status} {f.name:13s} measured {f.measured:.4g} {f.unit} "
                     f"(reference {f.reference:.4g}): {f.criterion}")
        lines.extend(f"     {label} = {value:.4g}" for label, value in f.details)
    return lines


def write_accuracy_report(figures: Sequence[AccuracyFigure], seed: int, path: str | Path) -> None:
    """The figures as JSON (seed, software version, UTC time of creation).

    Raises:
        WorkflowError: ``path`` cannot be written.
    """
    report = {
        "seed": seed,
        "software_version": software_version(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "figures": [f.to_json() for f in figures],
    }
    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    except OSError as e:
        raise WorkflowError(f"{path}: cannot write: {e.strerror or e}") from None
