"""``guidance demo``: simulator and live loop in one process over loopback (the scenarios
are :mod:`guidance.scenarios.demo` and :mod:`guidance.scenarios.demo_ct`)."""

from __future__ import annotations

import argparse
import functools
import threading
from pathlib import Path
from typing import Any

from guidance.cli.common import (
    path_arg,
    pixel_point,
    positive_float,
    start_gui_or_fail,
)
from guidance.cli.main import UsageError
from guidance.records import MODALITIES
from guidance.session.console import summary_lines

__all__ = ["register"]

_say = functools.partial(print, flush=True)


def register(sub: argparse._SubParsersAction) -> None:
    from guidance.sim.scenario import SCENARIOS

    p = sub.add_parser(
        "demo", help="simulated procedure on the real CT, end to end",
        description="Plan a left transforaminal L1-L2 approach on the embedded real CT "
        "(automatic, written to OUT/plan.json), calibrate a simulated room, stream the "
        "needle along that plan (tracker poses and scanner frames over loopback "
        "OpenIGTLink) through the live loop, and verify the final needle on a simulated "
        "control CT. Writes OUT/summary.json (with the safety timeline), annotated PNGs "
        "and OUT/verification/report.html.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenario", choices=SCENARIOS, default="safe",
                   help="safe: the needle follows the plan (verification PASS); drift: it "
                   "deviates toward the nearest nerve root mid-way (warning), is pulled back "
                   "and redirected (warning cleared); breach: the deviation is not "
                   "corrected (verification VIOLATION, one line per cause). With --modality "
                   "us the same in the image plane of an in-plane nerve block: safe reaches "
                   "the target beside the nerve; drift turns toward the nerve (the vessel "
                   "beyond it on the path ahead), is withdrawn and redirected; breach ends "
                   "with the tip inside the nerve")
    p.add_argument("--modality", choices=(*MODALITIES, "none"), default="fluoro",
                   help="fluoro: C-arm frames of the real CT; us: B-mode frames of a "
                   "synthetic nerve-block scene (its target is a point of the image, no "
                   "planning CT; verified against the scene's ground truth); ct: control "
                   "slabs of the real CT, one per step as the needle advances (the needle "
                   "in 3D, patient motion, the procedure timeline); none: tracked "
                   "needle poses only, navigation on the planning CT")
    p.add_argument("--seconds", type=positive_float,
                   help="duration of the streamed procedure, seconds (default: 12; with "
                   "--modality us the scenario's own length at a real block's pace, 14-23 "
                   "s). The scenario plays over it: shorter plays it faster")
    p.add_argument("--target-px", type=pixel_point, metavar="U,V",
                   help="--modality us: the target as a pixel of the frames (U column, V "
                   "row; default: beside the nerve); the needle is aimed at it and the live "
                   "loop measures the tip to it in the image plane")
    p.add_argument("--out", type=path_arg("output_dir", Path), default=Path("demo-out"),
                   metavar="DIR",
                   help="output folder (created)")
    p.add_argument("--fps", type=positive_float, default=15.0,
                   help="scanner frame rate, frames per second")
    p.add_argument("--size", type=int, default=512,
                   help="frame size, pixels per side (32-2048)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of every random choice (noise, jitter, calibration data)")
    p.add_argument("--gui", action="store_true",
                   help="show the live view (PyQt5) while the demo runs")
    p.add_argument("--screenshot", type=path_arg("output_file", Path), metavar="FILE",
                   help="with --gui: draw offscreen and save a PNG of the live view at the "
                        "end of the stream")
    p.add_argument("--sound", action="store_true", help="with --gui: beep on DANGER")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from guidance.scenarios import options_from
    from guidance.scenarios.demo import DemoOptions, run_demo
    from guidance.scenarios.demo_ct import run_ct_demo

    start_gui_or_fail(args, require_png=True)  # before anything starts
    opts = options_from(DemoOptions, args)
    if args.modality == "ct":
        if args.gui:
            raise UsageError("--modality ct: the CT demo runs without --gui for now (its "
                             "pictures are written to --out)")
        done = run_ct_demo(opts, _say)
    else:
        done = run_demo(opts, _say,
                        functools.partial(_live_view, args) if args.gui else None)
    print("\n".join(summary_lines(done.summary, done.title)))
    print("\n".join(done.lines))
    return 0


def _live_view(args: argparse.Namespace, session: Any, finished: threading.Event) -> None:
    """The live view on the main thread while the demo streams: grabbed when the stream
    ends (``--screenshot``), else open (STALE after the stream) until it is closed."""
    from guidance.gui.launch import live_view

    path = live_view(session, screenshot=args.screenshot, finished=finished,
                     sound=args.sound, out_dir=args.out)
    if path:
        print(f"screenshot: {path}", flush=True)
