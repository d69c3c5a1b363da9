"""The planning and verification parts of ``guidance demo`` on the real CT.

Before: the simulator's disc approach becomes a :class:`~guidance.planning.plan.Plan`
that records its anatomy (``plan.json``), and the structures for the live check are
rebuilt from that file, the way ``guidance run --plan`` rebuilds them. After: a control
CT with the needle where it ended up is made by the simulator and verified against the
plan (``verification/verification.json`` + HTML report).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from guidance.data import RealDataMissing, load_real_ct
from guidance.planning.plan import Plan, PlanError
from guidance.planning.provenance import REAL, load_plan_structures, record_anatomy
from guidance.planning.structures import StructureSet

__all__ = ["prepare_plan", "verify_final_needle"]

log = logging.getLogger(__name__)


def prepare_plan(entry_lps: npt.ArrayLike, target_lps: npt.ArrayLike, out_dir: Path,
                 ) -> tuple[Plan, StructureSet]:
    """Write the plan on the real CT to ``out_dir/plan.json`` and rebuild its structures
    from that file.

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
    # One path for the live check: what `guidance run --plan` would read and rebuild.
    saved = Plan.load(path)
    return saved, load_plan_structures(saved, path)


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
