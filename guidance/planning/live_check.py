"""Live safety check of the tracked needle against the plan and the critical structures.

Per check (target: well under 1 ms): the needle is sampled at a fixed number of points --
the tip, ``shaft_points`` along the shaft back to the skin-entry depth, and
``ahead_points`` along the current axis up to ``ahead_extra_mm`` beyond the target depth
-- and every structure's distance field is sampled there (trilinear). Nothing is
allocated per check beyond a few small arrays.

Margins are widened by the declared uncertainties (see
:class:`~guidance.planning.config.LiveCheckConfig`):

    widening = coverage_k * sqrt(tracking^2 + calibration^2 + registration_tre^2)
               + latency_s * needle_speed

Root-sum-square because tracking, calibration and registration errors are independent
and zero-mean; the latency term is added linearly because it is a systematic lag (the
real tip is ahead of the displayed one by that much), not a random error.

Levels per structure (effective margin ``m = margin + widening``):

- DANGER: the tip or shaft is within ``m`` (or inside), or the path ahead breaches
  ``m`` within ``danger_ahead_mm`` of the tip;
- CAUTION: the path ahead breaches ``m`` further on, or the tip/shaft is within
  ``m + caution_extra_mm``;
- otherwise none. Plan deviation (lateral offset at target depth, angle) gives INFO or
  CAUTION, overshooting the target depth gives CAUTION. Unknown distances (needle
  outside the analysed region) give CAUTION: the assistant never says safe when it does
  not know.

Hysteresis: a level is entered at once; it is left only when the distance clears the
threshold by ``hysteresis_mm`` and the lower level has held for ``hold_s``.

Not thread-safe: one checker per live loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from guidance.planning.config import LiveCheckConfig
from guidance.planning.plan import Plan
from guidance.planning.structures import StructureSet
from guidance.records import SafetyWarning, WarningLevel

__all__ = ["LiveCheckResult", "LiveChecker", "bench_live_check"]


@dataclass(frozen=True)
class LiveCheckResult:
    """Outcome of one check.

    Attributes:
        t_s: the time passed to :meth:`LiveChecker.check`.
        level: worst level over all warnings (NONE if none).
        warnings: one per structure or plan item at INFO or above.
        tip_to_target_mm: Euclidean tip-to-target distance.
        lateral_offset_mm: distance between the target and where the current needle
            line crosses the plane through the target perpendicular to the plan.
        angle_deg: angle between the needle axis and the planned direction.
        clearance_mm: structure -> smallest signed distance over tip, shaft and path
            ahead, mm (NaN when unknown).
        depth_to_breach_mm: distance along the current axis from the tip to the first
            point within the effective margin of a hard structure (0 if already within;
            inf if none up to the end of the path ahead).
        widening_mm: how much every margin was widened.
    """

    t_s: float
    level: WarningLevel
    warnings: tuple[SafetyWarning, ...]
    tip_to_target_mm: float
    lateral_offset_mm: float
    angle_deg: float
    clearance_mm: dict[str, float]
    depth_to_breach_mm: float
    widening_mm: float


@dataclass
class _Held:
    level: WarningLevel = WarningLevel.NONE
    lower_since_s: float = math.nan


@dataclass
class _State:
    held: dict[str, _Held] = field(default_factory=dict)


class LiveChecker:
    """Checks needle poses against a plan; keeps hysteresis state between checks.

    Args:
        plan: the planned trajectory.
        structures: structure set with distance fields (built for the plan's region).
        config: thresholds and uncertainties.
    """

    def __init__(self, plan: Plan, structures: StructureSet,
                 config: LiveCheckConfig | None = None) -> None:
        if not isinstance(plan, Plan):
            raise TypeError(f"plan must be a Plan, got {type(plan).__name__}")
        if not isinstance(structures, StructureSet):
            raise TypeError(f"structures must be a StructureSet, got {type(structures).__name__}")
        self.plan = plan
        self.structures = structures
        self.config = config or LiveCheckConfig()
        c = self.config
        self._dir = plan.direction_lps
        self._margins = np.array([s.margin_mm for s in structures.structures])
        self._hard = np.array([s.hard for s in structures.structures])
        self._names = [s.name for s in structures.structures]
        # Grid transform split once: ijk = lps @ R.T + t.
        inv = structures.grid.lps_to_ijk
        self._r = inv[:3, :3].T.copy()
        self._t = inv[:3, 3].copy()
        self._sdfs = [s.sdf for s in structures.structures]
        # Parent-grid boxes of every field, to skip fields no sample point falls in
        # (they read cap_mm everywhere) without calling into them.
        lo, hi = [], []
        for sdf in self._sdfs:
            shape = np.array(sdf.distances_mm.shape[::-1], dtype=np.float64)
            scale = np.array([sdf.scale_ij, sdf.scale_ij, 1.0])
            lo.append(sdf.offset_ijk.astype(np.float64))
            hi.append(sdf.offset_ijk + shape * scale - 1.0 if sdf.present
                      else np.full(3, -np.inf))
        self._box_lo = np.array(lo)[:, None, :]
        self._box_hi = np.array(hi)[:, None, :]
        self._cap = structures.cap_mm
        self._n_shaft = c.shaft_points
        self._n_ahead = c.ahead_points
        self._unit_shaft = np.linspace(0.0, 1.0, c.shaft_points)
        self._unit_ahead = np.linspace(0.0, 1.0, c.ahead_points + 1)[1:]
        self._state = _State()
        self._static_sigma = (c.calibration_sigma_mm ** 2 + c.registration_tre_mm ** 2)

    def reset(self) -> None:
        """Forget hysteresis state (e.g. a new needle pass)."""
        self._state = _State()

    def widening_mm(self, needle_speed_mm_s: float, tracking_sigma_mm: float) -> float:
        c = self.config
        return (c.coverage_k * math.sqrt(tracking_sigma_mm ** 2 + self._static_sigma)
                + c.latency_s * abs(needle_speed_mm_s))

    def check(
        self,
        tip_lps: npt.ArrayLike,
        axis_lps: npt.ArrayLike,
        t_s: float,
        needle_speed_mm_s: float = 0.0,
        tracking_sigma_mm: float | None = None,
    ) -> LiveCheckResult:
        """Check one needle pose.

        Args:
            tip_lps: (3,) needle tip, LPS mm.
            axis_lps: (3,) needle direction hub -> tip (normalised here).
            t_s: time of the pose, seconds (monotonic; drives the hold time).
            needle_speed_mm_s: current insertion speed (for the latency term).
            tracking_sigma_mm: current tracking error (default: the config's).

        Raises:
            ValueError: non-finite input, zero axis, negative sigma.
        """
        c = self.config
        tip = np.asarray(tip_lps, dtype=np.float64).reshape(3)
        axis = np.asarray(axis_lps, dtype=np.float64).reshape(3)
        if not (np.all(np.isfinite(tip)) and np.all(np.isfinite(axis))):
            raise ValueError(f"tip_lps and axis_lps must be finite, got {tip} {axis}")
        n = math.sqrt(float(axis @ axis))
        if n < 1e-9:
            raise ValueError("axis_lps must be non-zero")
        axis = axis / n
        sigma = c.tracking_sigma_mm if tracking_sigma_mm is None else float(tracking_sigma_mm)
        if not sigma >= 0:
            raise ValueError(f"tracking_sigma_mm must be >= 0, got {tracking_sigma_mm}")
        widen = self.widening_mm(needle_speed_mm_s, sigma)

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
            s_cross = math.nan
            lateral = math.inf
        depth_along = float((tip - plan.entry_lps) @ self._dir)  # tip depth along the plan
        remaining = float(to_target @ axis)  # target depth ahead along the needle
        ahead_len = max(remaining, 0.0) + c.ahead_extra_mm
        shaft_len = min(max(depth_along, 0.0), plan.length_mm + c.ahead_extra_mm)

        pts = np.empty((1 + self._n_shaft + self._n_ahead, 3))
        pts[0] = tip
        pts[1:1 + self._n_shaft] = tip - np.outer(self._unit_shaft * shaft_len, axis)
        ahead_s = self._unit_ahead * ahead_len
        pts[1 + self._n_shaft:] = tip + np.outer(ahead_s, axis)
        ijk = pts @ self._r + self._t
        known = self.structures.in_roi(ijk)

        eff = self._margins + widen
        levels: dict[str, tuple[WarningLevel, float, str]] = {}
        clearance: dict[str, float] = {}
        breach = math.inf
        n_body = 1 + self._n_shaft
        touched = np.any(np.all((ijk >= self._box_lo) & (ijk <= self._box_hi), axis=2), axis=1)
        far = np.full(len(ijk), self._cap)
        for s, sdf in enumerate(self._sdfs):
            d = sdf.sample_ijk(ijk) if touched[s] else far
            name = self._names[s]
            d_now = float(d[:n_body].min())
            d_ahead = d[n_body:]
            clearance[name] = float(min(d_now, float(d_ahead.min())))
            if not self._hard[s]:
                continue
            hit = np.flatnonzero(d_ahead < eff[s])
            s_breach = 0.0 if d[0] < eff[s] else (
                float(ahead_s[hit[0]]) if hit.size else math.inf)
            if hit.size and hit[0] > 0 and d[0] >= eff[s]:
                # Linear interpolation between the last safe and first breaching sample.
                prev_d, prev_s = float(d_ahead[hit[0] - 1]), float(ahead_s[hit[0] - 1])
                cur_d = float(d_ahead[hit[0]])
                frac = (prev_d - eff[s]) / max(prev_d - cur_d, 1e-9)
                s_breach = prev_s + frac * (s_breach - prev_s)
            breach = min(breach, s_breach)
            levels[name] = self._structure_level(name, d_now, s_breach, eff[s], t_s)
        if not np.all(known):
            for name in clearance:
                clearance[name] = math.nan
            levels["region"] = (WarningLevel.CAUTION, math.nan,
                                "needle outside the analysed region: distances unknown")
            breach = math.nan
        # Plan deviation and progress.
        lat_level = (WarningLevel.CAUTION if lateral > c.lateral_caution_mm else
                     WarningLevel.INFO if lateral > c.lateral_info_mm else WarningLevel.NONE)
        ang_level = (WarningLevel.CAUTION if angle > c.angle_caution_deg else
                     WarningLevel.INFO if angle > c.angle_info_deg else WarningLevel.NONE)
        levels["plan_lateral"] = (
            self._hold("plan_lateral", lat_level, t_s), lateral,
            f"{lateral:.1f} mm off the plan at target depth")
        levels["plan_angle"] = (
            self._hold("plan_angle", ang_level, t_s), angle,
            f"{angle:.1f} deg from the planned direction")
        overshoot = -float(to_target @ self._dir)
        levels["target"] = (
            self._hold("target", WarningLevel.CAUTION if overshoot > c.overshoot_caution_mm
                       else WarningLevel.NONE, t_s),
            -overshoot, f"tip {overshoot:.1f} mm past the target depth")

        warnings = tuple(
            SafetyWarning(t_s, lvl, "plan" if key.startswith("plan") else key, dist, msg)
            for key, (lvl, dist, msg) in levels.items() if lvl > WarningLevel.NONE
        )
        level = max((w.level for w in warnings), default=WarningLevel.NONE)
        return LiveCheckResult(t_s, level, warnings, tip_to_target, lateral, angle, clearance,
                               breach, widen)

    def _structure_level(self, name: str, d_now: float, s_breach: float, eff: float,
                         t_s: float) -> tuple[WarningLevel, float, str]:
        c = self.config
        held = self._state.held.get(name)
        prev = held.level if held is not None else WarningLevel.NONE

        def level_for(shift: float) -> WarningLevel:
            if d_now < eff + shift or s_breach < c.danger_ahead_mm + shift:
                return WarningLevel.DANGER
            if math.isfinite(s_breach) or d_now < eff + c.caution_extra_mm + shift:
                return WarningLevel.CAUTION
            return WarningLevel.NONE

        raw = level_for(0.0)
        if raw < prev:
            # Leaving a level needs the distance to clear it by the hysteresis band.
            raw = max(raw, min(prev, level_for(c.hysteresis_mm)))
        level = self._hold(name, raw, t_s)
        if level >= WarningLevel.DANGER and d_now < 0:
            msg = f"{name}: needle inside ({-d_now:.1f} mm)"
        elif level >= WarningLevel.DANGER and d_now < eff:
            msg = f"{name}: {d_now:.1f} mm, within the {eff:.1f} mm margin"
        elif math.isfinite(s_breach):
            msg = f"{name}: breach of the {eff:.1f} mm margin {s_breach:.1f} mm ahead"
        else:
            msg = f"{name}: {d_now:.1f} mm (margin {eff:.1f} mm)"
        return level, d_now, msg

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


def bench_live_check(n: int = 2000, rng: np.random.Generator | None = None) -> dict[str, float]:
    """Time :meth:`LiveChecker.check` on the real CT (needle poses jittered along an
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
    checker = LiveChecker(plan, structures)
    times = np.empty(n)
    for k in range(n):
        frac = rng.uniform(0.2, 1.05)
        tip = entry + (target - entry) * frac + rng.normal(0, 1.5, 3)
        axis = plan.direction_lps + rng.normal(0, 0.03, 3)
        t0 = time.perf_counter()
        checker.check(tip, axis, k * 0.02, needle_speed_mm_s=2.0)
        times[k] = time.perf_counter() - t0
    ms = times * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "n": float(n),
            "structures": float(len(structures.structures))}
