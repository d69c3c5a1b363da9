"""The safety check on an analytic phantom (a cord-like cylinder): levels, hysteresis,
uncertainty widening, plan deviation, unknown region, one decision per pose."""

from __future__ import annotations

import math

import numpy as np
import pytest

from guidance.geometry import ImageVolume
from guidance.planning.config import StructureConfig, StructureSpec
from guidance.planning.plan import Plan
from guidance.planning.structures import StructureSet, build_structures
from guidance.records import SafetyReason, WarningLevel
from guidance.safety import MarginWidening, SafetyCheck, SafetyConfig

CORD_XY = np.array([0.0, 0.0])
CORD_R = 5.0


@pytest.fixture(scope="module")
def phantom() -> StructureSet:
    """1 mm grid, cord cylinder (radius 5 mm) along S through x = y = 0."""
    shape = (60, 120, 120)
    m = np.eye(4)
    m[:3, 3] = [-60.0, -60.0, -30.0]
    vol = ImageVolume(np.zeros(shape, np.uint8), m)
    k, j, i = np.indices(shape)
    pts = vol.ijk_to_lps_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1))
    cord = np.linalg.norm(pts[:, :2] - CORD_XY, axis=1) <= CORD_R
    labels = ImageVolume((cord * 79).reshape(shape).astype(np.uint8), m)
    cfg = StructureConfig(structures=(StructureSpec("spinal_cord", ("spinal_cord",), 5.0),),
                          derive_nerve_roots=False)
    return build_structures(labels, {79: "spinal_cord"}, cfg, roi_center_lps=[0, 0, 0],
                            roi_half_size_mm=(45, 45, 20), use_cache=False)


def _plan() -> Plan:
    # Posterior to anterior, 25 mm lateral (left) of the cord: 20 mm clearance.
    return Plan(np.array([25.0, 40.0, 0.0]), np.array([25.0, -10.0, 0.0]), "25,-10,0")


CFG = SafetyConfig(tracking_sigma_mm=0.0, calibration_sigma_mm=0.0,
                   registration_tre_mm=0.0, hold_s=0.0)
NO_WIDENING = MarginWidening(0.0, 0.0, 0.0, 0.0, 0.0)


class LiveChecker(SafetyCheck):
    """The check with no widening unless given (the phantom's geometry is exact)."""

    def check(self, tip, axis, t_s, widening=NO_WIDENING):  # type: ignore[override]
        return super().check(tip, axis, t_s, widening)


def _levels(decision, structure):
    return max((w.level for w in decision.findings if w.structure == structure),
               default=WarningLevel.NONE)


def test_on_plan_far_from_structures_is_quiet(phantom: StructureSet) -> None:
    checker = LiveChecker(_plan(), phantom, CFG)
    r = checker.check([25.0, 20.0, 0.0], [0.0, -1.0, 0.0], 0.0)
    assert r.level == WarningLevel.NONE and r.findings == ()
    assert r.reason is SafetyReason.CLEAR and r.structure == ""
    assert r.tip_to_target_mm == pytest.approx(30.0)
    assert r.lateral_offset_mm == pytest.approx(0.0, abs=1e-9)
    assert r.angle_deg == pytest.approx(0.0, abs=1e-6)
    (cord,) = r.clearances
    assert cord.structure == "spinal_cord" and cord.clearance_mm == pytest.approx(20.0, abs=0.6)
    assert cord.margin_mm == pytest.approx(5.0)
    assert math.isinf(r.depth_to_breach_mm)
    assert r.text() == (f"OK: closest spinal_cord {cord.clearance_mm:.1f} mm "
                        "(margin 5.0 mm)")


def test_levels_as_the_tip_approaches_the_cord(phantom: StructureSet) -> None:
    checker = LiveChecker(_plan(), phantom, CFG)
    axis = np.array([0.0, -1.0, 0.0])

    def level_at(x: float, t: float) -> WarningLevel:
        return _levels(checker.check([x, 0.0, 0.0], axis, t), "spinal_cord")

    # Margin 5, widening 0, caution band 3: cord surface at x = 5.
    assert level_at(14.0, 0.0) == WarningLevel.NONE  # 9 mm
    assert level_at(12.0, 1.0) == WarningLevel.CAUTION  # 7 mm < 5 + 3
    assert level_at(9.0, 2.0) == WarningLevel.DANGER  # 4 mm < 5
    r = checker.check([4.0, 0.0, 0.0], axis, 3.0)  # inside
    assert r.level == WarningLevel.DANGER
    assert r.reason is SafetyReason.INSIDE_STRUCTURE and r.structure == "spinal_cord"
    assert "inside" in r.message and r.clearance_mm < 0 and r.margin_mm == pytest.approx(5.0)


def test_path_ahead_and_depth_to_breach(phantom: StructureSet) -> None:
    # Needle at x = 25 aimed at the cord (axis towards -x): breach ahead.
    plan = Plan(np.array([45.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.0]), "0,0,0")
    checker = LiveChecker(plan, phantom, CFG)
    r = checker.check([35.0, 0.0, 0.0], [-1.0, 0.0, 0.0], 0.0)
    # Effective margin 5 mm from the surface at x = 5: breach at x = 10, 25 mm ahead.
    assert r.depth_to_breach_mm == pytest.approx(25.0, abs=1.0)
    assert r.level == WarningLevel.CAUTION and r.breach_structure == "spinal_cord"
    assert r.reason is SafetyReason.BREACH_AHEAD
    r = checker.check([13.0, 0.0, 0.0], [-1.0, 0.0, 0.0], 1.0)
    assert r.depth_to_breach_mm == pytest.approx(3.0, abs=1.0)
    assert r.level == WarningLevel.DANGER  # breach within danger_ahead_mm


def test_hysteresis_prevents_flicker(phantom: StructureSet) -> None:
    cfg = SafetyConfig(hold_s=0.2, hysteresis_mm=1.0)
    checker = LiveChecker(_plan(), phantom, cfg)
    axis = np.array([0.0, -1.0, 0.0])
    # DANGER threshold: 5 mm from the voxelised surface (x = 5.5) -> x = 10.5; jitter.
    def cord(x: float, t: float) -> WarningLevel:
        return _levels(checker.check([x, 0.0, 0.0], axis, t), "spinal_cord")

    levels = [cord(10.5 + 0.3 * (-1) ** n, 0.05 * n) for n in range(40)]
    first = levels.index(WarningLevel.DANGER)
    assert all(lv == WarningLevel.DANGER for lv in levels[first:])
    # Clearing by less than the band keeps DANGER; clearing by more, long enough, drops it.
    assert cord(11.2, 3.0) == WarningLevel.DANGER
    assert cord(12.0, 3.1) == WarningLevel.DANGER  # cleared the band, but not for hold_s
    assert cord(12.0, 3.35) == WarningLevel.CAUTION
    # Without hysteresis the same jitter flickers (the test above could fail).
    raw = LiveChecker(_plan(), phantom, SafetyConfig(hold_s=0.0, hysteresis_mm=0.0))
    flick = [_levels(raw.check([10.5 + 0.3 * (-1) ** n, 0, 0], axis, 0.05 * n), "spinal_cord")
             for n in range(6)]
    assert len(set(flick)) == 2


def test_uncertainties_widen_the_margin(phantom: StructureSet) -> None:
    checker = SafetyCheck(_plan(), phantom, SafetyConfig(hold_s=0.0, coverage_k=2.0))
    widening = MarginWidening(tracking_mm=0.5, calibration_mm=0.5, registration_mm=1.0,
                              latency_s=0.1, speed_mm_s=10.0, coverage_k=2.0)
    expected = 2.0 * math.sqrt(0.25 + 0.25 + 1.0) + 0.1 * 10.0
    assert widening.total_mm == pytest.approx(expected)
    # 6.5 mm from the cord: CAUTION without uncertainty, DANGER once widened (> 1.5 mm).
    axis = np.array([0.0, -1.0, 0.0])
    assert _levels(LiveChecker(_plan(), phantom, CFG).check([11.5, 0, 0], axis, 0),
                   "spinal_cord") == WarningLevel.CAUTION
    r = checker.check([11.5, 0.0, 0.0], axis, 0.0, widening)
    assert _levels(r, "spinal_cord") == WarningLevel.DANGER
    assert r.widening.total_mm == pytest.approx(expected)
    assert r.margin_mm == pytest.approx(5.0 + expected)
    # The decision says what widened the margin, and the message shows the margin used.
    assert f"{5.0 + expected:.1f} mm margin" in r.message
    assert "registration 1.00" in r.widening.describe()
    # Without a widening the config's declared defaults are used.
    d = SafetyCheck(_plan(), phantom, SafetyConfig(hold_s=0.0)).check([11.5, 0, 0], axis, 0)
    assert d.widening.total_mm == pytest.approx(2.0 * math.sqrt(0.25 + 0.25 + 1.0))


def test_plan_deviation_levels(phantom: StructureSet) -> None:
    checker = LiveChecker(_plan(), phantom, CFG)
    tilt = np.radians(5.0)
    axis = np.array([np.sin(tilt), -np.cos(tilt), 0.0])
    r = checker.check([25.0, 20.0, 0.0], axis, 0.0)
    assert r.angle_deg == pytest.approx(5.0, abs=1e-6)
    assert r.lateral_offset_mm == pytest.approx(30.0 * np.tan(tilt), abs=1e-6)
    plan_warn = [w for w in r.findings if w.structure == "plan"]
    assert {w.level for w in plan_warn} == {WarningLevel.INFO}
    r = checker.check([31.0, 20.0, 0.0], [0, -1, 0], 1.0)  # 6 mm parallel offset
    assert r.lateral_offset_mm == pytest.approx(6.0)
    assert r.level == WarningLevel.CAUTION
    r = checker.check([25.0, -14.0, 0.0], [0, -1, 0], 2.0)  # 4 mm past the target
    assert any(w.structure == "target" and w.reason is SafetyReason.PAST_TARGET
               for w in r.findings)


def test_outside_region_is_never_safe(phantom: StructureSet) -> None:
    checker = LiveChecker(_plan(), phantom, CFG)
    r = checker.check([25.0, 20.0, 35.0], [0.0, -1.0, 0.0], 0.0)
    assert r.level >= WarningLevel.CAUTION
    assert any(w.structure == "region" for w in r.findings)
    assert r.reason is SafetyReason.OUTSIDE_ANALYSED_REGION
    assert math.isnan(r.clearances[0].clearance_mm) and math.isnan(r.depth_to_breach_mm)


def test_bad_input_and_config(phantom: StructureSet) -> None:
    checker = LiveChecker(_plan(), phantom, CFG)
    with pytest.raises(ValueError, match="axis_lps must be non-zero"):
        checker.check([0, 0, 0], [0, 0, 0], 0.0)
    with pytest.raises(ValueError, match="finite"):
        checker.check([np.nan, 0, 0], [0, 1, 0], 0.0)
    with pytest.raises(ValueError, match="unknown key"):
        SafetyConfig.from_dict({"tracking_sigma": 1.0})
    with pytest.raises(ValueError, match=r"safety\.registration_tre_mm: expected a number in "
                                         r"\[0, 10\] mm, got -1"):
        SafetyConfig.from_dict({"registration_tre_mm": -1})
    with pytest.raises(TypeError, match="plan must be a Plan"):
        SafetyCheck("plan.json", phantom)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="structures must be a StructureSet or None"):
        SafetyCheck(_plan(), "labels.nii")  # type: ignore[arg-type]


def test_one_decision_one_level_per_cause(phantom: StructureSet) -> None:
    """A needle 6 mm off the plan and near the cord: every structure and plan item gives at
    most one finding, and the decision is the worst of them (anatomy first)."""
    checker = LiveChecker(_plan(), phantom, CFG)
    r = checker.check([9.0, 0.0, 0.0], [0.0, -1.0, 0.0], 0.0)
    keys = [(w.structure, w.reason) for w in r.findings]
    assert len({k[0] for k in keys if k[0] != "plan"}) == len([k for k in keys
                                                              if k[0] != "plan"])
    assert len([k for k in keys if k[1] is SafetyReason.OFF_PLAN]) <= 1
    assert r.level == WarningLevel.DANGER and r.structure == "spinal_cord"
    assert r.findings[0].structure == "spinal_cord"
    assert all(a.level >= b.level for a, b in zip(r.findings, r.findings[1:], strict=False))
    assert r.text() == f"DANGER: {r.findings[0].message}"


def test_without_structures_the_anatomy_is_said_to_be_unchecked() -> None:
    check = SafetyCheck(_plan(), None, CFG)
    r = check.check([25.0, 20.0, 0.0], [0.0, -1.0, 0.0], 0.0, NO_WIDENING)
    assert r.level == WarningLevel.CAUTION
    assert r.reason is SafetyReason.ANATOMY_NOT_CHECKED and r.clearances == ()
