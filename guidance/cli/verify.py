"""``guidance verify``: check the final needle on a control CT against the plan.

    guidance verify --plan plan.json --ct PATH [--labels PATH|real] --out DIR

Writes ``DIR/verification.json``, ``DIR/report.html`` and two PNG key images, and for
a DICOM control CT ``DIR/dicom/``: a DICOM SR measurement report, a SEG of the needle
and the key images as Secondary Capture, in the control CT's study (``--pacs`` stores
them). Exit 0: PASS, 1: OFF_TARGET / VIOLATION / needle not found, 2: bad input or a
PACS that did not take everything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from guidance.cli.common import (
    path_arg,
    positive_float,
    show_or_screenshot,
    start_gui_or_fail,
)
from guidance.cli.main import UsageError
from guidance.cli.pacs import ae_title, pacs_address

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from guidance.cli.plan import ROI_HALF_MM, load_inputs
    from guidance.planning.anatomy import build_anatomy
    from guidance.planning.plan import Plan, PlanError
    from guidance.planning.provenance import check_plan_inside
    from guidance.planning.report import key_images, write_verification_report
    from guidance.planning.structures import build_structures
    from guidance.planning.targets import Target, TargetError, parse_target
    from guidance.planning.verify import NeedleNotFoundError, verify_placement

    start_gui_or_fail(args, require_png=False)
    try:
        plan = Plan.load(args.plan)
    except PlanError as e:
        raise UsageError(str(e)) from e
    labels_arg = args.labels or plan.labels_source or "real"
    ct, labels, names = load_inputs(args.ct, labels_arg, args.label_names, args.series_uid)
    try:  # the control CT is on the planning CT's grid (load_inputs checks the labels')
        check_plan_inside(plan, ct, str(args.plan), what="control CT")
    except PlanError as e:
        raise UsageError(str(e)) from e
    anatomy = build_anatomy(labels, names)
    target: Target | None = None
    if plan.target_spec:
        try:
            target = parse_target(plan.target_spec, anatomy, ct)
        except TargetError:
            target = None  # the plan's own target point is used below
    centre = 0.5 * (plan.entry_lps + plan.target_lps)
    half = np.maximum(np.array(ROI_HALF_MM), np.abs(plan.entry_lps - plan.target_lps) / 2 + 30)
    structures = build_structures(labels, names, roi_center_lps=centre, roi_half_size_mm=half)
    out = Path(args.out)
    try:
        result = verify_placement(ct, plan, structures, target=target,
                                  tolerance_mm=args.tolerance_mm)
    except NeedleNotFoundError as e:
        out.mkdir(parents=True, exist_ok=True)
        (out / "verification.json").write_text(json.dumps(
            {"verdict": "NEEDLE_NOT_FOUND", "reasons": [str(e)], "tip_lps_mm": None,
             "tip_to_target_mm": None, "angle_error_deg": None, "clearance_mm": {}},
            indent=2) + "\n")
        print(f"guidance verify: {e}", file=sys.stderr)
        if args.gui:
            _show(args, ct, plan, None, str(e), structures)
        return 1
    images = key_images(ct, plan, result, structures)
    paths = write_verification_report(out, ct, plan, result, ct_source=args.ct,
                                      structures=structures, images=images)
    print(f"tip {np.round(result.detection.tip_lps, 1).tolist()} LPS mm, "
          f"{result.tip_to_target_mm:.1f} mm from the target, angle "
          f"{result.angle_error_deg:.1f} deg to the plan")
    print(f"verdict: {result.verdict}")
    for r in result.reasons:
        print(f"  - {r}")
    print(f"wrote {paths['json']} and {paths['html']}")
    dicom = _write_dicom(args, out, ct, plan, result, structures, images)
    if args.gui:
        _show(args, ct, plan, result, "", structures)
    if args.pacs is not None:
        _send(args, dicom, out)
    return 0 if result.verdict == "PASS" else 1


def _write_dicom(args: argparse.Namespace, out: Path, ct: Any, plan: Any, result: Any,
                 structures: Any, images: list[Any]) -> list[Path]:
    """SR, SEG and key images under ``OUT/dicom`` when the control CT is DICOM (its
    identity copied); none for a NIfTI CT (no identity to copy: said, not invented)."""
    from guidance.pacs.objects import from_report, write_verification_dicom
    from guidance.pacs.source import NoDicomSource, read_source_series

    if args.ct == "real":
        print("DICOM objects: none (the embedded CT is NIfTI: no patient or study identity "
              "to copy)")
        return []
    try:
        source = read_source_series(args.ct, ct, args.series_uid)
    except NoDicomSource as e:
        print(f"DICOM objects: none ({e})")
        return []
    written = write_verification_dicom(out / "dicom", source, ct, plan, result, structures,
                                       from_report(images))
    print(f"DICOM objects in study {source.study_uid}: "
          + ", ".join(str(p) for p in written))
    return written


def _send(args: argparse.Namespace, files: list[Path], out: Path) -> None:
    """Store what was written; every file stays in ``out`` whatever happens."""
    from guidance.cli.pacs import print_store, quiet_pynetdicom
    from guidance.pacs.network import PacsError, store_files

    later = f"everything is kept in {out}; send it later with `guidance pacs store " \
            f"{out / 'dicom'} --to {args.pacs}`"
    if not files:
        raise UsageError(f"--pacs: nothing to send (no DICOM objects: the control CT is "
                         f"not DICOM); {out} holds the JSON and HTML report")
    quiet_pynetdicom(args.verbose)
    try:
        outcomes = store_files(files, args.pacs, calling_ae=args.ae_title)
    except PacsError as e:
        raise UsageError(f"{e}; {later}") from e
    bad = print_store(outcomes, args.pacs)
    if bad:
        raise UsageError(f"{bad} object(s) not stored to {args.pacs} (listed above); {later}")


def _show(args: argparse.Namespace, ct: Any, plan: Any, result: Any, error: str,
          structures: Any) -> None:
    """The verification view (until closed, or a screenshot with ``--screenshot``)."""
    from guidance.gui.app import MainWindow, ensure_app
    from guidance.gui.verification_view import VerificationView
    from guidance.planning.report import write_verification_report

    app = ensure_app(headless=args.screenshot is not None)

    def export(out: Path) -> dict[str, Path]:
        return write_verification_report(out, ct, plan, result, ct_source=args.ct,
                                         structures=structures)

    view = VerificationView(ct, plan, result, error, structures, export, Path(args.out))
    win = MainWindow([("Verification", view)])
    win.show()
    show_or_screenshot(app, win, args.screenshot)


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
