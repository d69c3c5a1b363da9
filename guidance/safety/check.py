"""The safety check: one :class:`~guidance.safety.decision.SafetyDecision` per frame.

It compares the needle (tip and axis in the planning CT, LPS mm) with the plan and with
the plan's critical structures. Per check (well under a millisecond) the needle is
sampled at a fixed number of points -- the tip, ``shaft_points`` along the shaft back to
the skin-entry depth, and ``ahead_points`` along the current axis up to
``ahead_extra_mm`` beyond the target's depth -- and every structure's signed distance
field is sampled there (trilinear). Nothing is allocated per check beyond a few small
arrays.

Margins are widened by the declared uncertainty (:class:`MarginWidening`):
``k * sqrt(tracking^2 + calibration^2 + registration^2) + latency * speed``.

Levels per structure (effective margin ``m = margin + widening``):

- DANGER: the tip or shaft is within ``m`` (or inside), or the path ahead breaches ``m``
  within ``danger_ahead_mm`` of the tip;
- CAUTION: the path ahead breaches ``m`` further on, or the tip/shaft is within
  ``m + caution_extra_mm``;
- INFO: the path ahead breaches ``m`` only beyond the target's depth (where the needle
  must not go; the path ahead reaches ``ahead_extra_mm`` past the target);
- otherwise none. Plan deviation (offset at the target's depth, angle) gives INFO or
  CAUTION, passing the target's depth gives CAUTION. Unknown distances (the needle
  outside the analysed region) and a plan without structures give CAUTION: the assistant
  never says safe when it does not know.

The target's own bones (the two vertebrae around a target disc or foramen, from the
plan's ``target_spec``) are not counted within ``target_zone_mm`` of the target's depth
(everywhere for a vertebra target), the rule the planner and the verification apply: a
needle that enters a disc passes between its endplates by design.

Hysteresis: a level is entered at once; it is left only when the distance clears the
threshold by ``hysteresis_mm`` and the lower level has held for ``hold_s``.

Not thread-safe: one check per live loop.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from guidance.planning.plan import Plan
from guidance.planning.sdf import SdfStack
from guidance.planning.structures import StructureSet
from guidance.records import SafetyReason, SafetyWarning, WarningLevel
from guidance.safety.config import SafetyConfig
from guidance.safety.decision import Clearance, MarginWidening, SafetyDecision

__all__ = ["SafetyCheck", "bench_safety_check", "target_bones"]

F64 = npt.NDArray[np.float64]

_LEVEL_SPEC = re.compile(r"^\s*([A-Za-z]\d+)\s*-\s*([A-Za-z]\d+)\s*$")


def target_bones(target_spec: str) -> tuple[tuple[str, ...], bool]:
    """The vertebrae a plan's target lets the needle touch near it, from its spec.

    Returns:
        (vertebra names such as ``("L1", "L2")``, whether they are exempt along the whole
        path: a vertebra target). ``((), False)`` for a point or an unknown spec.
    """
    parts = [p.strip() for p in str(target_spec).split(":")]
    kind = parts[0].lower()
    if kind in ("disc", "foramen") and len(parts) >= 2:
        m = _LEVEL_SPEC.match(parts[1])
        if m:
            return (m.group(1).upper(), m.group(2).upper()), False
    if kind == "vertebra" and len(parts) == 2 and parts[1]:
        return (parts[1].upper(),), True
    return (), False


@dataclass
class _Held:
    level: WarningLevel = WarningLevel.NONE
    lower_since_s: float = math.nan


@dataclass
class _Finding:
    level: WarningLevel
    reason: SafetyReason
    distance_mm: float
    margin_mm: float
    message: str


@dataclass
class _State:
    held: dict[str, _Held] = field(default_factory=dict)


def _unit3(value: npt.ArrayLike, name: str) -> F64:
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be 3 finite numbers, got {value!r}")
    return v


class SafetyCheck:
    """Checks needle poses against a plan and its structures; keeps hysteresis state.

    Args:
        plan: the planned trajectory (LPS mm of the planning CT).
        structures: the plan's structures with distance fields, or ``None`` (then only
            the plan deviation is checked and every decision says the anatomy was not).
        config: thresholds.

    Raises:
        TypeError: ``plan`` or ``structures`` of the wrong type.
    """

    def __init__(self, plan: Plan, structures: StructureSet | None,
                 config: SafetyConfig | None = None) -> None:
        if not isinstance(plan, Plan):
            raise TypeError(f"plan must be a Plan, got {type(plan).__name__}")
        if structures is not None and not isinstance(structures, StructureSet):
            raise TypeError(f"structures must be a StructureSet or None, got "
                            f"{type(structures).__name__}")
        self.plan = plan
        self.structures = structures
        self.config = config or SafetyConfig()
        c = self.config
        self._dir = plan.direction_lps
        self._n_shaft = c.shaft_points
        self._n_ahead = c.ahead_points
        self._unit_shaft = np.linspace(0.0, 1.0, c.shaft_points)
        self._unit_ahead = np.linspace(0.0, 1.0, c.ahead_points + 1)[1:]
        self._state = _State()
        if structures is None:
            return
        self._margins = np.array([s.margin_mm for s in structures.structures])
        self._hard = np.array([s.hard for s in structures.structures])
        self._names = [s.name for s in structures.structures]
        # Grid transform split once: ijk = lps @ R.T + t.
        inv = structures.grid.lps_to_ijk
        self._r = inv[:3, :3].T.copy()
        self._t = inv[:3, 3].copy()
        # Every field sampled at every point in one vectorised pass.
        self._stack = SdfStack([s.sdf for s in structures.structures])
        self._cap = structures.cap_mm
        bones, everywhere = target_bones(plan.target_spec)
        self._exempt = np.array([s.kind == "bone" and s.vertebra in bones
                                 for s in structures.structures])
        self._exempt_everywhere = everywhere

    def reset(self) -> None:
        """Forget the hysteresis state (e.g. a new needle pass or a new plan)."""
        self._state = _State()

    def check(
        self,
        tip_lps: npt.ArrayLike,
        axis_lps: npt.ArrayLike,
        t_s: float,
        widening: MarginWidening | None = None,
    ) -> SafetyDecision:
        """Check one needle pose.

        Args:
            tip_lps: (3,) needle tip in the planning CT, LPS mm.
            axis_lps: (3,) needle direction hub -> tip (normalised here).
            t_s: time of the pose, s (monotonic; drives the hold time).
            widening: the declared uncertainties and latency (default: the config's
                sigmas, no latency).

        Raises:
            ValueError: non-finite input or a zero axis.
        """
        c = self.config
        tip = _unit3(tip_lps, "tip_lps")
        axis = _unit3(axis_lps, "axis_lps")
        n = math.sqrt(float(axis @ axis))
        if n < 1e-9:
            raise ValueError("axis_lps must be non-zero")
        axis = axis / n
        if widening is None:
            widening = MarginWidening(c.tracking_sigma_mm, c.calibration_sigma_mm,
                                      c.registration_tre_mm, 0.0, 0.0, c.coverage_k,
                                      ("config defaults",))
        widen = widening.total_mm

        plan = self.plan
        to_target = plan.target_lps - tip
        tip_to_target = math.sqrt(float(to_target @ to_target))
        cosang = float(axis @ self._dir)
        angle = math.degrees(math.acos(max(-1.0, min(1.0, cosang))))
        # Where the needle line crosses the target plane (perpendicular to the plan).
        if cosang > 1e-3:
            s_cross = float(to_target @ self._dir) / cosang
            lateral = float(np.linalg.norm(tip + axis * s_cross - plan.target_lps))
        else:
            lateral = math.inf
        depth_along = float((tip - plan.entry_lps) @ self._dir)  # tip depth along the plan
        remaining = float(to_target @ axis)  # target depth ahead along the needle

        findings: dict[str, _Finding] = {}
        clearances: list[Clearance] = []
        breach, breach_name = math.nan, ""
        if self.structures is None:
            findings["anatomy"] = _Finding(
                self._hold("anatomy", WarningLevel.CAUTION, t_s),
                SafetyReason.ANATOMY_NOT_CHECKED, math.nan, math.nan,
                "anatomy not checked: the plan's structures are not loaded")
        else:
            breach, breach_name = self._structures(tip, axis, depth_along, remaining, widen,
                                                   t_s, findings, clearances)
        # Plan deviation and progress.
        lat_level = (WarningLevel.CAUTION if lateral > c.lateral_caution_mm else
                     WarningLevel.INFO if lateral > c.lateral_info_mm else WarningLevel.NONE)
        ang_level = (WarningLevel.CAUTION if angle > c.angle_caution_deg else
                     WarningLevel.INFO if angle > c.angle_info_deg else WarningLevel.NONE)
        findings["plan_lateral"] = _Finding(
            self._hold("plan_lateral", lat_level, t_s), SafetyReason.OFF_PLAN, lateral,
            math.nan, f"plan: {lateral:.1f} mm off the plan at target depth")
        findings["plan_angle"] = _Finding(
            self._hold("plan_angle", ang_level, t_s), SafetyReason.ANGLE_TO_PLAN, angle,
            math.nan, f"plan: {angle:.1f} deg from the planned direction")
        overshoot = -float(to_target @ self._dir)
        findings["target"] = _Finding(
            self._hold("target", WarningLevel.CAUTION if overshoot > c.overshoot_caution_mm
                       else WarningLevel.NONE, t_s),
            SafetyReason.PAST_TARGET, -overshoot,
            math.nan, f"target: tip {overshoot:.1f} mm past the target depth")

        warnings = [
            SafetyWarning(t_s, f.level, "plan" if key.startswith("plan") else key,
                          f.distance_mm, f.message, f.reason, f.margin_mm)
            for key, f in findings.items() if f.level > WarningLevel.NONE
        ]
        # Worst first; at one level anatomy before the plan, then the closest to its margin.
        warnings.sort(key=lambda w: (-int(w.level), math.isnan(w.margin_mm),
                                     (w.distance_mm - w.margin_mm)
                                     if math.isfinite(w.distance_mm - w.margin_mm) else 0.0))
        clearances.sort(key=lambda cl: (not math.isfinite(cl.clearance_mm),
                                        cl.clearance_mm - cl.margin_mm))
        if warnings:
            w = warnings[0]
            level, reason, structure = w.level, w.reason, w.structure
            clearance, margin = w.distance_mm, w.margin_mm
            if reason in (SafetyReason.OFF_PLAN, SafetyReason.ANGLE_TO_PLAN,
                          SafetyReason.PAST_TARGET):
                clearance = math.nan
        else:
            level, reason, structure = WarningLevel.NONE, SafetyReason.CLEAR, ""
            clearance, margin = math.nan, math.nan
        return SafetyDecision(
            t_s=t_s, level=level, reason=reason, structure=structure,
            clearance_mm=clearance, margin_mm=margin, findings=tuple(warnings),
            widening=widening, clearances=tuple(clearances), tip_to_target_mm=tip_to_target,
            lateral_offset_mm=lateral, angle_deg=angle, depth_to_target_mm=remaining,
            depth_to_breach_mm=breach, breach_structure=breach_name)

    def _structures(self, tip: F64, axis: F64, depth_along: float, remaining: float,
                    widen: float, t_s: float, findings: dict[str, _Finding],
                    clearances: list[Clearance]) -> tuple[float, str]:
        c = self.config
        structures = self.structures
        assert structures is not None
        ahead_len = max(remaining, 0.0) + c.ahead_extra_mm
        shaft_len = min(max(depth_along, 0.0), self.plan.length_mm + c.ahead_extra_mm)
        pts = np.empty((1 + self._n_shaft + self._n_ahead, 3))
        pts[0] = tip
        pts[1:1 + self._n_shaft] = tip - np.outer(self._unit_shaft * shaft_len, axis)
        ahead_s = self._unit_ahead * ahead_len
        pts[1 + self._n_shaft:] = tip + np.outer(ahead_s, axis)
        ijk = pts @ self._r + self._t
        known = bool(np.all(structures.in_roi(ijk)))

        eff = self._margins + widen
        n_body = 1 + self._n_shaft
        d = self._stack.sample(ijk)  # (structures, points)
        if self._exempt.any():
            # The target's own bones near (or beyond) the target's depth do not count.
            depth = (pts - self.plan.entry_lps) @ self._dir
            near = (np.ones(len(pts), dtype=bool) if self._exempt_everywhere
                    else depth >= self.plan.length_mm - c.target_zone_mm)
            d[np.ix_(self._exempt, near)] = self._cap
        d_now = d[:, :n_body].min(axis=1)
        d_ahead = d[:, n_body:]
        closest = np.minimum(d_now, d_ahead.min(axis=1))
        # The first point ahead within the (widened) margin, linearly interpolated
        # between the last safe and the first breaching sample.
        hit = d_ahead < eff[:, None]
        first = np.argmax(hit, axis=1)
        breach_s = np.full(len(eff), math.inf)
        has_hit = hit.any(axis=1)
        breach_s[has_hit] = ahead_s[first[has_hit]]
        interp = has_hit & (first > 0)
        if interp.any():
            rows = np.flatnonzero(interp)
            k = first[rows]
            prev_d, cur_d = d_ahead[rows, k - 1], d_ahead[rows, k]
            frac = (prev_d - eff[rows]) / np.maximum(prev_d - cur_d, 1e-9)
            prev_s = ahead_s[k - 1]
            breach_s[rows] = prev_s + frac * (ahead_s[k] - prev_s)
        breach_s[d[:, 0] < eff] = 0.0
        breach, breach_name = math.inf, ""
        for s in range(len(eff)):
            name = self._names[s]
            clearances.append(Clearance(
                name, float(closest[s]) if known else math.nan, float(eff[s]),
                bool(self._hard[s]), capped=known and closest[s] >= self._cap))
            if not self._hard[s]:
                continue
            s_breach = float(breach_s[s])
            if s_breach < breach:
                breach, breach_name = s_breach, name
            findings[name] = self._structure_finding(name, float(d_now[s]), s_breach,
                                                     float(eff[s]), float(self._margins[s]),
                                                     widen, t_s, max(remaining, 0.0))
        if not known:
            findings["region"] = _Finding(
                self._hold("region", WarningLevel.CAUTION, t_s),
                SafetyReason.OUTSIDE_ANALYSED_REGION, math.nan, math.nan,
                "region: needle outside the analysed region: distances unknown")
            return math.nan, ""
        return breach, breach_name

    def _structure_finding(self, name: str, d_now: float, s_breach: float, eff: float,
                           base: float, widen: float, t_s: float,
                           to_target_mm: float) -> _Finding:
        c = self.config
        held = self._state.held.get(name)
        prev = held.level if held is not None else WarningLevel.NONE
        # A breach only beyond the target's depth is where the needle must not go, not
        # where it is going: INFO (passing the target is a CAUTION of its own).
        beyond = math.isfinite(s_breach) and s_breach > to_target_mm

        def level_for(shift: float) -> WarningLevel:
            if d_now < eff + shift or (s_breach < c.danger_ahead_mm + shift and not beyond):
                return WarningLevel.DANGER
            if (math.isfinite(s_breach) and not beyond) or \
                    d_now < eff + c.caution_extra_mm + shift:
                return WarningLevel.CAUTION
            if beyond:
                return WarningLevel.INFO
            return WarningLevel.NONE

        raw = level_for(0.0)
        if raw < prev:
            # Leaving a level needs the distance to clear it by the hysteresis band.
            raw = max(raw, min(prev, level_for(c.hysteresis_mm)))
        level = self._hold(name, raw, t_s)
        margin = f"the {eff:.1f} mm margin ({base:g} + {widen:.1f} mm uncertainty)"
        if d_now < 0:
            reason = SafetyReason.INSIDE_STRUCTURE
            msg = f"{name}: needle inside ({-d_now:.1f} mm deep; margin {eff:.1f} mm)"
        elif d_now < eff:
            reason = SafetyReason.WITHIN_MARGIN
            msg = f"{name}: {d_now:.1f} mm, within {margin}"
        elif math.isfinite(s_breach):
            reason = SafetyReason.BREACH_AHEAD
            # Beyond the distance fields' cap the distance is a bound, not a measure.
            now = f"> {self._cap:g} mm" if d_now >= self._cap else f"{d_now:.1f} mm"
            msg = f"{name}: {now} now, breach of {margin} {s_breach:.1f} mm ahead"
            if beyond:
                msg += f" (beyond the target, {to_target_mm:.1f} mm ahead)"
        else:
            reason = SafetyReason.NEAR_STRUCTURE
            msg = (f"{name}: {d_now:.1f} mm, near the {eff:.1f} mm margin ({base:g} + "
                   f"{widen:.1f} mm uncertainty)")
        return _Finding(level, reason, d_now, eff, msg)

    def _hold(self, key: str, level: WarningLevel, t_s: float) -> WarningLevel:
        """Apply the hold time: a lower level replaces a higher one after ``hold_s``."""
        held = self._state.held.setdefault(key, _Held())
        if level >= held.level:
            held.level = level
            held.lower_since_s = math.nan
            return level
        if math.isnan(held.lower_since_s):
            held.lower_since_s = t_s
        if t_s - held.lower_since_s >= self.config.hold_s:
            held.level = level
            held.lower_since_s = math.nan
            return level
        return held.level


def bench_safety_check(n: int = 2000, rng: np.random.Generator | None = None
                       ) -> dict[str, float]:
    """Time :meth:`SafetyCheck.check` on the real CT (needle poses jittered along an
    automatic L1-L2 plan). Returns ``{"p50_ms", "p99_ms", "max_ms", "n", "structures"}``.

    Builds the structure set first (seconds, not timed).
    """
    from guidance.data import load_real_labels, structure_names
    from guidance.planning.anatomy import build_anatomy
    from guidance.planning.structures import build_structures

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = rng or np.random.default_rng(0)
    labels, names = load_real_labels(), structure_names()
    level = build_anatomy(labels, names).level("L1", "L2")
    target = level.posterolateral_disc_lps("left")
    structures = build_structures(labels, names, roi_center_lps=target,
                                  roi_half_size_mm=(100, 100, 50))
    entry = target + np.array([45.0, 80.0, -6.0])
    plan = Plan(entry, target, "bench")
    check = SafetyCheck(plan, structures)
    widening = MarginWidening(0.3, 0.4, 0.9, 0.06, 2.0)
    times = np.empty(n)
    for k in range(n):
        frac = rng.uniform(0.2, 1.05)
        tip = entry + (target - entry) * frac + rng.normal(0, 1.5, 3)
        axis = plan.direction_lps + rng.normal(0, 0.03, 3)
        t0 = time.perf_counter()
        check.check(tip, axis, k * 0.02, widening)
        times[k] = time.perf_counter() - t0
    ms = times * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "n": float(n),
            "structures": float(len(structures.structures))}
