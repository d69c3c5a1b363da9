"""The planning and verification parts of ``guidance demo`` on the real CT.

Before: the simulator's disc approach becomes a :class:`~guidance.planning.plan.Plan`,
its structures' distance fields are built once and the live check is wired into the
loop. After: a control CT with the needle where it ended up is made by the simulator
and verified against the plan (``verification/verification.json`` + HTML report).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from guidance.data import load_real_ct, load_real_labels, structure_names
from guidance.planning.live_check import LiveChecker
from guidance.planning.plan import Plan
from guidance.planning.structures import StructureSet, build_structures

__all__ = ["prepare_plan", "verify_final_needle"]

log = logging.getLogger(__name__)


def prepare_plan(entry_lps: npt.ArrayLike, target_lps: npt.ArrayLike, out_dir: Path,
                 ) -> tuple[Plan, StructureSet, LiveChecker]:
    """Plan (written to ``out_dir/plan.json``), structures and the live checker."""
    plan = Plan(np.asarray(entry_lps, float), np.asarray(target_lps, float),
                target_spec="disc:L1-L2 posterolateral (derived from vertebra labels)",
                ct_source="real", labels_source="real")
    centre = 0.5 * (plan.entry_lps + plan.target_lps)
    half = np.maximum(np.array([100.0, 100.0, 50.0]),
                      np.abs(plan.entry_lps - plan.target_lps) / 2 + 30)
    structures = build_structures(load_real_labels(), structure_names(),
                                  roi_center_lps=centre, roi_half_size_mm=half)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan.save(out_dir / "plan.json")
    return plan, structures, LiveChecker(plan, structures)


def verify_final_needle(plan: Plan, structures: StructureSet, tip_lps: npt.ArrayLike,
                        out_dir: Path, seed: int) -> dict[str, Any]:
    """Make a control CT with the needle from the plan's entry to ``tip_lps`` and verify
    it; returns the verification JSON (written with the report into ``out_dir``)."""
    from guidance.planning.report import write_verification_report
    from guidance.planning.verify import NeedleNotFoundError, verify_placement
    from guidance.sim.control_ct import insert_needle

    ct = insert_needle(load_real_ct(), plan.entry_lps, tip_lps,
                       rng=np.random.default_rng(seed))
    try:
        result = verify_placement(ct, plan, structures)
    except NeedleNotFoundError as e:
        return {"verdict": "NEEDLE_NOT_FOUND", "reasons": [str(e)]}
    write_verification_report(out_dir, ct, plan, result,
                              ct_source="simulated control CT (real CT + inserted needle)")
    data: dict[str, Any] = result.to_json()
    return data
