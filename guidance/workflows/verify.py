"""``guidance verify``: the final needle on a control CT against the plan.

Writes ``OUT/verification.json``, ``OUT/report.html`` and two PNG key images
(:mod:`guidance.planning.report`), and for a DICOM control CT ``OUT/dicom/``: a DICOM SR
measurement report, a SEG of the needle and the key images as Secondary Capture, in the
control CT's study (:mod:`guidance.pacs.objects`). Coordinates are LPS millimetres in the
planning CT's frame (the control CT is on its grid).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from guidance.workflows.plan import ROI_HALF_MM, PlanInputs
from guidance.workflows.shared import Progress, WorkflowError, no_progress

if TYPE_CHECKING:
    from guidance.pacs.network import PacsAddress
    from guidance.planning.plan import Plan
    from guidance.planning.structures import StructureSet
    from guidance.planning.verify import VerificationResult

__all__ = ["Verification", "load_plan", "result_lines", "run_verify", "verify_needle",
           "write_dicom"]

_log = logging.getLogger(__name__)


def load_plan(path: str | Path) -> Plan:
    """The plan to verify against.

    Raises:
        WorkflowError: unreadable or invalid (the message names the file).
    """
    from guidance.planning.plan import Plan, PlanError

    try:
        return Plan.load(path)
    except PlanError as e:
        raise WorkflowError(str(e)) from e


@dataclass(eq=False)
class Verification:
    """What :func:`verify_needle` found and wrote.

    Attributes:
        structures: the structures of the box around the planned path.
        result: the verification (None: no needle found, ``error`` says why).
        error: why no needle was found ('' when one was).
        reports: the JSON and HTML report written (``json``, ``html``).
        images: the report's key images (name, plane, RGB).
        dicom: DICOM objects written under ``OUT/dicom`` by :func:`write_dicom` (none
            for a NIfTI CT).
    """

    structures: StructureSet
    result: VerificationResult | None
    error: str = ""
    reports: dict[str, Path] = field(default_factory=dict)
    images: list[Any] = field(default_factory=list)
    dicom: list[Path] = field(default_factory=list)


def verify_needle(plan: Plan, plan_path: str | Path, inputs: PlanInputs, *, ct_source: str,
                  series_uid: str | None, tolerance_mm: float, out: str | Path
                  ) -> Verification:
    """Find the needle on the control CT of ``inputs`` (``ct_source`` as given:
    ``real``, DICOM or NIfTI), compare it with ``plan`` (tip within ``tolerance_mm`` of
    the target, clearances of the structures), write the reports and the DICOM objects
    to ``out`` (the DICOM objects: :func:`write_dicom`). No needle found:
    ``verification.json`` says so, nothing else is written.

    Raises:
        WorkflowError: the plan outside the control CT.
    """
    from guidance.planning.anatomy import build_anatomy
    from guidance.planning.plan import PlanError
    from guidance.planning.provenance import check_plan_inside
    from guidance.planning.report import key_images, write_verification_report
    from guidance.planning.structures import build_structures
    from guidance.planning.targets import Target, TargetError, parse_target
    from guidance.planning.verify import NeedleNotFoundError, verify_placement

    ct, labels, names = inputs.ct, inputs.labels, inputs.names
    try:  # the control CT is on the planning CT's grid (load_inputs checks the labels')
        check_plan_inside(plan, ct, str(plan_path), what="control CT")
    except PlanError as e:
        raise WorkflowError(str(e)) from e
    target: Target | None = None
    if plan.target_spec:
        try:
            target = parse_target(plan.target_spec, build_anatomy(labels, names), ct)
        except TargetError:
            target = None  # the plan's own target point is used
    centre = 0.5 * (plan.entry_lps + plan.target_lps)
    half = np.maximum(np.array(ROI_HALF_MM), np.abs(plan.entry_lps - plan.target_lps) / 2 + 30)
    structures = build_structures(labels, names, roi_center_lps=centre, roi_half_size_mm=half)
    out = Path(out)
    try:
        result = verify_placement(ct, plan, structures, target=target,
                                  tolerance_mm=tolerance_mm)
    except NeedleNotFoundError as e:
        out.mkdir(parents=True, exist_ok=True)
        (out / "verification.json").write_text(json.dumps(
            {"verdict": "NEEDLE_NOT_FOUND", "reasons": [str(e)], "tip_lps_mm": None,
             "tip_to_target_mm": None, "angle_error_deg": None, "clearance_mm": {}},
            indent=2) + "\n")
        return Verification(structures, None, str(e))
    images = key_images(ct, plan, result, structures)
    reports = write_verification_report(out, ct, plan, result, ct_source=ct_source,
                                        structures=structures, images=images)
    return Verification(structures, result, reports=reports, images=images)


def write_dicom(found: Verification, plan: Plan, inputs: PlanInputs, *, ct_source: str,
                series_uid: str | None, out: str | Path) -> str:
    """SR, SEG and key images under ``OUT/dicom`` when the control CT is DICOM (its
    identity copied, kept in ``found.dicom``); none for a NIfTI CT (no identity to copy:
    said, not invented).

    Returns:
        One line for people: the objects written in which study, or why none.
    """
    from guidance.pacs.objects import from_report, write_verification_dicom
    from guidance.pacs.source import NoDicomSource, read_source_series

    if ct_source == "real":
        return ("DICOM objects: none (the embedded CT is NIfTI: no patient or study identity "
                "to copy)")
    try:
        source = read_source_series(ct_source, inputs.ct, series_uid)
    except NoDicomSource as e:
        return f"DICOM objects: none ({e})"
    assert found.result is not None
    found.dicom = write_verification_dicom(Path(out) / "dicom", source, inputs.ct, plan,
                                           found.result, found.structures,
                                           from_report(found.images))
    return (f"DICOM objects in study {source.study_uid}: "
            + ", ".join(str(p) for p in found.dicom))


def result_lines(found: Verification) -> list[str]:
    """The verification for people: tip (LPS mm), distance to the target, angle to the
    plan, verdict and reasons, the reports written."""
    r = found.result
    assert r is not None
    return [f"tip {np.round(r.detection.tip_lps, 1).tolist()} LPS mm, "
            f"{r.tip_to_target_mm:.1f} mm from the target, angle "
            f"{r.angle_error_deg:.1f} deg to the plan",
            f"verdict: {r.verdict}",
            *(f"  - {reason}" for reason in r.reasons),
            f"wrote {found.reports['json']} and {found.reports['html']}"]


def run_verify(plan_path: str | Path, *, ct_source: str, labels_source: str | None,
               names_path: str | None, series_uid: str | None, tolerance_mm: float,
               out: str | Path, pacs: PacsAddress | None = None, calling_ae: str = "GUIDANCE",
               show: Callable[[PlanInputs, Plan, Verification], None] | None = None,
               progress: Progress = no_progress, say: Callable[[str], None] = _log.info,
               warn: Callable[[str], None] = _log.warning) -> Verification:
    """``guidance verify``: the plan, the control CT with the planning labels (default:
    the plan's labels source), :func:`verify_needle`, :func:`write_dicom`, then
    ``show`` (the verification view), then the DICOM objects stored to ``pacs``
    (:func:`guidance.workflows.pacs.send_verification`). ``say`` gets the result for
    people, ``warn`` how the labels were fitted and why no needle was found.

    Raises:
        WorkflowError: a bad plan or input, a PACS that did not take everything.
    """
    from guidance.workflows.pacs import send_verification
    from guidance.workflows.plan import load_inputs

    plan = load_plan(plan_path)
    inputs = load_inputs(ct_source, labels_source or plan.labels_source or "real", names_path,
                         series_uid, progress)
    if inputs.note:
        warn(f"labels: {inputs.note}")
    found = verify_needle(plan, plan_path, inputs, ct_source=ct_source, series_uid=series_uid,
                          tolerance_mm=tolerance_mm, out=out)
    if found.result is None:
        warn(f"guidance verify: {found.error}")
    else:
        for line in result_lines(found):
            say(line)
        say(write_dicom(found, plan, inputs, ct_source=ct_source, series_uid=series_uid,
                        out=out))
    if show is not None:
        show(inputs, plan, found)
    if found.result is not None and pacs is not None:  # every file stays in OUT
        report = send_verification(found.dicom, out, pacs, calling_ae=calling_ae)
        for line in report.lines:
            say(line)
        if report.failure:
            raise WorkflowError(report.failure)
    return found
