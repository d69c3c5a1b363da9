"""Needle motion: advance from the entry toward the target, with seeded angular drift.

The needle is a straight rigid shaft pivoting about the skin entry point. Its inserted
length grows at ``speed_mm_s`` until it equals the planned entry-to-target distance,
then it holds. Drift is an angular deviation from the planned direction that grows
linearly with time (capped), about an axis fixed per sequence; with drift the tip ends
off the plan, the way a needle deflects or is mis-aimed.

A *scripted* path (``script``: keyframes of time, inserted length and drift angle,
linearly interpolated) replaces speed and drift rate: the demo's scenarios (a drift
toward a nerve root, seen and corrected: the needle pulled back and redirected) are
scripts (:mod:`guidance.sim.scenario`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from guidance.sim.params import NeedleParams
from trackers.pose import pose_from_tip_axis

__all__ = ["NeedlePath", "NeedleState", "needle_pose", "random_perpendicular"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class NeedleState:
    """Needle at one instant (LPS mm).

    Attributes:
        tip_lps: (3,) tip position, mm.
        axis_lps: (3,) unit vector, hub -> tip.
        hub_lps: (3,) hub position (``tip - length * axis``), mm.
        inserted_mm: length inserted past the entry point, mm.
        off_plan_mm: distance from the tip to the planned entry-target line, mm.
        drift_deg: current angular deviation from the plan, degrees.
    """

    tip_lps: F64
    axis_lps: F64
    hub_lps: F64
    inserted_mm: float
    off_plan_mm: float
    drift_deg: float


def _unit(v: npt.ArrayLike, name: str) -> F64:
    a = np.asarray(v, dtype=np.float64).reshape(3)
    n = float(np.linalg.norm(a))
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError(f"{name} must be a finite non-zero 3-vector, got {a}")
    return a / n


def random_perpendicular(direction: npt.ArrayLike, rng: np.random.Generator) -> F64:
    """A random unit vector perpendicular to ``direction`` (3,)."""
    d = _unit(direction, "direction")
    helper = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(d, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(d, e1)
    phi = float(rng.uniform(0.0, 2.0 * math.pi))
    return math.cos(phi) * e1 + math.sin(phi) * e2


def _rotate(v: F64, axis: F64, angle_rad: float) -> F64:
    # Rodrigues' rotation formula.
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return v * c + np.cross(axis, v) * s + axis * float(axis @ v) * (1.0 - c)


@dataclass(frozen=True)
class NeedlePath:
    """Planned path and the needle's motion along it.

    Attributes:
        entry_lps: (3,) skin entry point, LPS mm.
        target_lps: (3,) planned tip position, LPS mm.
        needle: speed, drift rate, gauge, start depth, length.
        drift_axis_lps: (3,) unit rotation axis of the drift, perpendicular to the plan.
        script: keyframes ``(t_s, inserted_mm, drift_deg)`` in increasing time, linearly
            interpolated and held before the first and after the last; when given they
            replace ``needle.speed_mm_s``, ``start_depth_mm`` and the drift rate
            (inserted length clamped to [0, plan length + 20 mm]).
    """

    entry_lps: F64
    target_lps: F64
    needle: NeedleParams
    drift_axis_lps: F64
    script: tuple[tuple[float, float, float], ...] = ()

    def __post_init__(self) -> None:
        entry = np.asarray(self.entry_lps, dtype=np.float64).reshape(3)
        target = np.asarray(self.target_lps, dtype=np.float64).reshape(3)
        if not (np.all(np.isfinite(entry)) and np.all(np.isfinite(target))):
            raise ValueError("entry_lps and target_lps must be finite")
        if np.linalg.norm(target - entry) < 1.0:
            raise ValueError("target_lps must be at least 1 mm from entry_lps")
        axis = _unit(self.drift_axis_lps, "drift_axis_lps")
        plan = (target - entry) / np.linalg.norm(target - entry)
        axis = axis - plan * float(axis @ plan)  # keep it perpendicular to the plan
        object.__setattr__(self, "entry_lps", entry)
        object.__setattr__(self, "target_lps", target)
        object.__setattr__(self, "drift_axis_lps", _unit(axis, "drift_axis_lps"))
        script = tuple(tuple(float(v) for v in k) for k in self.script)
        if any(len(k) != 3 or not all(math.isfinite(v) for v in k) for k in script):
            raise ValueError(f"script must be finite (t_s, inserted_mm, drift_deg) triples, "
                             f"got {self.script!r}")
        if any(b[0] <= a[0] for a, b in itertools.pairwise(script)):
            raise ValueError("script times must increase")
        object.__setattr__(self, "script", script)

    @property
    def plan_length_mm(self) -> float:
        """Entry-to-target distance, mm."""
        return float(np.linalg.norm(self.target_lps - self.entry_lps))

    @property
    def plan_axis_lps(self) -> F64:
        """(3,) unit planned direction, entry -> target."""
        return (self.target_lps - self.entry_lps) / self.plan_length_mm

    def state(self, t_s: float) -> NeedleState:
        """Needle at simulation time ``t_s`` (s; negative times clamp to 0)."""
        t = max(float(t_s), 0.0)
        n = self.needle
        if self.script:
            keys = np.asarray(self.script)
            inserted = float(np.clip(np.interp(t, keys[:, 0], keys[:, 1]), 0.0,
                                     self.plan_length_mm + 20.0))
            drift_deg = float(np.interp(t, keys[:, 0], keys[:, 2]))
        else:
            inserted = min(n.start_depth_mm + n.speed_mm_s * t, self.plan_length_mm)
            drift_deg = min(n.drift_deg_s * t, n.max_drift_deg)
        axis = _rotate(self.plan_axis_lps, self.drift_axis_lps, math.radians(drift_deg))
        tip = self.entry_lps + inserted * axis
        rel = tip - self.entry_lps
        off = float(np.linalg.norm(rel - self.plan_axis_lps * float(rel @ self.plan_axis_lps)))
        return NeedleState(
            tip_lps=tip,
            axis_lps=axis,
            hub_lps=tip - n.length_mm * axis,
            inserted_mm=inserted,
            off_plan_mm=off,
            drift_deg=drift_deg,
        )


def needle_pose(state: NeedleState) -> F64:
    """NeedleTipToReference 4x4: origin at the tip, +z along the axis (hub -> tip)."""
    return pose_from_tip_axis(state.tip_lps, state.axis_lps)
