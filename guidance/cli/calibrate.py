"""``guidance calibrate``: pivot, spin, register, probe, temporal, carm, accuracy.

JSON in, JSON out (``calibration/FORMATS.md``); the work is :mod:`guidance.workflows.calibrate`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from guidance.cli.common import path_arg
from guidance.workflows import calibrate as wf

__all__ = ["register"]


def _command(args: argparse.Namespace) -> str:
    opts = [f"--{k.replace('_', '-')} {v}" for k, v in sorted(vars(args).items())
            if k not in {"func", "command", "calibration", "verbose"} and v is not None]
    return " ".join(["calibrate", str(args.calibration), *opts])


def _emit(fn: Callable[[argparse.Namespace, str], wf.Calibrated]) -> Callable[..., int]:
    """The command: run ``fn``, write its document to ``--out`` (or print it)."""
    def run(args: argparse.Namespace) -> int:
        result = fn(args, _command(args))
        text = wf.write_document(result.document, args.out)
        print(f"{result.summary} -> {args.out}" if args.out else text)
        return 0

    return run


def _accuracy(args: argparse.Namespace) -> int:
    figures = wf.accuracy(args.seed)
    print("\n".join(wf.accuracy_lines(figures)))
    if args.json:
        wf.write_accuracy_report(figures, args.seed, args.json)
    return 0 if all(f.passed for f in figures) else 1


def _io_args(p: argparse.ArgumentParser, *, live: bool = False, plot: bool = False,
             name: str = "") -> None:
    src = p.add_mutually_exclusive_group(required=True) if live else p
    src.add_argument("--input", type=path_arg("input_file"), metavar="FILE", help="input JSON",
                     required=not live)
    if live:
        src.add_argument("--from", dest="source", metavar="HOST:PORT",
                         help="capture poses live from an OpenIGTLink server")
        p.add_argument("--tool", default="Stylus",
                       help="tool frame (Stylus) or TRANSFORM device name (StylusToTracker)")
        p.add_argument("--seconds", type=float, default=30.0, help="capture duration (s)")
        p.add_argument("--save-poses", type=path_arg("output_file"), metavar="FILE",
                       help="write the captured poses JSON")
    p.add_argument("--out", type=path_arg("output_file"), metavar="FILE",
                   help="output JSON (default: stdout)")
    if name:
        p.add_argument("--name", default=name, help="FromToTo name of the "
                       + ("pose" if name == "PhantomToCamera" else "result"))
    if plot:
        p.add_argument("--plot", type=path_arg("output_file"), metavar="FILE.png",
                       help="write a residual plot")


def register(subparsers: Any) -> None:
    """Add the ``calibrate`` command and its sub-commands."""
    parser = subparsers.add_parser(
        "calibrate", help="pivot/spin/probe/temporal/C-arm calibration and point registration",
        description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="calibration", metavar="KIND", parser_class=type(parser))
    sub.required = True

    p = sub.add_parser("pivot", help="tool tip offset from poses pivoting about the tip")
    _io_args(p, live=True)
    p.add_argument("--min-range-deg", type=float, default=15.0,
                   help="least rotation range of the pivot motion, degrees (less: refused)")
    p.add_argument("--ransac-mm", type=float, default=None,
                   help="RANSAC inlier threshold (mm); off by default")
    p.add_argument("--seed", type=int, default=0, help="RANSAC random seed")
    p.add_argument("--plot", type=path_arg("output_file"), metavar="FILE.png",
                   help="write a residual plot")
    p.set_defaults(func=_emit(lambda a, cmd: wf.pivot(
        wf.PoseSource(a.input, a.source, a.tool, a.seconds, a.save_poses),
        min_range_deg=a.min_range_deg, ransac_mm=a.ransac_mm, seed=a.seed, plot=a.plot,
        command=cmd)))

    p = sub.add_parser("spin", help="needle axis from rotations about the shaft")
    _io_args(p, live=True)
    p.add_argument("--min-spin-deg", type=float, default=30.0,
                   help="least rotation about the needle axis, degrees (less: refused)")
    p.add_argument("--pivot", type=path_arg("input_file"), metavar="FILE",
                   help="pivot calibration of the same tool: the result then holds the whole "
                        "tip frame <Tool>TipTo<Tool> (tip from the pivot, +z along the "
                        "measured shaft)")
    p.set_defaults(func=_emit(lambda a, cmd: wf.spin(
        wf.PoseSource(a.input, a.source, a.tool, a.seconds, a.save_poses),
        pivot_file=a.pivot, min_spin_deg=a.min_spin_deg, command=cmd)))

    p = sub.add_parser("register", help="paired-point rigid registration with expected TRE")
    _io_args(p, name="MovingToFixed", plot=True)
    p.set_defaults(func=_emit(lambda a, cmd: wf.register_points(
        a.input, name=a.name, plot=a.plot, command=cmd)))
    p = sub.add_parser("probe", help="ultrasound image_to_probe from a tracked stylus")
    _io_args(p, name="ImageToProbe")
    p.set_defaults(func=_emit(lambda a, cmd: wf.probe(a.input, name=a.name, command=cmd)))
    p = sub.add_parser("temporal", help="lag between two streams")
    _io_args(p)
    p.add_argument("--max-lag-s", type=float, default=0.5,
                   help="largest lag searched between the two signals, s")
    p.add_argument("--min-std", type=float, default=0.5, help="least signal std (its unit)")
    p.set_defaults(func=_emit(lambda a, cmd: wf.temporal(
        a.input, max_lag_s=a.max_lag_s, min_std=a.min_std, command=cmd)))
    p = sub.add_parser("carm", help="C-arm 3x4 projection from 3D fiducials and 2D pixels")
    _io_args(p, name="PhantomToCamera")
    p.set_defaults(func=_emit(lambda a, cmd: wf.carm(a.input, name=a.name, command=cmd)))

    p = sub.add_parser("accuracy", help="Monte-Carlo accuracy checks; prints the figures")
    p.add_argument("--json", type=path_arg("output_file"), metavar="FILE",
                   help="also write the figures as JSON")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the simulated calibration data")
    p.set_defaults(func=_accuracy)
