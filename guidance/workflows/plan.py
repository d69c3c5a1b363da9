"""``guidance plan``: load the CT, labels and names, plan one trajectory (given entry or
automatic search, both sides of a disc given without one), write ``plan.json``.

Coordinates are LPS millimetres. ``real`` is the embedded real CT with its
TotalSegmentator labels. ``plan.json`` records the CT, labels and label names with their
SHA-256, the structure config and the analysed region, so that ``guidance run --plan``
rebuilds exactly these structures or refuses a missing or changed file
(:mod:`guidance.planning.provenance`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from guidance.io.validate import InputError
from guidance.workflows.shared import Progress, WorkflowError, no_progress

if TYPE_CHECKING:
    from guidance.geometry import ImageVolume
    from guidance.planning.auto import AutoPlanResult
    from guidance.planning.config import AutoPlanConfig, StructureConfig, TrajectoryConfig
    from guidance.planning.plan import Plan
    from guidance.planning.provenance import PlanAnatomy
    from guidance.planning.structures import StructureSet
    from guidance.planning.targets import Target
    from guidance.planning.trajectory import TrajectoryMetrics

__all__ = [
    "ROI_HALF_MM",
    "PlanInputs",
    "PlanOutcome",
    "PlanSettings",
    "PlanSources",
    "Variant",
    "ViewSetup",
    "load_inputs",
    "load_plan",
    "load_plan_config",
    "load_sources",
    "plan_trajectory",
    "prepare_planning_view",
    "record_inputs",
    "report_lines",
    "run_plan",
    "segment_with_totalsegmentator",
]

_log = logging.getLogger(__name__)

#: Half size of the analysed box around the target, mm (L, P, S).
ROI_HALF_MM = (100.0, 100.0, 50.0)


@dataclass(frozen=True, eq=False)
class PlanInputs:
    """The planning CT, its label map on the CT's grid, the class names, and what was
    done to fit the labels onto the CT (``note``, '' when nothing)."""

    ct: ImageVolume
    labels: ImageVolume
    names: dict[int, str]
    note: str


def load_inputs(ct_source: str, labels_source: str, names_path: str | None,
                series_uid: str | None, progress: Progress | None = None) -> PlanInputs:
    """Load CT (``real``, a DICOM folder or file, NIfTI), labels (``real``, NIfTI, NRRD,
    DICOM SEG) and class names (CSV; default: the SEG's own, else TotalSegmentator's).

    Raises:
        InputError: a file that cannot be read or is invalid (its message names it).
        WorkflowError: the real data missing, labels not overlapping the CT.
    """
    from guidance.data import RealDataMissing, load_real_ct, load_real_labels, structure_names
    from guidance.io.dicom_series import load_ct
    from guidance.io.label_grid import labels_onto_ct
    from guidance.io.labels_io import LabelMapError, load_labels_and_names, read_label_names

    try:
        if ct_source == "real":
            ct = load_real_ct()
        else:
            ct = load_ct(ct_source, series_uid=series_uid,
                         progress=progress("loading CT") if progress else None)
        own_names = None
        if labels_source == "real":
            labels = load_real_labels()
        else:
            labels, own_names = load_labels_and_names(labels_source)  # a SEG names its own
        names = None
        if names_path is not None:
            try:
                names = read_label_names(names_path)
            except LabelMapError as e:
                raise WorkflowError(f"--label-names {e}") from e
        if names is None:
            names = own_names if own_names is not None else structure_names()
        fit = labels_onto_ct(ct, labels, what=f"label map {labels_source}")
    except InputError:
        raise
    except (RealDataMissing, ValueError) as e:  # ValueError: no overlap at all
        raise WorkflowError(str(e)) from e
    return PlanInputs(ct, fit.labels, names, fit.note)


def segment_with_totalsegmentator(ct_source: str) -> tuple[Path, Path]:
    """``--labels totalsegmentator``: (label map, names CSV) of TotalSegmentator run on
    the CT (or its cached result), recorded in the plan as files like any others.

    Raises:
        WorkflowError: TotalSegmentator not installed or failed.
    """
    from guidance.data import real_ct_paths
    from guidance.io.totalsegmentator import TotalSegmentatorError, segment_ct

    ct_path = real_ct_paths()[0] if ct_source == "real" else ct_source
    try:
        labels, names = segment_ct(ct_path)
    except TotalSegmentatorError as e:
        raise WorkflowError(f"--labels totalsegmentator: {e}") from e
    return Path(labels), Path(names)


@dataclass(frozen=True)
class PlanSettings:
    """The sections of a planning config file, loaded by the planning config's own
    loaders; ``structures_raw`` is recorded in the plan as given."""

    structures_raw: Mapping[str, Any]
    structures: StructureConfig
    trajectory: TrajectoryConfig
    auto: AutoPlanConfig


def load_plan_config(path: str | None) -> PlanSettings:
    """``--config``: JSON with sections ``structures`` / ``trajectory`` / ``auto`` (none:
    the defaults).

    Raises:
        WorkflowError: unreadable, an unknown section, an invalid value (the message
            names ``--config``).
    """
    from guidance.io.validate import read_json_document
    from guidance.planning.config import AutoPlanConfig, StructureConfig, TrajectoryConfig

    data: Any = {}
    if path is not None:
        try:
            data = read_json_document(path, "config file")
        except InputError as e:
            raise WorkflowError(f"--config {e}") from e
        allowed = {"structures", "trajectory", "auto"}
        if not isinstance(data, dict) or set(data) - allowed:
            raise WorkflowError(
                f"--config {path}: unknown section(s) "
                f"{sorted(set(data) - allowed) if isinstance(data, dict) else data!r}; "
                f"allowed: {sorted(allowed)}")
    s_raw = data.get("structures", {})
    try:
        return PlanSettings(s_raw, StructureConfig.from_dict(s_raw),
                            TrajectoryConfig.from_dict(data.get("trajectory", {})),
                            AutoPlanConfig.from_dict(data.get("auto", {})))
    except (TypeError, ValueError) as e:
        raise WorkflowError(f"--config: {e}") from e


def record_inputs(ct_source: str, labels_source: str, names_path: str | None,
                  structures_config: Mapping[str, Any], centre_lps: npt.NDArray[np.float64],
                  half_mm: npt.NDArray[np.float64]) -> PlanAnatomy:
    """The plan's inputs with their hashes; the box (centre LPS mm, half size mm) exactly
    as given to ``build_structures``.

    Raises:
        WorkflowError: an input cannot be read back or hashed.
    """
    from guidance.data import RealDataMissing
    from guidance.planning.provenance import record_anatomy

    try:
        return record_anatomy(ct_source, labels_source, names_path, structures_config,
                              centre_lps, half_mm)
    except (OSError, RealDataMissing, ValueError) as e:
        raise WorkflowError(f"cannot record the plan's inputs: {e}") from e


def _mm(value: float, cap_mm: float) -> str:
    """A clearance for people: ``12.3 mm``, or ``> 30 mm`` at the distance fields' cap
    (beyond it distances are not computed: the value is a bound, not a measure)."""
    return f"> {cap_mm:g} mm" if value >= cap_mm - 1e-6 else f"{value:.1f} mm"


@dataclass
class Variant:
    """One target variant planned (a side of a disc given without one): the analysed box
    (centre LPS mm, half size mm), its structures and the metrics of the trajectory
    (None: the automatic search found no path)."""

    target: Target
    centre: npt.NDArray[np.float64]
    half: npt.NDArray[np.float64]
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


@dataclass
class PlanOutcome:
    """What :func:`plan_trajectory` did: the safer variant (``best``), the others, the
    plan written (None: no acceptable path; ``rejection`` says why, a few lines per
    variant)."""

    target_spec: str
    auto: bool
    best: Variant
    others: list[Variant]
    plan: Plan | None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    rejection: list[list[str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.best.ok


def _parse_xyz(text: str, what: str) -> npt.NDArray[np.float64]:
    try:
        p = np.array([float(v) for v in text.split(",")], dtype=np.float64)
    except ValueError as e:
        raise WorkflowError(f"{what} {text!r}: expected X,Y,Z in LPS mm") from e
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        raise WorkflowError(f"{what} {text!r}: expected X,Y,Z in LPS mm")
    return p


def plan_trajectory(inputs: PlanInputs, settings: PlanSettings, *, target_spec: str,
                    entry: str | None, auto: bool, ct_source: str, labels_source: str,
                    names_path: str | None, out: str | Path,
                    progress: Progress = no_progress) -> PlanOutcome:
    """Plan to ``target_spec`` (both sides of a disc or foramen without one; the safer
    kept) from ``entry`` (``X,Y,Z`` LPS mm) or an automatic search (``auto``); write the
    plan to ``out`` (no acceptable automatic path: the tried variants and why).

    Raises:
        WorkflowError: a bad target or entry, structures that cannot be built.
    """
    from guidance.planning.anatomy import build_anatomy
    from guidance.planning.auto import auto_plan, explain_rejection
    from guidance.planning.plan import Plan
    from guidance.planning.structures import build_structures
    from guidance.planning.targets import TargetError, parse_target, side_variants
    from guidance.planning.trajectory import evaluate_trajectory

    ct, labels, names = inputs.ct, inputs.labels, inputs.names
    t0 = time.perf_counter()
    anatomy = build_anatomy(labels, names)
    entry_lps = _parse_xyz(entry, "--entry") if entry is not None else None
    variants: list[Variant] = []
    specs = side_variants(target_spec)
    for spec in specs:
        try:
            target = parse_target(spec, anatomy, ct)
        except TargetError as e:
            raise WorkflowError(str(e)) from e
        if entry_lps is not None and np.linalg.norm(entry_lps - target.point_lps) < 5.0:
            raise WorkflowError(f"--entry {entry} is within 5 mm of the target "
                                f"{np.round(target.point_lps, 1).tolist()}")
        centre = target.point_lps if entry_lps is None else 0.5 * (target.point_lps + entry_lps)
        half = np.array(ROI_HALF_MM)
        if entry_lps is not None:
            half = np.maximum(half, np.abs(entry_lps - target.point_lps) / 2 + 20.0)
        try:
            structures = build_structures(labels, names, settings.structures,
                                          roi_center_lps=centre, roi_half_size_mm=half,
                                          progress=progress("distance fields"))
        except ValueError as e:
            raise WorkflowError(str(e)) from e
        if auto:
            result = auto_plan(ct, structures, target, config=settings.auto,
                               trajectory_config=settings.trajectory,
                               progress=progress(f"auto plan {spec}"))
            metrics = result.candidates[0].metrics if result.candidates else None
            variants.append(Variant(target, centre, half, structures, metrics, result))
        else:
            assert entry_lps is not None
            try:
                metrics = evaluate_trajectory(entry_lps, target.point_lps, structures,
                                              target=target, config=settings.trajectory,
                                              ijk_to_lps=ct.ijk_to_lps)
            except ValueError as e:
                raise WorkflowError(f"--entry: {e}") from e
            variants.append(Variant(target, centre, half, structures, metrics, None))
    best = max(variants, key=lambda o: o.safety_key())
    others = [o for o in variants if o is not best]
    if best.metrics is None:  # auto and no side has an acceptable path
        why = []
        for o in variants:
            assert o.auto is not None
            why.append(explain_rejection(o.auto, o.target))
        Path(out).write_text(json.dumps({
            "target_spec": target_spec,
            "tried": [{"target_spec": o.target.spec,
                       "target_lps_mm": o.target.point_lps.tolist(),
                       "rejections": o.auto.rejections if o.auto else {},
                       "near_miss": (o.auto.near_miss.to_json()
                                     if o.auto and o.auto.near_miss else None)}
                      for o in variants],
            "candidates": [], "ok": False}, indent=2))
        return PlanOutcome(target_spec, auto, best, others, None, rejection=why)
    metrics, target = best.metrics, best.target
    candidates = [c.to_json() for c in best.auto.candidates] if best.auto else []
    extra: dict[str, object] = dict(metrics.to_json())
    for key in ("entry_lps_mm", "target_lps_mm", "needle_length_mm"):
        extra.pop(key)
    extra["target_description"] = target.description
    if len(specs) > 1:
        extra["target_requested"] = target_spec
        extra["other_sides"] = [{"target_spec": o.target.spec, "verdict": o.summary()}
                                for o in others]
    extra["derived_structures"] = [s.name for s in best.structures.structures if s.derived]
    extra["candidates"] = candidates
    extra["elapsed_s"] = round(time.perf_counter() - t0, 2)
    # The plan names the side it chose: verify and run resolve the same point.
    plan = Plan(metrics.entry_lps, metrics.target_lps, target.spec, ct_source, labels_source,
                metrics.needle_length_mm, extra,
                anatomy=record_inputs(ct_source, labels_source, names_path,
                                      settings.structures_raw, best.centre, best.half))
    plan.save(out)
    return PlanOutcome(target_spec, auto, best, others, plan, candidates)


def report_lines(outcome: PlanOutcome) -> list[str]:
    """The plan for people (stdout of ``guidance plan``): target, entry, angles, the
    closest structures, the verdict, what to try when rejected, the other side."""
    best, metrics, target = outcome.best, outcome.best.metrics, outcome.best.target
    assert metrics is not None
    cap = best.structures.cap_mm
    a = metrics.angles_deg
    lines = []
    if outcome.others:
        lines.append(f"{outcome.target_spec}: both sides tried, the safer shown "
                     f"({target.spec})")
    lines.append(f"target {target.description}: {np.round(target.point_lps, 1).tolist()} "
                 "LPS mm")
    lines.append(f"entry {np.round(metrics.entry_lps, 1).tolist()} LPS mm, length "
                 f"{metrics.length_mm:.1f} mm, needle {metrics.needle_length_mm:g} mm, "
                 f"craniocaudal {a['craniocaudal']:.1f} deg, mediolateral "
                 f"{a['mediolateral']:.1f} deg")
    close = sorted(metrics.clearances, key=lambda c: c.min_mm - c.margin_mm)[:5]
    lines.append("closest: " + ", ".join(f"{c.structure} {_mm(c.min_mm, cap)} "
                                         f"(margin {c.margin_mm:g} mm)" for c in close))
    if metrics.ok:
        lines.append(f"verdict: OK ({len(outcome.candidates)} candidates)" if outcome.auto
                     else "verdict: OK")
    else:
        lines.append("verdict: REJECTED")
        lines += [f"  - {v.message}" for v in metrics.violations]
        lines.append("  try: " + ("--auto (a searched entry); " if not outcome.auto else "")
                     + "another side or level, an entry of your own (--entry X,Y,Z) or the "
                     "planning view (--gui)")
    lines += [f"other side {o.target.spec}: {o.summary()}" for o in outcome.others]
    return lines


def load_plan(path: str | Path) -> Plan:
    """``--load``: a saved plan.

    Raises:
        WorkflowError: unreadable or invalid (the message names ``--load``).
    """
    from guidance.planning.plan import Plan, PlanError

    try:
        return Plan.load(path)
    except PlanError as e:
        raise WorkflowError(f"--load: {e}") from e


@dataclass(frozen=True, eq=False)
class ViewSetup:
    """What the planning view starts from: the target (None: the loaded plan's point),
    the structures of the analysed box and the plan's recorded inputs."""

    target: Target | None
    structures: StructureSet
    anatomy: PlanAnatomy


def prepare_planning_view(inputs: PlanInputs, *, target_spec: str | None, plan: Plan | None,
                          plan_path: str | None, ct_source: str, labels_source: str,
                          names_path: str | None,
                          progress: Progress = no_progress) -> ViewSetup:
    """The planning view's target and structures (default structure config: what it
    records), around ``target_spec`` or the loaded ``plan``'s target (LPS mm).

    Raises:
        WorkflowError: the plan outside the CT, a bad target, structures that cannot be
            built.
    """
    from guidance.planning.anatomy import build_anatomy
    from guidance.planning.plan import PlanError
    from guidance.planning.provenance import check_plan_inside
    from guidance.planning.structures import build_structures
    from guidance.planning.targets import TargetError, parse_target

    if plan is not None:
        try:
            check_plan_inside(plan, inputs.ct, str(plan_path), what="CT")
        except PlanError as e:
            raise WorkflowError(f"--load: {e}") from e
    target = None
    if target_spec is not None:
        try:
            target = parse_target(target_spec, build_anatomy(inputs.labels, inputs.names),
                                  inputs.ct)
        except TargetError as e:
            raise WorkflowError(str(e)) from e
    if target is not None:
        centre = target.point_lps
    else:
        assert plan is not None
        centre = plan.target_lps
    half = np.array(ROI_HALF_MM)
    if plan is not None:
        half = np.maximum(half, np.abs(plan.entry_lps - centre) + 20.0)
    try:
        structures = build_structures(inputs.labels, inputs.names, roi_center_lps=centre,
                                      roi_half_size_mm=half,
                                      progress=progress("distance fields"))
    except ValueError as e:
        raise WorkflowError(str(e)) from e
    anatomy = record_inputs(ct_source, labels_source, names_path, {}, centre, half)
    return ViewSetup(target, structures, anatomy)


@dataclass(frozen=True)
class PlanSources:
    """The planning inputs as given (``real``, paths; ``totalsegmentator`` for the labels:
    run it on the CT) and the series to load from a DICOM folder."""

    ct: str
    labels: str
    names: str | None
    series_uid: str | None


def load_sources(src: PlanSources, *, progress: Progress = no_progress,
                 say: Callable[[str], None] = _log.info,
                 warn: Callable[[str], None] = _log.warning
                 ) -> tuple[PlanInputs, PlanSources]:
    """:func:`load_inputs` of ``src``, TotalSegmentator run first when asked (``say``
    names its files); ``warn`` gets how the labels were fitted onto the CT.

    Returns:
        The inputs and the sources as recorded in a plan (TotalSegmentator's files).
    """
    if src.labels == "totalsegmentator":
        labels, names = segment_with_totalsegmentator(src.ct)
        say(f"labels: TotalSegmentator's {labels} (names {names})")
        src = PlanSources(src.ct, str(labels), src.names or str(names), src.series_uid)
    inputs = load_inputs(src.ct, src.labels, src.names, src.series_uid, progress)
    if inputs.note:
        warn(f"labels: {inputs.note}")
    return inputs, src


def run_plan(src: PlanSources, *, config_path: str | None, target_spec: str,
             entry: str | None, auto: bool, out: str | Path, progress: Progress = no_progress,
             say: Callable[[str], None] = _log.info,
             warn: Callable[[str], None] = _log.warning) -> PlanOutcome:
    """``guidance plan``: the config, the inputs, :func:`plan_trajectory`; ``say`` gets
    the plan for people (:func:`report_lines`) and ``warn`` why no path was acceptable."""
    settings = load_plan_config(config_path)
    inputs, src = load_sources(src, progress=progress, say=say, warn=warn)
    outcome = plan_trajectory(inputs, settings, target_spec=target_spec, entry=entry, auto=auto,
                              ct_source=src.ct, labels_source=src.labels,
                              names_path=src.names, out=out, progress=progress)
    for why in outcome.rejection:
        for k, line in enumerate(why):
            warn(("guidance plan: " if k == 0 else "  ") + line)
    if outcome.plan is not None:
        for line in [*report_lines(outcome), f"wrote {out}"]:
            say(line)
    return outcome
