"""The planning and verification parts of the demo on the real CT.

Before: the demo plans as a user does (``guidance plan --target SPEC --auto``), on the
real CT: the best automatic trajectory to ``DEMO_TARGET``, searched with every margin
widened by the room's expected uncertainty (``PLAN_WIDEN_MM``) so that a needle on the
plan is also clear in the live check (which widens the margins by what the room
declares); ``plan.json`` records the anatomy with the default structures, and the
structures for the live check are rebuilt from that file, the way ``guidance run
--plan`` rebuilds them. The simulated needle then follows this plan. After: a control CT
with the needle where it ended up is made by the simulator and verified against the
plan (``verification/verification.json`` + HTML report).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from guidance.data import RealDataMissing, load_real_ct, load_real_labels, structure_names
from guidance.planning.plan import Plan, PlanError
from guidance.planning.provenance import REAL, load_plan_structures, record_anatomy
from guidance.planning.structures import StructureSet
from guidance.planning.targets import Target

__all__ = ["DEMO_TARGET", "PLAN_WIDEN_MM", "nerve_root_near_plan", "plan_demo",
           "prepare_plan", "verify_final_needle"]

log = logging.getLogger(__name__)

#: The demo's procedure: a left transforaminal L1-L2 approach (a nerve-root block), in
#: view of the fluoroscopy simulator's C-arm (centred on the L1-L2 disc).
DEMO_TARGET = "foramen:L1-L2:left"
#: Margins are widened by this for the automatic search, mm: about what the simulated
#: room declares (calibration, registration and tracking, 2 sigma) plus latency; bone
#: margins by a little more, so that the needle's own error never takes it into a
#: bone's margin beside the path (DANGER, left only 1 mm further out: hysteresis).
PLAN_WIDEN_MM = 1.5
PLAN_BONE_WIDEN_MM = 2.0
#: Half size of the analysed box around the target, mm (as ``guidance plan``).
ROI_HALF_MM = (100.0, 100.0, 50.0)


def _widened(extra_mm: float, bone_mm: float) -> Any:
    from guidance.planning.config import StructureConfig

    base = StructureConfig()
    return StructureConfig(
        structures=tuple(dataclasses.replace(s, margin_mm=s.margin_mm + extra_mm)
                         if s.hard else s for s in base.structures),
        vertebra_margin_mm=base.vertebra_margin_mm + bone_mm,
        derive_nerve_roots=base.derive_nerve_roots,
        nerve_root_margin_mm=base.nerve_root_margin_mm + extra_mm,
        nerve_root_radius_mm=base.nerve_root_radius_mm,
        clearance_cap_mm=base.clearance_cap_mm + max(extra_mm, bone_mm))


def plan_demo(out_dir: Path, target_spec: str = DEMO_TARGET,
              widen_mm: float = PLAN_WIDEN_MM) -> tuple[Plan, StructureSet, Target]:
    """Plan automatically on the real CT, write ``out_dir/plan.json`` and rebuild its
    structures from that file.

    Returns:
        (the plan as read back from the file, its structures, the resolved target).

    Raises:
        guidance.planning.plan.PlanError: the real CT is not installed, no acceptable
            trajectory, or the file cannot be read back.
    """
    from guidance.planning.anatomy import build_anatomy
    from guidance.planning.auto import auto_plan
    from guidance.planning.structures import build_structures
    from guidance.planning.targets import TargetError, parse_target

    try:
        ct, labels, names = load_real_ct(), load_real_labels(), structure_names()
    except RealDataMissing as e:
        raise PlanError(f"cannot plan on the real CT: {e}") from e
    try:
        target = parse_target(target_spec, build_anatomy(labels, names), ct)
    except TargetError as e:
        raise PlanError(f"demo target {target_spec}: {e}") from e
    centre, half = target.point_lps, np.array(ROI_HALF_MM)
    search = build_structures(labels, names, _widened(widen_mm, PLAN_BONE_WIDEN_MM),
                              roi_center_lps=centre,
                              roi_half_size_mm=half)
    result = auto_plan(ct, search, target)
    if not result.candidates:
        raise PlanError(f"demo: no trajectory to {target_spec} clears every margin + "
                        f"{widen_mm:g} mm (rejections: {result.rejections})")
    best = result.candidates[0].metrics
    anatomy = record_anatomy(REAL, REAL, None, {}, centre, half)
    extra: dict[str, object] = {
        "target_description": target.description,
        "planned_with_margins_widened_mm": {"soft_tissue": widen_mm,
                                            "bone": PLAN_BONE_WIDEN_MM},
        "length_mm": round(best.length_mm, 2),
        "angles_deg": {k: round(v, 1) for k, v in best.angles_deg.items()},
        "candidates": len(result.candidates),
    }
    plan = Plan(best.entry_lps, best.target_lps, target_spec, REAL, REAL,
                best.needle_length_mm, extra, anatomy=anatomy)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "plan.json"
    plan.save(path)
    # One path for the live check: what `guidance run --plan` would read and rebuild.
    saved = Plan.load(path)
    return saved, load_plan_structures(saved, path), target


def prepare_plan(entry_lps: npt.ArrayLike, target_lps: npt.ArrayLike, out_dir: Path,
                 ) -> tuple[Plan, StructureSet]:
    """Write a given path on the real CT as ``out_dir/plan.json`` (recording its anatomy)
    and rebuild its structures from that file (the room tests and ``bench --tracked``).

    Returns:
        (the plan as read back from the file, its structures).

    Raises:
        guidance.planning.plan.PlanError: the real CT is not installed, or the file
            cannot be read back.
    """
    entry = np.asarray(entry_lps, float).reshape(3)
    target = np.asarray(target_lps, float).reshape(3)
    centre = 0.5 * (entry + target)
    half = np.maximum(np.array([100.0, 100.0, 50.0]), np.abs(entry - target) / 2 + 30)
    try:
        anatomy = record_anatomy(REAL, REAL, None, {}, centre, half)
    except RealDataMissing as e:
        raise PlanError(f"cannot plan on the real CT: {e}") from e
    plan = Plan(entry, target,
                target_spec="disc:L1-L2 posterolateral (derived from vertebra labels)",
                ct_source=REAL, labels_source=REAL, anatomy=anatomy)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "plan.json"
    plan.save(path)
    saved = Plan.load(path)
    return saved, load_plan_structures(saved, path)


def nerve_root_near_plan(plan: Plan, structures: StructureSet,
                         widen_mm: float = PLAN_WIDEN_MM,
                         ) -> tuple[str, npt.NDArray[np.float64], float]:
    """A drift from the plan into a nerve root: the root, the direction (3,) unit, LPS,
    perpendicular to the plan, and the angle (degrees, about the entry: the smallest of
    4-14 whose path reaches at least 1 mm into the root's margin + ``widen_mm``) of the
    needle's deviation; of the directions, the one that goes deepest into a root.

    Raises:
        ValueError: no nerve root inside the analysed region, or no such drift.
    """
    from guidance.sim.needle_path import _rotate
    from guidance.sim.scenario import drift_axis_toward

    roots = [i for i, s in enumerate(structures.structures) if s.kind == "nerve_root"]
    if not roots:
        raise ValueError("no nerve root in the plan's structures")
    margins = np.array([structures.structures[i].margin_mm + widen_mm for i in roots])
    u = plan.direction_lps
    helper = np.array([0.0, 0.0, 1.0]) if abs(u[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = np.cross(u, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u, e1)
    depths = np.linspace(0.2, 1.0, 81) * plan.length_mm
    for deg in (4.0, 6.0, 8.0, 10.0, 12.0, 14.0):
        best: tuple[float, str, npt.NDArray[np.float64]] | None = None
        for phi in np.linspace(0.0, 2 * np.pi, 36, endpoint=False):
            toward = np.cos(phi) * e1 + np.sin(phi) * e2
            axis = _rotate(u, drift_axis_toward(u, toward), np.radians(deg))
            d = structures.sample(plan.entry_lps + np.outer(depths, axis), roots)
            excess = np.where(np.isfinite(d), d, np.inf).min(axis=1) - margins
            row = int(np.argmin(excess))
            if excess[row] < -1.0 and (best is None or excess[row] < best[0]):
                best = (float(excess[row]), structures.structures[roots[row]].name, toward)
        if best is not None:
            return best[1], best[2], deg
    raise ValueError("no drift of 4-14 deg from the plan reaches a nerve root")


def verify_final_needle(plan: Plan, structures: StructureSet, tip_lps: npt.ArrayLike,
                        out_dir: Path, seed: int, target: Target | None = None,
                        ) -> dict[str, Any]:
    """Make a control CT with the needle from the plan's entry to ``tip_lps`` (written as
    the DICOM series a scanner would send, ``out_dir/control_ct``, the simulator's
    synthetic patient) and verify it as ``guidance verify`` does: the report with the
    structures outlined, and ``out_dir/dicom`` (SR, SEG, key images in the control CT's
    study, ready for ``guidance pacs store``). Returns the verification JSON."""
    from guidance.io.dicom_series import load_ct
    from guidance.pacs.objects import from_report, write_verification_dicom
    from guidance.pacs.source import read_source_series
    from guidance.planning.report import key_images, write_verification_report
    from guidance.planning.verify import NeedleNotFoundError, verify_placement
    from guidance.sim.control_ct import insert_needle, write_control_ct

    ct_dir = out_dir / "control_ct"
    if ct_dir.exists():  # ours, from an earlier demo
        shutil.rmtree(ct_dir)
    write_control_ct(insert_needle(load_real_ct(), plan.entry_lps, tip_lps,
                                   rng=np.random.default_rng(seed)), ct_dir)
    ct = load_ct(ct_dir)
    try:
        result = verify_placement(ct, plan, structures, target=target)
    except NeedleNotFoundError as e:
        return {"verdict": "NEEDLE_NOT_FOUND", "reasons": [str(e)]}
    images = key_images(ct, plan, result, structures)
    write_verification_report(out_dir, ct, plan, result, structures=structures,
                              images=images,
                              ct_source="simulated control CT (real CT + inserted needle)")
    written = write_verification_dicom(out_dir / "dicom", read_source_series(ct_dir, ct), ct,
                                       plan, result, structures, from_report(images))
    data: dict[str, Any] = result.to_json()
    data["dicom"] = [str(p) for p in written]
    return data
