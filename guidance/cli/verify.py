"""``guidance verify``: the final needle on a control CT against the plan
(:mod:`guidance.workflows.verify`). Exit 0: PASS, 1: OFF_TARGET / VIOLATION / needle not
found, 2: bad input or a PACS that did not take everything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from guidance.cli.common import path_arg, positive_float, start_gui_or_fail
from guidance.cli.pacs import ae_title, pacs_address
from guidance.session.console import progress_line

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from guidance.workflows import pacs, verify

    start_gui_or_fail(args, require_png=False)
    if args.pacs is not None:
        pacs.quiet_pynetdicom(args.verbose)
    found = verify.run_verify(
        args.plan, ct_source=args.ct, labels_source=args.labels, names_path=args.label_names,
        series_uid=args.series_uid, tolerance_mm=args.tolerance_mm, out=args.out,
        pacs=args.pacs, calling_ae=args.ae_title, progress=progress_line, say=print,
        warn=lambda line: print(line, file=sys.stderr),
        show=(lambda i, plan, f: _show(args, i.ct, plan, f.result, f.error, f.structures))
        if args.gui else None)
    return 0 if found.result is not None and found.result.verdict == "PASS" else 1


def _show(args: argparse.Namespace, ct: Any, plan: Any, result: Any, error: str,
          structures: Any) -> None:
    """The verification view (until closed, or a screenshot with ``--screenshot``)."""
    from guidance.gui.launch import show_verification

    path = show_verification(ct, plan, result, error, structures, ct_source=args.ct,
                             out=Path(args.out), screenshot=args.screenshot)
    if path is not None:
        print(f"screenshot: {path}")


def register(subparsers: Any) -> None:
    """Add the ``verify`` sub-command."""
    p = subparsers.add_parser(
        "verify", help="verify the needle on a control CT against a plan",
        description="Find the needle on a control CT (same frame as the planning CT), "
                    "compare it with the plan, write verification.json and an HTML report.")
    p.add_argument("--plan", required=True, type=path_arg("input_file"),
                   help="plan.json from `guidance plan`")
    p.add_argument("--ct", required=True, type=path_arg("input_path", special=("real",)),
                   help="control CT: DICOM folder/file or NIfTI")
    p.add_argument("--labels", default=None, type=path_arg("input_file", special=("real",)),
                   help="planning label map (default: the plan's labels source)")
    p.add_argument("--label-names", default=None, type=path_arg("input_file"),
                   help="CSV id,structure")
    p.add_argument("--series-uid", default=None, help="series to load from a DICOM folder")
    p.add_argument("--tolerance-mm", type=positive_float, default=3.0,
                   help="largest acceptable tip-to-target distance (mm)")
    p.add_argument("--out", required=True, type=path_arg("output_dir"), help="output folder")
    p.add_argument("--pacs", type=pacs_address, metavar="AET@HOST:PORT",
                   help="store the DICOM objects written (SR, SEG, key images) to this "
                        "PACS; unreachable or refusing: exit 2, every file kept "
                        "(default: nothing is sent)")
    p.add_argument("--ae-title", type=ae_title, default="GUIDANCE",
                   help="our AE title with --pacs (default GUIDANCE)")
    p.add_argument("--gui", action="store_true",
                   help="verification view: control scan with needle and target, errors, "
                        "verdict, report export")
    p.add_argument("--screenshot", type=path_arg("output_file", Path), default=None,
                   metavar="FILE",
                   help="with --gui: draw offscreen, save a PNG and stop")
    p.set_defaults(func=_run)
