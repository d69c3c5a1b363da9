"""``guidance calibrate``: pivot, spin, register, probe, temporal, carm, accuracy.

JSON in, JSON out (formats in ``calibration/FORMATS.md``). The maths lives in the pure
``calibration`` package; this module reads and checks the input file, captures live poses
over OpenIGTLink when asked (``--from HOST:PORT --tool NAME --seconds N``), writes the
result with its provenance, and optionally plots residuals (``--plot FILE.png``).
Refusals (bad JSON, missing keys, wrong shapes, degenerate data) raise
:class:`~guidance.cli.main.UsageError`: one line, exit status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import numpy as np
import numpy.typing as npt

import calibration
from calibration.accuracy import run_all
from guidance import __version__
from guidance.cli.common import path_arg
from guidance.cli.main import UsageError
from guidance.io.calibration_file import CalibrationFileError, Provenance, make_document
from guidance.io.validate import (
    InputError,
    holds_bool,
    parse_json_document,
    read_document_bytes,
)
from trackers.capture import capture_poses
from trackers.pose import TrackedPose
from trackers.transform_graph import FRAME_PATTERN, parse_transform_name

__all__ = ["register"]

_log = logging.getLogger(__name__)


# -- input -------------------------------------------------------------------------------


class _Input:
    """A parsed input JSON object with its file name and SHA-256."""

    def __init__(self, path: str, allowed: set[str]) -> None:
        self.path = path
        try:
            raw = read_document_bytes(path, "input file")
            self.sha256 = hashlib.sha256(raw).hexdigest()
            doc = parse_json_document(raw, path, "input file")
        except InputError as e:
            raise UsageError(str(e)) from None
        if not isinstance(doc, dict):
            raise UsageError(f"{path}: must be a JSON object, got {type(doc).__name__}")
        unknown = sorted(set(doc) - allowed)
        if unknown:
            raise UsageError(f"{path}: unknown key {unknown[0]!r} (allowed: {sorted(allowed)})")
        self.doc: dict[str, Any] = doc

    def has(self, key: str) -> bool:
        return key in self.doc

    def array(
        self,
        key: str,
        shape: tuple[int, ...],
        container: dict[str, Any] | None = None,
        label: str | None = None,
    ) -> npt.NDArray[np.float64]:
        """``key`` (of ``container``, default the top level) as a float64 array of
        ``shape`` (-1 = any length); errors name the file and ``label`` (default key)."""
        src = self.doc if container is None else container
        label = key if label is None else label
        if key not in src:
            raise UsageError(f"{self.path}: missing key {label!r}")
        if holds_bool(src[key]):
            raise UsageError(f"{self.path}: key {label!r}: must be numbers, got true/false")
        try:
            arr = np.asarray(src[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise UsageError(f"{self.path}: key {label!r}: must be an array of numbers") from None
        if arr.ndim != len(shape) or any(
            s not in (-1, d) for s, d in zip(shape, arr.shape, strict=True)
        ):
            want = "(" + ", ".join("N" if s == -1 else str(s) for s in shape) + ")"
            raise UsageError(f"{self.path}: key {label!r}: expected shape {want}, got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise UsageError(f"{self.path}: key {label!r}: contains NaN or infinite values")
        return arr

    def number(self, key: str) -> float:
        v = self.doc[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise UsageError(f"{self.path}: key {key!r}: must be a finite number, got {v!r}")
        return float(v)

    def obj(self, key: str, allowed: set[str]) -> dict[str, Any]:
        if key not in self.doc:
            raise UsageError(f"{self.path}: missing key {key!r}")
        v = self.doc[key]
        if not isinstance(v, dict):
            raise UsageError(f"{self.path}: key {key!r}: must be an object")
        unknown = sorted(set(v) - allowed)
        if unknown:
            raise UsageError(f"{self.path}: key '{key}.{unknown[0]}': unknown")
        return v


def _command(args: argparse.Namespace) -> str:
    skip = {"func", "command", "calibration", "verbose"}
    opts = [
        f"--{k.replace('_', '-')} {v}"
        for k, v in sorted(vars(args).items())
        if k not in skip and v is not None
    ]
    return " ".join(["calibrate", str(args.calibration), *opts])


def _provenance(source: str, sha256: str, args: argparse.Namespace) -> Provenance:
    return Provenance(
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        input_sha256=sha256,
        input_source=source,
        software_version=f"guidance {__version__}",
        command=_command(args),
    )


def _write(doc: dict[str, object], args: argparse.Namespace, summary: str) -> int:
    text = json.dumps(doc, indent=2)
    if args.out:
        try:
            with open(args.out, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
        except OSError as e:
            raise UsageError(f"{args.out}: cannot write: {e.strerror or e}") from None
        print(f"{summary} -> {args.out}")
    else:
        print(text)
    return 0


def _calibrated(fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
    """Run a calibration function; its refusals become one-line usage errors."""
    try:
        return fn(*a, **kw)
    except (TypeError, ValueError) as e:  # CalibrationError is a ValueError
        raise UsageError(str(e)) from None


def _frame_of_tool(tool: str) -> tuple[str, str]:
    """(device name, tool frame) for ``--tool``: ``StylusToTracker`` or ``Stylus``."""
    try:
        frame, _ = parse_transform_name(tool)
        return tool, frame
    except ValueError:
        if not FRAME_PATTERN.fullmatch(tool):
            raise UsageError(
                f"--tool must be a frame name like 'Stylus' or a transform name like "
                f"'StylusToTracker', got {tool!r}"
            ) from None
        return f"{tool}ToTracker", tool


# -- live capture ------------------------------------------------------------------------


def igtl_poses(host: str, port: int, device: str, seconds: float) -> Iterator[TrackedPose]:
    """TrackedPose stream of one TRANSFORM device from an OpenIGTLink server, for at most
    ``seconds`` plus one second of wall-clock time."""
    from guidance.io.igtl import IgtlClient

    client = IgtlClient(host, port)
    client.start()
    try:
        deadline = time.monotonic() + seconds + 1.0
        seq = 0
        while (remaining := deadline - time.monotonic()) > 0:
            item = client.slots.wait_newer(device, seq, min(remaining, 0.5))
            if item is None:
                continue
            seq = item.seq
            matrix = getattr(item.message, "matrix", None)
            if matrix is None:
                _log.warning("device %s sent a %s, not a TRANSFORM", device, type(item.message))
                continue
            yield TrackedPose(
                name=device,
                pose=np.asarray(matrix, dtype=np.float64),
                timestamp_s=float(item.timestamp_s),
                received_ns=int(item.received_ns),
            )
    finally:
        client.stop()


#: Replaced in tests by a fake source: ``(host, port, device, seconds) -> iterator``.
POSE_SOURCE: Callable[[str, int, str, float], Iterator[TrackedPose]] = igtl_poses


def _poses_from_args(
    args: argparse.Namespace, allowed: set[str]
) -> tuple[npt.NDArray[np.float64], _Input | None, str, str]:
    """(poses (N, 4, 4), parsed input or None, source, sha256) from ``--input`` or
    ``--from``."""
    if args.input is not None:
        inp = _Input(args.input, allowed)
        return inp.array("poses", (-1, 4, 4)), inp, args.input, inp.sha256
    device, _ = _frame_of_tool(args.tool)
    host, sep, port_s = str(args.source).rpartition(":")
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise UsageError(f"--from must be HOST:PORT, got {args.source!r}")
    if not args.seconds > 0:
        raise UsageError(f"--seconds must be > 0, got {args.seconds}")
    result = capture_poses(
        POSE_SOURCE(host.strip("[]"), int(port_s), device, float(args.seconds)),
        device,
        duration_s=float(args.seconds),
    )
    if not result.poses:
        raise UsageError(
            f"no valid pose of {device} received from {args.source} in {args.seconds} s "
            f"({result.n_seen} seen, {result.n_invalid} invalid)"
        )
    raw = json.dumps({"poses": result.matrices.tolist()}).encode()
    if args.save_poses:
        try:
            with open(args.save_poses, "wb") as fh:
                fh.write(raw + b"\n")
        except OSError as e:
            raise UsageError(f"{args.save_poses}: cannot write: {e.strerror or e}") from None
    source = f"igtl://{args.source}/{device}"
    return result.matrices, None, source, hashlib.sha256(raw + b"\n").hexdigest()


# -- plots -------------------------------------------------------------------------------


def _plot_bars(
    path: str,
    title: str,
    labels: str,
    values: npt.NDArray[np.float64],
    rms: float,
    mask: npt.NDArray[np.bool_] | None = None,
) -> None:
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
        raise UsageError(f"{path}: cannot write plot: {e.strerror or e}") from None
    finally:
        plt.close(fig)


# -- commands ----------------------------------------------------------------------------


def _cmd_pivot(args: argparse.Namespace) -> int:
    poses, _, source, sha = _poses_from_args(args, {"poses"})
    rng = np.random.default_rng(args.seed) if args.ransac_mm is not None else None
    res = _calibrated(
        calibration.pivot_calibration,
        poses,
        min_angular_range_deg=args.min_range_deg,
        ransac_threshold_mm=args.ransac_mm,
        rng=rng,
    )
    _, frame = _frame_of_tool(args.tool)
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
        _provenance(source, sha, args),
    )
    if args.plot:
        _plot_bars(
            args.plot,
            f"Pivot calibration residuals ({frame})",
            "pose",
            res.residuals_mm,
            res.rms_mm,
            res.inliers,
        )
    return _write(
        doc,
        args,
        f"pivot: tip {np.round(res.tip_offset_mm, 2).tolist()} mm, RMS {res.rms_mm:.3f} mm",
    )


def _pivot_file(path: str, frame: str) -> tuple[npt.NDArray[np.float64], float]:
    """(tip offset, RMS) of a pivot calibration file of ``frame``'s tool."""
    from guidance.io.calibration_file import load_calibration

    calib = load_calibration(path)
    if calib.kind != "pivot":
        raise UsageError(f"--pivot {path}: a {calib.kind!r} calibration, not a pivot")
    name = f"{frame}TipTo{frame}"
    if name not in calib.transforms:
        raise UsageError(f"--pivot {path}: calibrates {sorted(calib.transforms)}, not {name} "
                         f"(--tool {frame})")
    return np.asarray(calib.values["tip_offset_mm"]), float(calib.values["rms_mm"])


def _cmd_spin(args: argparse.Namespace) -> int:
    poses, inp, source, sha = _poses_from_args(args, {"poses", "tip_offset_mm"})
    _, frame = _frame_of_tool(args.tool)
    tip = None
    tip_rms = None
    if args.pivot is not None:
        if inp is not None and inp.has("tip_offset_mm"):
            raise UsageError(f"{args.input}: give the tip offset either in 'tip_offset_mm' or "
                             "with --pivot, not both")
        tip, tip_rms = _pivot_file(args.pivot, frame)
    elif inp is not None and inp.has("tip_offset_mm"):
        tip = inp.array("tip_offset_mm", (3,))
    res = _calibrated(
        calibration.spin_calibration, poses, tip_offset_mm=tip, min_spin_deg=args.min_spin_deg
    )
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
    doc = make_document("spin", values, transforms, _provenance(source, sha, args))
    return _write(
        doc,
        args,
        f"spin: axis {np.round(res.axis_tool, 4).tolist()}, wobble {res.wobble_rms_deg:.2f} deg",
    )


def _cmd_register(args: argparse.Namespace) -> int:
    inp = _Input(args.input, {"fixed_mm", "moving_mm", "targets_mm", "fle_mm"})
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
        {args.name: res.moving_to_fixed},
        _provenance(args.input, inp.sha256, args),
    )
    if args.plot:
        _plot_bars(
            args.plot,
            "Registration residuals per fiducial",
            "fiducial",
            res.residuals_mm,
            res.fre_mm,
        )
    where = "target" if inp.has("targets_mm") else "fiducials' centroid"
    tre = ", ".join(f"{v:.2f}" for v in res.expected_tre_mm)
    return _write(doc, args, f"register: FRE {res.fre_mm:.3f} mm, expected TRE at the {where} "
                             f"{tre} mm")


def _cmd_probe(args: argparse.Namespace) -> int:
    allowed = {
        "probe_to_tracker",
        "stylus_tip_tracker_mm",
        "stylus_to_tracker",
        "stylus_tip_offset_mm",
        "pixels",
        "pixel_spacing_mm",
    }
    inp = _Input(args.input, allowed)
    probe = inp.array("probe_to_tracker", (-1, 4, 4))
    if inp.has("stylus_tip_tracker_mm"):
        tips = inp.array("stylus_tip_tracker_mm", (-1, 3))
    elif inp.has("stylus_to_tracker"):
        stylus = inp.array("stylus_to_tracker", (-1, 4, 4))
        offset = inp.array("stylus_tip_offset_mm", (3,))
        tips = stylus[:, :3, :3] @ offset + stylus[:, :3, 3]
    else:
        raise UsageError(
            f"{args.input}: missing key 'stylus_tip_tracker_mm' (or 'stylus_to_tracker' "
            "with 'stylus_tip_offset_mm')"
        )
    res = _calibrated(
        calibration.probe_calibration,
        probe,
        tips,
        inp.array("pixels", (-1, 2)),
        inp.array("pixel_spacing_mm", (2,)),
    )
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
        {args.name: res.image_to_probe},
        _provenance(args.input, inp.sha256, args),
    )
    return _write(doc, args, f"probe: RMS {res.rms_mm:.3f} mm")


def _cmd_temporal(args: argparse.Namespace) -> int:
    inp = _Input(args.input, {"a", "b"})
    streams = []
    for key in ("a", "b"):
        obj = inp.obj(key, {"t_s", "x"})
        streams.append(inp.array("t_s", (-1,), obj, f"{key}.t_s"))
        streams.append(inp.array("x", (-1,), obj, f"{key}.x"))
    res = _calibrated(
        calibration.temporal_calibration,
        *streams,
        max_lag_s=args.max_lag_s,
        min_std=args.min_std,
    )
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
        _provenance(args.input, inp.sha256, args),
    )
    return _write(doc, args, f"temporal: b lags a by {res.lag_s * 1000:.1f} ms")


def _cmd_carm(args: argparse.Namespace) -> int:
    inp = _Input(args.input, {"points_mm", "pixels"})
    res = _calibrated(
        calibration.carm_calibration,
        inp.array("points_mm", (-1, 3)),
        inp.array("pixels", (-1, 2)),
    )
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
        {args.name: res.phantom_to_camera},
        _provenance(args.input, inp.sha256, args),
    )
    return _write(doc, args, f"carm: reprojection RMS {res.reprojection_rms_px:.3f} px")


def _cmd_accuracy(args: argparse.Namespace) -> int:
    figures = run_all(np.random.default_rng(args.seed))
    for f in figures:
        status = "PASS" if f.passed else "FAIL"
        print(
            f"{status} {f.name:13s} measured {f.measured:.4g} {f.unit} "
            f"(reference {f.reference:.4g}): {f.criterion}"
        )
        for label, value in f.details:
            print(f"     {label} = {value:.4g}")
    if args.json:
        report = {
            "seed": args.seed,
            "software_version": f"guidance {__version__}",
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "figures": [f.to_json() for f in figures],
        }
        try:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(report, fh, indent=2)
        except OSError as e:
            raise UsageError(f"{args.json}: cannot write: {e.strerror or e}") from None
    return 0 if all(f.passed for f in figures) else 1


# -- registration with the top-level parser ------------------------------------------------


def _checked(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except CalibrationFileError as e:
            raise UsageError(str(e)) from None

    return run


def _io_args(p: argparse.ArgumentParser, *, live: bool = False) -> None:
    if live:
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--input", type=path_arg("input_file"), metavar="FILE", help="input JSON")
        src.add_argument(
            "--from",
            dest="source",
            metavar="HOST:PORT",
            help="capture poses live from an OpenIGTLink server",
        )
        p.add_argument(
            "--tool",
            default="Stylus",
            help="tool frame (Stylus) or TRANSFORM device name (StylusToTracker)",
        )
        p.add_argument("--seconds", type=float, default=30.0, help="capture duration (s)")
        p.add_argument("--save-poses", type=path_arg("output_file"), metavar="FILE",
                       help="write the captured poses JSON")
    else:
        p.add_argument("--input", type=path_arg("input_file"), metavar="FILE", required=True,
                       help="input JSON")
    p.add_argument("--out", type=path_arg("output_file"), metavar="FILE",
                   help="output JSON (default: stdout)")


def register(subparsers: Any) -> None:
    """Add the ``calibrate`` command and its sub-commands."""
    parser = subparsers.add_parser(
        "calibrate",
        help="pivot/spin/probe/temporal/C-arm calibration and point registration",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    sub = parser.add_subparsers(dest="calibration", metavar="KIND", parser_class=type(parser))
    sub.required = True

    p = sub.add_parser("pivot", help="tool tip offset from poses pivoting about the tip")
    _io_args(p, live=True)
    p.add_argument("--min-range-deg", type=float, default=15.0,
                   help="least rotation range of the pivot motion, degrees (less: refused)")
    p.add_argument(
        "--ransac-mm", type=float, default=None, help="RANSAC inlier threshold (mm); off by default"
    )
    p.add_argument("--seed", type=int, default=0, help="RANSAC random seed")
    p.add_argument("--plot", type=path_arg("output_file"), metavar="FILE.png",
                   help="write a residual plot")
    p.set_defaults(func=_checked(_cmd_pivot))

    p = sub.add_parser("spin", help="needle axis from rotations about the shaft")
    _io_args(p, live=True)
    p.add_argument("--min-spin-deg", type=float, default=30.0,
                   help="least rotation about the needle axis, degrees (less: refused)")
    p.add_argument("--pivot", type=path_arg("input_file"), metavar="FILE",
                   help="pivot calibration of the same tool: the result then holds the whole "
                        "tip frame <Tool>TipTo<Tool> (tip from the pivot, +z along the "
                        "measured shaft)")
    p.set_defaults(func=_checked(_cmd_spin))

    p = sub.add_parser("register", help="paired-point rigid registration with expected TRE")
    _io_args(p)
    p.add_argument("--name", default="MovingToFixed", help="FromToTo name of the result")
    p.add_argument("--plot", type=path_arg("output_file"), metavar="FILE.png",
                   help="write a residual plot")
    p.set_defaults(func=_checked(_cmd_register))

    p = sub.add_parser("probe", help="ultrasound image_to_probe from a tracked stylus")
    _io_args(p)
    p.add_argument("--name", default="ImageToProbe", help="FromToTo name of the result")
    p.set_defaults(func=_checked(_cmd_probe))

    p = sub.add_parser("temporal", help="lag between two streams")
    _io_args(p)
    p.add_argument("--max-lag-s", type=float, default=0.5,
                   help="largest lag searched between the two signals, s")
    p.add_argument("--min-std", type=float, default=0.5, help="least signal std (its unit)")
    p.set_defaults(func=_checked(_cmd_temporal))

    p = sub.add_parser("carm", help="C-arm 3x4 projection from 3D fiducials and 2D pixels")
    _io_args(p)
    p.add_argument("--name", default="PhantomToCamera", help="FromToTo name of the pose")
    p.set_defaults(func=_checked(_cmd_carm))

    p = sub.add_parser("accuracy", help="Monte-Carlo accuracy checks; prints the figures")
    p.add_argument("--json", type=path_arg("output_file"), metavar="FILE",
                   help="also write the figures as JSON")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the simulated calibration data")
    p.set_defaults(func=_cmd_accuracy)
