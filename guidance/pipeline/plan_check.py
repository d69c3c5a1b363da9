"""Deviation of the needle from the planned trajectory, with levels and hysteresis.

This is the check the live loop runs when it knows the plan (entry and target, LPS mm)
and a 3D needle (tip and axis, LPS): lateral offset of the tip from the planned line,
angle between the needle and the plan, tip-to-target distance and overshoot past the
target. Structure clearances (cord, nerve roots, vessels) come from
``guidance.planning`` when a planning CT with labels is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from guidance.pipeline.config import SafetyConfig
from guidance.records import SafetyWarning, WarningLevel

__all__ = ["Hysteresis", "PlanCheck", "PlanDeviation"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PlanDeviation:
    """Needle against plan.

    Attributes:
        lateral_offset_mm: distance of the tip from the planned line, mm.
        angle_deg: angle between needle axis and planned direction, degrees.
        depth_mm: tip depth along the plan from the entry, mm.
        tip_to_target_mm: Euclidean tip-to-target distance, mm.
        overshoot_mm: how far the tip is past the target along the plan (<= 0: not
            past), mm.
        level: worst level.
        warnings: one per raised condition.
    """

    lateral_offset_mm: float
    angle_deg: float
    depth_mm: float
    tip_to_target_mm: float
    overshoot_mm: float
    level: WarningLevel
    warnings: tuple[SafetyWarning, ...]


class Hysteresis:
    """A level that rises at its threshold and falls only ``margin`` below it.

    Args:
        thresholds: (value, level) pairs, ascending by value.
        margin: how far below a threshold the value must fall to leave that level.
    """

    def __init__(self, thresholds: list[tuple[float, WarningLevel]], margin: float) -> None:
        self.thresholds = sorted(thresholds)
        self.margin = margin
        self.level = WarningLevel.NONE

    def update(self, value: float) -> WarningLevel:
        """Feed a value; returns the (sticky) level."""
        new = WarningLevel.NONE
        for thr, lvl in self.thresholds:
            # Stay in a level we are in until we drop below threshold - margin.
            limit = thr - self.margin if self.level >= lvl else thr
            if value >= limit:
                new = lvl
        self.level = new
        return new


class PlanCheck:
    """Stateful (hysteresis) check of the needle against one plan.

    Args:
        entry_lps, target_lps: (3,) planned entry and target, LPS mm.
        config: thresholds.
    """

    def __init__(self, entry_lps: npt.ArrayLike, target_lps: npt.ArrayLike,
                 config: SafetyConfig) -> None:
        self.entry = np.asarray(entry_lps, np.float64).reshape(3)
        self.target = np.asarray(target_lps, np.float64).reshape(3)
        if not (np.all(np.isfinite(self.entry)) and np.all(np.isfinite(self.target))):
            raise ValueError("plan entry and target must be finite LPS coordinates")
        d = self.target - self.entry
        self.length_mm = float(np.linalg.norm(d))
        if self.length_mm < 1.0:
            raise ValueError(f"plan entry and target are {self.length_mm:.2f} mm apart (< 1 mm)")
        self.direction = d / self.length_mm
        self.config = config
        m = config.hysteresis_mm
        self._offset = Hysteresis([(config.caution_offset_mm, WarningLevel.CAUTION),
                                   (config.danger_offset_mm, WarningLevel.DANGER)], m)
        self._angle = Hysteresis([(config.caution_angle_deg, WarningLevel.CAUTION)], m)
        self._over = Hysteresis([(0.0, WarningLevel.INFO),
                                 (config.overshoot_danger_mm, WarningLevel.DANGER)], m)

    def check(self, tip_lps: F64, axis_lps: F64, t_s: float,
              needle_speed_mm_s: float = 0.0) -> PlanDeviation:
        """Compare a needle with the plan.

        Args:
            tip_lps: (3,) tip, LPS mm.
            axis_lps: (3,) unit axis, hub -> tip.
            t_s: frame time (s since start) stamped on warnings.
            needle_speed_mm_s: current needle speed; ``speed * latency_s`` widens the
                offset margins (the needle moves while we compute).
        """
        cfg = self.config
        rel = tip_lps - self.entry
        depth = float(rel @ self.direction)
        lateral = float(np.linalg.norm(rel - depth * self.direction))
        cosang = float(np.clip(axis_lps @ self.direction, -1.0, 1.0))
        angle = math.degrees(math.acos(cosang))
        to_target = float(np.linalg.norm(tip_lps - self.target))
        overshoot = depth - self.length_mm
        widen = cfg.uncertainty_mm + abs(needle_speed_mm_s) * cfg.latency_s
        warnings: list[SafetyWarning] = []
        lvl_off = self._offset.update(lateral + widen)
        if lvl_off > WarningLevel.NONE:
            warnings.append(SafetyWarning(
                t_s, lvl_off, "plan", lateral,
                f"needle {lateral:.1f} mm off the planned path "
                f"(+{widen:.1f} mm uncertainty)"))
        lvl_ang = self._angle.update(angle)
        if lvl_ang > WarningLevel.NONE:
            warnings.append(SafetyWarning(
                t_s, lvl_ang, "plan", float("nan"),
                f"needle {angle:.1f} deg from the planned direction"))
        lvl_over = self._over.update(overshoot + widen if overshoot > -widen else overshoot)
        if lvl_over >= WarningLevel.DANGER:
            warnings.append(SafetyWarning(
                t_s, lvl_over, "target", -overshoot,
                f"tip {overshoot:.1f} mm past the target"))
        elif lvl_over == WarningLevel.INFO:
            warnings.append(SafetyWarning(
                t_s, lvl_over, "target", to_target,
                f"tip at target depth ({to_target:.1f} mm from target)"))
        level = max([w.level for w in warnings], default=WarningLevel.NONE)
        return PlanDeviation(lateral, angle, depth, to_target, overshoot, level, tuple(warnings))
