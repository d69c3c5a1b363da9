"""``guidance plan``: trajectory planning on a CT with a label map (LPS mm); the work is
:mod:`guidance.workflows.plan`, the view (``--gui``) :mod:`guidance.gui.planning_view`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from guidance.cli.common import path_arg, show_or_screenshot, start_gui_or_fail
from guidance.cli.main import UsageError
from guidance.session.console import progress_line

__all__ = ["register"]


def _eprint(line: str) -> None:
    print(line, file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from guidance.workflows import plan as wf

    if args.gui:
        return _run_gui(args)
    start_gui_or_fail(args, require_png=False)  # --screenshot without --gui
    if args.target is None:
        raise UsageError("--target SPEC is required (or use --gui)")
    if args.entry is None and not args.auto:
        raise UsageError("give --entry X,Y,Z or --auto")
    outcome = wf.run_plan(wf.PlanSources(args.ct, args.labels, args.label_names,
                                         args.series_uid),
                          config_path=args.config, target_spec=args.target, entry=args.entry,
                          auto=args.auto, out=args.out, progress=progress_line, say=print,
                          warn=_eprint)
    return 0 if outcome.ok else 1


def _run_gui(args: argparse.Namespace) -> int:
    """``guidance plan --gui``: the planning view on the main thread."""
    from guidance.gui.app import MainWindow
    from guidance.gui.planning_view import PlanningView
    from guidance.workflows import plan as wf

    app = start_gui_or_fail(args, require_png=False)
    plan = wf.load_plan(args.load) if args.load is not None else None
    if args.target is None and plan is None:
        raise UsageError("--gui needs --target SPEC or --load plan.json (the analysed region "
                         "is built around the target)")
    inputs, src = wf.load_sources(wf.PlanSources(args.ct, args.labels, args.label_names,
                                                 args.series_uid),
                                  progress=progress_line, say=print, warn=_eprint)
    setup = wf.prepare_planning_view(
        inputs, target_spec=args.target, plan=plan, plan_path=args.load, ct_source=src.ct,
        labels_source=src.labels, names_path=src.names, progress=progress_line)
    view = PlanningView(inputs.ct, setup.structures, setup.target, plan, Path(args.out),
                        src.ct, src.labels, anatomy=setup.anatomy)
    win = MainWindow([("Planning", view)])
    win.show()
    if args.auto:
        view.start_auto_plan()
    show_or_screenshot(app, win, args.screenshot,
                       (lambda: view.wait_auto_plan(300.0)) if args.auto else None)
    return 0


def register(subparsers: Any) -> None:
    """Add the ``plan`` sub-command."""
    p = subparsers.add_parser(
        "plan", help="plan a needle trajectory on a CT (LPS mm)",
        description="Plan a straight needle trajectory and check it against the critical "
                    "structures. Exit 0: acceptable, 1: rejected, 2: bad input.")
    p.add_argument("--ct", default="real", type=path_arg("input_path", special=("real",)),
                   help="DICOM folder, DICOM file, NIfTI, or 'real' (embedded CT)")
    p.add_argument("--labels", default="real",
                   type=path_arg("input_file", special=("real", "totalsegmentator")),
                   help="label map on the CT (NIfTI, NRRD or DICOM SEG; any axis order of "
                        "the CT's grid is reoriented exactly, another grid resampled), "
                        "'real' (the embedded CT's), or 'totalsegmentator' (run it on the "
                        "CT if installed)")
    p.add_argument("--label-names", default=None, type=path_arg("input_file"),
                   help="CSV id,structure (default: TotalSegmentator names)")
    p.add_argument("--series-uid", default=None, help="series to load from a DICOM folder")
    p.add_argument("--target", default=None,
                   help="disc:L1-L2 (both posterolateral sides tried, the safer kept), "
                        "disc:L1-L2:left|right, foramen:L2-L3[:left|right], vertebra:L1, or "
                        "x,y,z in LPS mm (required without --gui)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--entry", default=None, help="entry point X,Y,Z (LPS mm)")
    group.add_argument("--auto", action="store_true", help="search entry points automatically")
    p.add_argument("--config", default=None, type=path_arg("input_file"),
                   help="JSON with sections structures / trajectory / auto")
    p.add_argument("--out", default="plan.json", type=path_arg("output_file"),
                   help="output plan JSON")
    p.add_argument("--gui", action="store_true",
                   help="planning view: three planes + trajectory reformat, click target and "
                        "entry, clearance table, auto plan, save/load (--out, --load)")
    p.add_argument("--load", default=None, type=path_arg("input_file"), metavar="FILE",
                   help="with --gui: start from this plan.json")
    p.add_argument("--screenshot", type=path_arg("output_file", Path), default=None,
                   metavar="FILE",
                   help="with --gui: draw offscreen, save a PNG (after --auto if given), stop")
    p.set_defaults(func=_run)
