"""Metrics and verdict of a straight needle trajectory from an entry to a target (LPS mm).

Angles (needle direction ``d = (target - entry) / |target - entry|``, LPS):

- ``craniocaudal``: elevation out of the axial plane, degrees, positive when the tip
  heads cranially (superior, +S);
- ``mediolateral``: in the axial projection, angle from the straight
  posterior-to-anterior direction, degrees, positive when the tip heads to patient left;
- ``in_plane`` / ``out_of_plane``: the same pair measured against the CT acquisition
  plane (the plane of the image rows and columns): ``out_of_plane`` is the angle between
  the needle and that plane (gantry tilt needed to see the whole needle in one slice),
  ``in_plane`` the angle of its projection from the image column direction. For an
  axial acquisition they equal ``|craniocaudal|`` and ``|mediolateral|``.

Verdict: a *violation* is entering a hard structure, passing closer than its margin,
crossing a vertebra other than the target's (the target's own bones are allowed in the
last ``target_zone_mm``, or along the whole path for a vertebra target), leaving the
analysed region (distances unknown) or needing a longer needle than available. Soft
structures (``hard=False``) only give warnings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from guidance.planning.config import TrajectoryConfig
from guidance.planning.structures import StructureSet
from guidance.planning.targets import Target

__all__ = [
    "Clearance",
    "TrajectoryMetrics",
    "Violation",
    "evaluate_trajectory",
    "exempt_mask",
    "needle_angles_deg",
]


@dataclass(frozen=True)
class Clearance:
    """Closest approach of the path to one structure.

    Attributes:
        structure: name; min_mm: smallest signed distance along the path (negative =
            inside), mm; depth_mm: where, as distance from the entry along the path;
        at_lps: (3,) where, LPS mm; margin_mm: the required clearance.
    """

    structure: str
    min_mm: float
    depth_mm: float
    at_lps: npt.NDArray[np.float64]
    margin_mm: float
    kind: str
    hard: bool
    derived: bool


@dataclass(frozen=True)
class Violation:
    """A reason the trajectory is rejected (or, for soft structures, a warning).

    Attributes:
        structure: name (``"region"`` for unknown distances, ``"needle"`` for length).
        reason: ``"inside"``, ``"margin"``, ``"bone_crossing"``, ``"outside_region"``,
            ``"needle_length"``.
        distance_mm: the offending signed distance (NaN if not applicable).
        depth_mm: where along the path, mm from the entry.
        message: one line for people.
    """

    structure: str
    reason: str
    distance_mm: float
    depth_mm: float
    message: str

    def to_json(self) -> dict[str, object]:
        return {
            "structure": self.structure,
            "reason": self.reason,
            "distance_mm": None if math.isnan(self.distance_mm) else round(self.distance_mm, 2),
            "depth_mm": round(self.depth_mm, 1),
            "message": self.message,
        }


@dataclass(frozen=True)
class TrajectoryMetrics:
    """Everything computed about one trajectory.

    Attributes:
        entry_lps, target_lps: (3,) LPS mm.
        length_mm: entry-to-target distance.
        needle_length_mm: shortest standard needle >= length + hub margin (NaN if none).
        angles_deg: ``craniocaudal``, ``mediolateral``, ``in_plane``, ``out_of_plane``.
        clearances: one per structure, in the structure set's order.
        bone_crossings: vertebrae the path enters (target bones included, for info).
        violations: hard problems (empty = acceptable).
        warnings: soft problems.
    """

    entry_lps: npt.NDArray[np.float64]
    target_lps: npt.NDArray[np.float64]
    length_mm: float
    needle_length_mm: float
    angles_deg: Mapping[str, float]
    clearances: tuple[Clearance, ...]
    bone_crossings: tuple[str, ...]
    violations: tuple[Violation, ...]
    warnings: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        """True when there is no violation."""
        return not self.violations

    @property
    def clearance_mm(self) -> dict[str, float]:
        """Structure name -> minimum signed distance along the path, mm."""
        return {c.structure: c.min_mm for c in self.clearances}

    @property
    def min_excess_mm(self) -> float:
        """Smallest (clearance - margin) over the hard structures, mm."""
        values = [c.min_mm - c.margin_mm for c in self.clearances if c.hard and
                  c.kind != "bone"]
        return min(values) if values else math.inf

    def to_json(self) -> dict[str, object]:
        """JSON-ready summary (the plan.json fields)."""
        return {
            "entry_lps_mm": [round(float(v), 3) for v in self.entry_lps],
            "target_lps_mm": [round(float(v), 3) for v in self.target_lps],
            "length_mm": round(self.length_mm, 2),
            "needle_length_mm": None if math.isnan(self.needle_length_mm)
            else self.needle_length_mm,
            "angles_deg": {k: round(v, 2) for k, v in self.angles_deg.items()},
            "clearance_mm": {c.structure: round(c.min_mm, 2) for c in self.clearances},
            "closest_points": {
                c.structure: {"depth_mm": round(c.depth_mm, 1),
                              "lps_mm": [round(float(v), 2) for v in c.at_lps],
                              "margin_mm": c.margin_mm, "derived": c.derived}
                for c in self.clearances if c.min_mm < 29.0
            },
            "bone_crossings": list(self.bone_crossings),
            "violations": [v.to_json() for v in self.violations],
            "warnings": [v.to_json() for v in self.warnings],
            "ok": self.ok,
        }


def needle_angles_deg(
    entry_lps: npt.ArrayLike, target_lps: npt.ArrayLike,
    ijk_to_lps: npt.ArrayLike | None = None,
) -> dict[str, float]:
    """Angles of the entry->target direction (see the module docstring), degrees."""
    d = np.asarray(target_lps, float) - np.asarray(entry_lps, float)
    n = float(np.linalg.norm(d))
    if n == 0:
        raise ValueError("entry and target coincide")
    d = d / n
    cc = math.degrees(math.atan2(d[2], math.hypot(d[0], d[1])))
    ml = math.degrees(math.atan2(d[0], -d[1]))
    m = np.eye(4) if ijk_to_lps is None else np.asarray(ijk_to_lps, float)
    u = m[:3, 0] / np.linalg.norm(m[:3, 0])
    v = m[:3, 1] / np.linalg.norm(m[:3, 1])
    normal = np.cross(u, v)
    out = math.degrees(math.asin(min(1.0, abs(float(d @ normal)))))
    inp = math.degrees(math.atan2(abs(float(d @ u)), abs(float(d @ v))))
    return {"craniocaudal": cc, "mediolateral": ml, "in_plane": inp, "out_of_plane": out}


def exempt_mask(
    structures: StructureSet, target: Target | None, depth_mm: npt.NDArray[np.float64],
    length_mm: float | npt.NDArray[np.float64], config: TrajectoryConfig,
) -> npt.NDArray[np.bool_]:
    """(S, ...) True where a structure's samples are not counted: the target's own bones
    near the target (or everywhere for a vertebra target)."""
    out = np.zeros((len(structures.structures), *np.shape(depth_mm)), dtype=bool)
    if target is None:
        return out
    near = np.asarray(depth_mm) >= np.asarray(length_mm) - config.target_zone_mm
    for s, st in enumerate(structures.structures):
        if st.kind == "bone" and st.vertebra in target.bones:
            out[s] = True if target.kind == "vertebra" else near
    return out


def evaluate_trajectory(
    entry_lps: npt.ArrayLike,
    target_lps: npt.ArrayLike,
    structures: StructureSet,
    *,
    target: Target | None = None,
    config: TrajectoryConfig | None = None,
    ijk_to_lps: npt.ArrayLike | None = None,
) -> TrajectoryMetrics:
    """Evaluate the straight path from ``entry_lps`` to ``target_lps``.

    Args:
        entry_lps, target_lps: (3,) LPS mm.
        structures: built structure set.
        target: the resolved target (its bones are exempt near it); None for a bare
            point.
        config: sampling and needle options.
        ijk_to_lps: CT geometry for the in-plane angles (default: the structure grid).

    Raises:
        ValueError: points not (3,) finite, or coinciding.
    """
    config = config or TrajectoryConfig()
    e = np.asarray(entry_lps, dtype=np.float64).reshape(-1)
    t = np.asarray(target_lps, dtype=np.float64).reshape(-1)
    for name, p in (("entry_lps", e), ("target_lps", t)):
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise ValueError(f"{name} must be 3 finite numbers (LPS mm), got {p.tolist()}")
    length = float(np.linalg.norm(t - e))
    if length < 1e-6:
        raise ValueError("entry_lps and target_lps coincide")
    n = max(2, math.ceil(length / config.step_mm) + 1)
    depth = np.linspace(0.0, length, n)
    pts = e + np.outer(depth / length, t - e)
    dist = structures.sample(pts)  # (S, n)
    exempt = exempt_mask(structures, target, depth, length, config)
    counted = np.where(exempt, np.inf, dist)

    clearances: list[Clearance] = []
    violations: list[Violation] = []
    warnings: list[Violation] = []
    crossings: list[str] = []
    unknown = np.isnan(dist[0]) if dist.shape[0] else np.zeros(n, bool)
    if np.any(unknown):
        d0 = float(depth[np.argmax(unknown)])
        violations.append(Violation(
            "region", "outside_region", math.nan, d0,
            f"path leaves the analysed region at {d0:.1f} mm from the entry: "
            "distances unknown there"))
    for s, st in enumerate(structures.structures):
        row = np.where(np.isnan(dist[s]), np.inf, dist[s])
        i_min = int(np.argmin(row))
        clearances.append(Clearance(st.name, float(row[i_min]), float(depth[i_min]),
                                    pts[i_min], st.margin_mm, st.kind, st.hard, st.derived))
        if st.kind == "bone" and np.any(row < 0):
            crossings.append(st.vertebra)
        crow = np.where(np.isnan(counted[s]), np.inf, counted[s])
        j = int(np.argmin(crow))
        worst = float(crow[j])
        if worst >= st.margin_mm and worst >= 0:
            continue
        where = float(depth[j])
        if st.kind == "bone":
            if worst < 0:
                v = Violation(st.name, "bone_crossing", worst, where,
                              f"crosses {st.name} at {where:.1f} mm from the entry")
            else:
                v = Violation(st.name, "margin", worst, where,
                              f"{worst:.1f} mm from {st.name} (margin {st.margin_mm:g} mm)")
        elif worst < 0:
            v = Violation(st.name, "inside", worst, where,
                          f"enters {st.name} ({-worst:.1f} mm deep) at {where:.1f} mm "
                          "from the entry")
        else:
            v = Violation(st.name, "margin", worst, where,
                          f"passes {worst:.1f} mm from {st.name}, margin {st.margin_mm:g} mm, "
                          f"at {where:.1f} mm from the entry")
        (violations if st.hard else warnings).append(v)
    needed = length + config.hub_margin_mm
    fits = [x for x in config.needle_lengths_mm if x >= needed]
    needle = fits[0] if fits else math.nan
    if not fits:
        violations.append(Violation(
            "needle", "needle_length", math.nan, length,
            f"path {length:.0f} mm + hub {config.hub_margin_mm:g} mm exceeds the longest "
            f"needle ({config.needle_lengths_mm[-1]:g} mm)"))
    grid = structures.grid.ijk_to_lps if ijk_to_lps is None else ijk_to_lps
    return TrajectoryMetrics(
        e, t, length, needle, needle_angles_deg(e, t, grid), tuple(clearances),
        tuple(crossings), tuple(violations), tuple(warnings),
    )
