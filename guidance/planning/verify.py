"""Post-procedure verification: find the needle in a control CT and compare it with the plan.

Detection: voxels brighter than ``threshold_hu`` (metal, > ~2500 HU after streaks) within
``search_radius_mm`` of the planned line (contrast-filled veins and dense bone elsewhere
can be as bright); a line is fitted by RANSAC on the voxel centres, refined by PCA on
the inliers, oriented along the plan; the tip is found on the intensity profile sampled
along the fitted axis (trilinear): the deepest point where the profile is still above
half-way between the shaft level and the tissue beyond (partial volume at the tip).

The control CT is assumed to be in the planning CT's frame (same patient position or
registered beforehand): structures come from the planning labels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from guidance.geometry import ImageVolume
from guidance.planning.plan import Plan
from guidance.planning.structures import StructureSet
from guidance.planning.targets import Target
from guidance.planning.trajectory import TrajectoryMetrics, evaluate_trajectory

__all__ = [
    "NeedleDetection",
    "NeedleNotFoundError",
    "VerificationResult",
    "detect_needle",
    "verify_placement",
]

log = logging.getLogger(__name__)


class NeedleNotFoundError(ValueError):
    """No needle-like bright line near the plan in the control CT."""


@dataclass(frozen=True)
class NeedleDetection:
    """The needle found in a CT.

    Attributes:
        tip_lps: (3,) tip, LPS mm.
        axis_lps: (3,) unit, hub -> tip.
        outer_lps: (3,) outermost detected needle point (towards the hub), LPS mm.
        n_candidates: bright voxels considered; n_inliers: on the fitted line.
        rms_mm: RMS distance of the inliers to the line.
    """

    tip_lps: npt.NDArray[np.float64]
    axis_lps: npt.NDArray[np.float64]
    outer_lps: npt.NDArray[np.float64]
    n_candidates: int
    n_inliers: int
    rms_mm: float


def _line_distance(p: np.ndarray, a: np.ndarray, u: np.ndarray) -> np.ndarray:
    rel = p - a
    return np.linalg.norm(rel - np.outer(rel @ u, u), axis=1)


def detect_needle(
    ct: ImageVolume,
    plan: Plan,
    *,
    threshold_hu: float = 2500.0,
    search_radius_mm: float = 25.0,
    iterations: int = 200,
    rng: np.random.Generator | None = None,
) -> NeedleDetection:
    """Find the needle near the planned trajectory.

    Args:
        ct: control CT (HU), LPS geometry.
        plan: the plan (search region and orientation).
        threshold_hu: metal threshold.
        search_radius_mm: how far from the planned line (extended 30 mm past both ends)
            to look.
        iterations: RANSAC samples.
        rng: random generator (default seeded 0, reproducible).

    Raises:
        NeedleNotFoundError: fewer than 10 bright voxels near the plan, or no line with 10
            inliers.
    """
    rng = rng or np.random.default_rng(0)
    u_plan = plan.direction_lps
    a = plan.entry_lps - 30.0 * u_plan
    b = plan.target_lps + 30.0 * u_plan
    ends = ct.lps_to_ijk_points(np.stack([a, b]))
    pad = search_radius_mm / ct.spacing_mm + 1
    size = np.array(ct.size_ijk)
    lo = np.clip(np.floor(ends.min(axis=0) - pad), 0, size - 1).astype(int)
    hi = np.clip(np.ceil(ends.max(axis=0) + pad), 0, size - 1).astype(int)
    sub = ct.voxels[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
    kji = np.argwhere(sub > threshold_hu)
    pts = ct.ijk_to_lps_points(kji[:, ::-1] + lo)
    if len(pts):
        rel = pts - a
        t = np.clip(rel @ (b - a) / float((b - a) @ (b - a)), 0, 1)
        pts = pts[np.linalg.norm(rel - np.outer(t, b - a), axis=1) <= search_radius_mm]
    if len(pts) < 10:
        raise NeedleNotFoundError(
            f"no needle: {len(pts)} voxels above {threshold_hu:g} HU within "
            f"{search_radius_mm:g} mm of the planned path"
        )
    tol = max(1.5, 0.6 * float(ct.spacing_mm.max()))
    best_count, best = -1, (pts[0], u_plan)
    for _ in range(iterations):
        i, j = rng.choice(len(pts), 2, replace=False)
        d = pts[j] - pts[i]
        n = float(np.linalg.norm(d))
        if n < 5.0:
            continue
        count = int((_line_distance(pts, pts[i], d / n) < tol).sum())
        if count > best_count:
            best_count, best = count, (pts[i], d / n)
    inl = pts[_line_distance(pts, *best) < tol]
    if len(inl) < 10:
        raise NeedleNotFoundError(f"no needle: best line has {len(inl)} inliers (< 10)")
    centre = inl.mean(axis=0)
    axis = np.linalg.svd(inl - centre, full_matrices=False)[2][0]
    if axis @ u_plan < 0:
        axis = -axis
    rms = float(np.sqrt(np.mean(_line_distance(inl, centre, axis) ** 2)))
    proj = (inl - centre) @ axis
    outer = centre + axis * float(proj.min())
    far = centre + axis * float(proj.max())
    tip = _refine_tip(ct, far, axis, threshold_hu)
    log.info("needle: %d candidates, %d inliers, rms %.2f mm, tip %s", len(pts), len(inl),
             rms, tip.round(2))
    return NeedleDetection(tip, axis, outer, len(pts), len(inl), rms)


def _refine_tip(ct: ImageVolume, far: np.ndarray, axis: np.ndarray,
                threshold_hu: float) -> np.ndarray:
    """Half-maximum crossing of the intensity profile along the axis around ``far``."""
    s = np.arange(-8.0, 8.0, 0.1)
    pts = far + np.outer(s, axis)
    ijk = ct.lps_to_ijk_points(pts)
    size = np.array(ct.size_ijk)
    lo = np.clip(np.floor(ijk.min(axis=0)) - 1, 0, size - 1).astype(int)
    hi = np.clip(np.ceil(ijk.max(axis=0)) + 2, 1, size).astype(int)
    box = ct.voxels[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]].astype(np.float32)
    prof = ndimage.map_coordinates(box, (ijk - lo)[:, ::-1].T, order=1, mode="nearest")
    shaft = float(np.median(prof[s < -3.0])) if np.any(s < -3.0) else float(prof.max())
    tissue = float(np.median(prof[s > 5.0]))
    half = 0.5 * (max(shaft, threshold_hu) + tissue)
    above = np.flatnonzero(prof >= half)
    if above.size == 0:
        return far
    k = int(above.max())
    if k + 1 < len(s):
        frac = (prof[k] - half) / max(prof[k] - prof[k + 1], 1e-6)
        return far + axis * float(s[k] + frac * (s[k + 1] - s[k]))
    return far + axis * float(s[k])


@dataclass(frozen=True)
class VerificationResult:
    """Final needle against the plan.

    Attributes:
        detection: the needle found.
        tip_to_target_mm: distance from tip to planned target.
        angle_error_deg: angle between the needle and the planned direction.
        lateral_offset_mm: distance of the target from the needle line.
        depth_error_mm: tip depth minus target depth along the plan (+ = too deep).
        metrics: clearances along the final needle (from where it enters the analysed
            body part to the tip).
        verdict: ``"PASS"``, ``"OFF_TARGET"`` or ``"VIOLATION"``.
        reasons: why, one line each.
    """

    detection: NeedleDetection
    tip_to_target_mm: float
    angle_error_deg: float
    lateral_offset_mm: float
    depth_error_mm: float
    metrics: TrajectoryMetrics
    verdict: str
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        d = self.detection
        return {
            "tip_lps_mm": [round(float(v), 3) for v in d.tip_lps],
            "axis_lps": [round(float(v), 5) for v in d.axis_lps],
            "tip_to_target_mm": round(self.tip_to_target_mm, 2),
            "angle_error_deg": round(self.angle_error_deg, 2),
            "lateral_offset_mm": round(self.lateral_offset_mm, 2),
            "depth_error_mm": round(self.depth_error_mm, 2),
            "clearance_mm": {c.structure: round(c.min_mm, 2) for c in self.metrics.clearances},
            "violations": [v.to_json() for v in self.metrics.violations],
            "warnings": [v.to_json() for v in self.metrics.warnings],
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "detection": {"n_candidates": d.n_candidates, "n_inliers": d.n_inliers,
                          "rms_mm": round(d.rms_mm, 3)},
        }


def verify_placement(
    ct: ImageVolume,
    plan: Plan,
    structures: StructureSet,
    *,
    target: Target | None = None,
    tolerance_mm: float = 3.0,
    threshold_hu: float = 2500.0,
) -> VerificationResult:
    """Detect the needle and judge its placement.

    Args:
        ct: control CT in the planning frame.
        plan: the plan.
        structures: structures from the planning labels.
        target: resolved target (its bones are allowed near the tip).
        tolerance_mm: largest acceptable tip-to-target distance.

    Raises:
        NeedleNotFoundError: see :func:`detect_needle`.
    """
    if not tolerance_mm > 0:
        raise ValueError(f"tolerance_mm must be > 0, got {tolerance_mm}")
    det = detect_needle(ct, plan, threshold_hu=threshold_hu)
    tip, axis = det.tip_lps, det.axis_lps
    u = plan.direction_lps
    to_target = plan.target_lps - tip
    tip_err = float(np.linalg.norm(to_target))
    angle = math.degrees(math.acos(max(-1.0, min(1.0, float(axis @ u)))))
    lateral = float(np.linalg.norm(to_target - axis * float(to_target @ axis)))
    depth_err = float(-(to_target @ u))
    inserted = min(float((tip - det.outer_lps) @ axis), plan.length_mm + 5.0)
    start = tip - axis * max(inserted, 1.0)
    # Keep the start inside the analysed region (the hub may stick out of it).
    ijk = structures.to_grid_ijk(np.linspace(start, tip, 50))
    inside = structures.in_roi(ijk)
    if not inside[0] and inside.any():
        start = np.linspace(start, tip, 50)[int(np.argmax(inside))]
    metrics = evaluate_trajectory(start, tip, structures, target=target)
    reasons: list[str] = [v.message for v in metrics.violations
                          if v.reason != "needle_length"]
    if reasons:
        verdict = "VIOLATION"
    elif tip_err > tolerance_mm:
        verdict = "OFF_TARGET"
        reasons.append(f"tip {tip_err:.1f} mm from the target (tolerance {tolerance_mm:g} mm)")
    else:
        verdict = "PASS"
        reasons.append(f"tip {tip_err:.1f} mm from the target, no structure breached")
    return VerificationResult(det, tip_err, angle, lateral, depth_err, metrics, verdict,
                              tuple(reasons))
