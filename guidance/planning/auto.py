"""Automatic trajectory search: entry points on the skin, within angle limits, ranked.

Search space: needle directions on a regular grid of (mediolateral, craniocaudal) angles
(:func:`guidance.planning.trajectory.needle_angles_deg` conventions) pointing from a
posterior skin entry towards the target. For each direction the skin entry is where the
ray from the target leaves the body (CT above ``skin_hu``, holes filled per slice so
lungs and bowel gas count as body, largest connected component so the table does not).
Every path is sampled every 1 mm against every structure at once; paths with a hard
violation are rejected; the rest are ranked by

    score = clearance_weight * min(min_excess, 5) / 5
            - length_weight * length / 100 - angle_weight * |craniocaudal| / 30

where ``min_excess`` is the smallest (clearance - margin) over the hard soft-tissue
structures, mm. The best ``n_best`` paths at least ``min_separation_deg`` apart are then
re-evaluated exactly (0.5 mm sampling) and returned with their metrics.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from guidance.geometry import ImageVolume
from guidance.planning.config import AutoPlanConfig, TrajectoryConfig
from guidance.planning.structures import StructureSet
from guidance.planning.targets import Target
from guidance.planning.trajectory import TrajectoryMetrics, evaluate_trajectory, exempt_mask

__all__ = ["AutoPlanResult", "Candidate", "NearMiss", "auto_plan", "body_mask_on_grid",
           "explain_rejection"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]

_SCREEN_STEP_MM = 1.0


@dataclass(frozen=True)
class Candidate:
    """One proposed trajectory: its exact metrics and its ranking score."""

    metrics: TrajectoryMetrics
    score: float

    def to_json(self) -> dict[str, object]:
        out = self.metrics.to_json()
        out["score"] = round(self.score, 4)
        return out


@dataclass(frozen=True)
class NearMiss:
    """The rejected direction that came closest to acceptable (smallest shortfall).

    Attributes:
        structure: the structure it passes too close to (the worst shortfall).
        clearance_mm: how close it passes, mm (negative: through it).
        margin_mm: the margin required for that structure, mm.
        mediolateral_deg, craniocaudal_deg: the direction
            (:func:`~guidance.planning.trajectory.needle_angles_deg` conventions).
        others: further structures the same direction comes too close to.
    """

    structure: str
    clearance_mm: float
    margin_mm: float
    mediolateral_deg: float
    craniocaudal_deg: float
    others: tuple[str, ...] = ()

    def describe(self) -> str:
        """``the best direction passes 1.2 mm from nerve_root_L1_right (derived)
        (margin 2 mm)``."""
        where = (f"through {self.structure} ({-self.clearance_mm:.1f} mm deep)"
                 if self.clearance_mm < 0 else
                 f"{self.clearance_mm:.1f} mm from {self.structure}")
        text = (f"the best direction (mediolateral {self.mediolateral_deg:+.0f} deg, "
                f"craniocaudal {self.craniocaudal_deg:+.0f} deg) passes {where}, "
                f"margin {self.margin_mm:g} mm")
        if self.others:
            text += f"; it is also too close to {', '.join(self.others)}"
        return text

    def to_json(self) -> dict[str, object]:
        return {"structure": self.structure, "clearance_mm": round(self.clearance_mm, 2),
                "margin_mm": self.margin_mm,
                "mediolateral_deg": round(self.mediolateral_deg, 1),
                "craniocaudal_deg": round(self.craniocaudal_deg, 1),
                "others": list(self.others)}


@dataclass(frozen=True)
class AutoPlanResult:
    """Result of :func:`auto_plan`.

    Attributes:
        candidates: best first (may be empty: no acceptable path).
        n_directions: directions searched; n_feasible: those without violation.
        elapsed_s: wall time of the search (structures already built).
        rejections: reason -> count over the rejected directions (reasons with a
            count of 0 are left out).
        near_miss: among the directions that reach the skin inside the analysed region
            with an available needle, the one whose worst shortfall (margin -
            clearance) is smallest, when no candidate is acceptable (``None`` otherwise
            or when no direction got that far).
    """

    candidates: tuple[Candidate, ...]
    n_directions: int
    n_feasible: int
    elapsed_s: float
    rejections: dict[str, int]
    near_miss: NearMiss | None = None


def body_mask_on_grid(ct: ImageVolume, grid: ImageVolume, skin_hu: float) -> np.ndarray:
    """Body mask ``[k, j, i]`` on ``grid`` (a crop of the CT's grid).

    Raises:
        ValueError: when ``grid`` is not an integer-offset crop of the CT grid (the
            CT and labels must share a grid).
    """
    m = ct.lps_to_ijk @ grid.ijk_to_lps
    off = m[:3, 3]
    if not (np.allclose(m[:3, :3], np.eye(3), atol=1e-4)
            and np.allclose(off, np.round(off), atol=1e-3)):
        raise ValueError("CT and label map grids differ: resample the labels onto the CT")
    o = np.round(off).astype(int)
    k, j, i = grid.voxels.shape[:3]
    if np.any(o < 0) or np.any(o + np.array([i, j, k]) > np.array(ct.size_ijk)):
        raise ValueError("label grid extends beyond the CT")
    hu = ct.voxels[o[2]:o[2] + k, o[1]:o[1] + j, o[0]:o[0] + i]
    body = hu > skin_hu
    for s in range(body.shape[0]):
        body[s] = ndimage.binary_fill_holes(body[s])
    lab, n = ndimage.label(body)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        body = lab == int(np.argmax(sizes))
    return body


def _directions(cfg: AutoPlanConfig) -> tuple[np.ndarray, np.ndarray]:
    ml = np.arange(-cfg.max_mediolateral_deg, cfg.max_mediolateral_deg + 1e-9, cfg.step_deg)
    cc = np.arange(-cfg.max_craniocaudal_deg, cfg.max_craniocaudal_deg + 1e-9, cfg.step_deg)
    mlg, ccg = np.meshgrid(np.radians(ml), np.radians(cc), indexing="ij")
    mlg, ccg = mlg.ravel(), ccg.ravel()
    d = np.stack([np.sin(mlg) * np.cos(ccg), -np.cos(mlg) * np.cos(ccg), np.sin(ccg)], axis=1)
    return d, np.degrees(np.stack([mlg, ccg], axis=1))


def auto_plan(
    ct: ImageVolume,
    structures: StructureSet,
    target: Target,
    *,
    config: AutoPlanConfig | None = None,
    trajectory_config: TrajectoryConfig | None = None,
    progress: ProgressFn | None = None,
) -> AutoPlanResult:
    """Search skin entry points for ``target`` and return the best trajectories.

    Args:
        ct: the planning CT (HU), on the label map's grid.
        structures: built for a region containing the target and the skin around it.
        target: the resolved target.
        config: search space and ranking.
        trajectory_config: evaluation of the returned candidates.
        progress: optional ``progress(fraction, message)``.

    Raises:
        ValueError: CT and labels on different grids, target outside the region.
    """
    cfg = config or AutoPlanConfig()
    tcfg = trajectory_config or TrajectoryConfig()
    t0 = time.perf_counter()

    def report(f: float, msg: str) -> None:
        if progress is not None:
            progress(f, msg)

    grid = structures.grid
    tgt_ijk = grid.lps_to_ijk_points(target.point_lps)
    if not structures.in_roi(tgt_ijk)[0]:
        raise ValueError("target is outside the analysed region of the structure set")
    report(0.02, "body surface")
    body = body_mask_on_grid(ct, grid, cfg.skin_hu)
    dirs, angles = _directions(cfg)
    n_dir = len(dirs)
    n_steps = math.ceil(cfg.max_length_mm / _SCREEN_STEP_MM) + 1
    s_mm = np.arange(n_steps) * _SCREEN_STEP_MM  # distance from the target, outward
    # Outward rays: target - d * s (d points entry -> target).
    rays = target.point_lps[None, None, :] - dirs[:, None, :] * s_mm[None, :, None]
    ijk = grid.lps_to_ijk_points(rays.reshape(-1, 3))
    report(0.15, f"skin entries for {n_dir} directions")
    coords = ijk[:, ::-1].T
    inside_body = ndimage.map_coordinates(body.astype(np.uint8), coords, order=0,
                                          mode="constant", cval=0).reshape(n_dir, n_steps)
    in_roi = structures.in_roi(ijk).reshape(n_dir, n_steps)
    outside = inside_body == 0
    outside[:, 0] = False
    has_exit = outside.any(axis=1)
    exit_idx = np.where(has_exit, np.argmax(outside, axis=1), n_steps - 1)
    rejections: dict[str, int] = {}

    def reject(mask: np.ndarray, why: str) -> None:
        n = int(mask.sum())
        if n:
            rejections[why] = rejections.get(why, 0) + n

    feasible = has_exit.copy()
    reject(~has_exit, "no skin within max_length_mm")
    # Entry: last body sample before the exit (skin), length from the target.
    length = np.maximum(exit_idx - 1, 1) * _SCREEN_STEP_MM
    before_exit = np.arange(n_steps)[None, :] < exit_idx[:, None]
    roi_ok = np.all(in_roi | ~before_exit, axis=1)
    reject(feasible & ~roi_ok, "leaves the analysed region")
    feasible &= roi_ok
    too_long = length + tcfg.hub_margin_mm > tcfg.needle_lengths_mm[-1]
    reject(feasible & too_long, "needle too short")
    feasible &= ~too_long

    report(0.3, f"clearances along {int(feasible.sum())} paths")
    depth = length[:, None] - s_mm[None, :]  # depth from the entry of each sample
    valid = before_exit & feasible[:, None]
    flat = ijk.reshape(n_dir, n_steps, 3)[valid]
    n_struct = len(structures.structures)
    exempt = exempt_mask(structures, target, depth, length[:, None], tcfg)
    min_d = np.empty((n_struct, n_dir))
    row = np.empty((n_dir, n_steps))
    for s, st in enumerate(structures.structures):
        row.fill(np.inf)
        row[valid] = st.sdf.sample_ijk(flat)
        row[exempt[s]] = np.inf
        min_d[s] = row.min(axis=1)
        report(0.3 + 0.5 * (s + 1) / n_struct, f"clearance {st.name}")
    margins = np.array([st.margin_mm for st in structures.structures])
    hard = np.array([st.hard for st in structures.structures])
    bad = hard[:, None] & ((min_d < margins[:, None]) | (min_d < 0))
    for s, st in enumerate(structures.structures):
        reject(feasible & bad[s], f"violates {st.name}")
    reachable = feasible.copy()
    feasible &= ~bad.any(axis=0)
    soft_tissue = hard & np.array([st.kind != "bone" for st in structures.structures])
    excess = (min_d[soft_tissue] - margins[soft_tissue, None]).min(axis=0) if soft_tissue.any() \
        else np.full(n_dir, 5.0)
    score = (cfg.clearance_weight * np.minimum(excess, 5.0) / 5.0
             - cfg.length_weight * length / 100.0
             - cfg.angle_weight * np.abs(angles[:, 1]) / 30.0)
    score = np.where(feasible, score, -np.inf)

    report(0.85, "ranking")
    order = np.argsort(-score)
    chosen: list[int] = []
    for idx in order:
        if not np.isfinite(score[idx]) or len(chosen) >= 4 * cfg.n_best:
            break
        if all(math.degrees(math.acos(min(1.0, float(dirs[idx] @ dirs[c]))))
               >= cfg.min_separation_deg for c in chosen):
            chosen.append(int(idx))
    candidates: list[Candidate] = []
    for idx in chosen:
        entry = target.point_lps - dirs[idx] * length[idx]
        metrics = evaluate_trajectory(entry, target.point_lps, structures, target=target,
                                      config=tcfg)
        if metrics.ok:
            candidates.append(Candidate(metrics, float(score[idx])))
        if len(candidates) == cfg.n_best:
            break
    near = None
    if not candidates and reachable.any() and hard.any():
        near = _near_miss(structures, min_d, margins, hard, angles, reachable, candidates_tried=[
            evaluate_trajectory(target.point_lps - dirs[i] * length[i], target.point_lps,
                                structures, target=target, config=tcfg) for i in chosen[:1]])
    elapsed = time.perf_counter() - t0
    report(1.0, f"{len(candidates)} candidates")
    log.info("auto plan: %d directions, %d feasible, %d returned in %.2f s",
             n_dir, int(feasible.sum()), len(candidates), elapsed)
    return AutoPlanResult(tuple(candidates), n_dir, int(feasible.sum()), elapsed, rejections,
                          near)


def _near_miss(structures: StructureSet, min_d: np.ndarray, margins: np.ndarray,
               hard: np.ndarray, angles: np.ndarray, reachable: np.ndarray,
               candidates_tried: list[TrajectoryMetrics]) -> NearMiss:
    """The reachable direction with the smallest worst shortfall over the hard
    structures (or, when the screening let some through and the exact check refused
    them, the first such path's worst violation)."""
    names = [st.name for st in structures.structures]
    for m in candidates_tried:
        close = [c for c in m.clearances if c.hard and c.min_mm < c.margin_mm]
        if close:
            worst = max(close, key=lambda c: c.margin_mm - c.min_mm)
            a = m.angles_deg
            return NearMiss(worst.structure, worst.min_mm, worst.margin_mm,
                            a["mediolateral"], a["craniocaudal"],
                            tuple(c.structure for c in close if c is not worst))
    short = np.where(hard[:, None], margins[:, None] - min_d, -np.inf)  # > 0: too close
    worst_short = short.max(axis=0)
    idx = int(np.argmin(np.where(reachable, worst_short, np.inf)))
    s = int(np.argmax(short[:, idx]))
    others = tuple(names[k] for k in np.argsort(-short[:, idx])
                   if k != s and short[k, idx] > 0)
    return NearMiss(names[s], float(min_d[s, idx]), float(margins[s]),
                    float(angles[idx, 0]), float(angles[idx, 1]), others)


def explain_rejection(result: AutoPlanResult, target: Target) -> list[str]:
    """A short explanation of why no path to ``target`` was accepted, then what to try:
    a few lines for people (no counts per structure)."""
    lines = [f"no safe path to the {target.description} among {result.n_directions} "
             "directions searched"]
    if result.near_miss is not None:
        lines.append(result.near_miss.describe())
    else:
        worst = sorted(result.rejections.items(), key=lambda kv: -kv[1])[:2]
        if worst:
            lines.append("most directions: " + ", ".join(f"{why} ({n})" for why, n in worst))
    lines.append("try: " + "; ".join(_suggestions(target)))
    return lines


def _suggestions(target: Target) -> list[str]:
    parts = [p.strip() for p in target.spec.split(":")]
    out: list[str] = []
    if target.kind in ("disc", "foramen") and len(parts) == 3:
        other = "right" if parts[2].lower() == "left" else "left"
        out.append(f"the other side (--target {parts[0]}:{parts[1]}:{other})")
        if target.kind == "disc":
            out.append(f"a transforaminal target (--target foramen:{parts[1]}:{parts[2]})")
    out.append("an entry of your own (--entry X,Y,Z) or the planning view (--gui)")
    return out
