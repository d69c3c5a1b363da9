"""Held-out evaluation of the CT control-scan path on simulated slabs of the real CT.

Scenes (deterministic from the seed): a target near a lumbar or lower thoracic vertebra
(T11-L3: its centroid moved laterally and posteriorly, as for foraminal or facet
targets), a posterolateral needle 40-80 mm long crossing the slices at 0-25 degrees out
of the axial plane, slabs of 3-10 slices of 1-5 mm centred near the tip, with the
simulator's partial volume, metal artefacts and noise (:mod:`guidance.sim.ct_slab`).
The whole control-scan path runs (:class:`~guidance.ctscan.processor.ControlScanProcessor`:
registration, batched segmentation, 3D fit) with a plan whose direction is the needle's
within a few degrees, as in the room. Reported against the issue's targets: tip error
median and p90, axis error median, needles reported on needle-free slabs, and the tip
error after 10 mm / 3 degrees of patient motion.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from guidance.ctscan.processor import ControlScanProcessor
from guidance.geometry import ImageVolume
from guidance.planning.plan import Plan
from guidance.sim.ct_slab import make_slab
from models.segmenter import Segmenter

__all__ = ["TARGETS", "evaluate_slabs"]

#: The issue's targets: (metric, limit, "<=").
TARGETS: dict[str, float] = {"tip_median_mm": 1.5, "tip_p90_mm": 3.0, "axis_median_deg": 2.0,
                             "needle_free_reported_fraction": 0.02,
                             "motion_tip_median_mm": 2.0}
_LEVELS = ("vertebrae_T11", "vertebrae_T12", "vertebrae_L1", "vertebrae_L2", "vertebrae_L3")


def _rot(axis: np.ndarray, deg: float) -> np.ndarray:
    a = axis / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = math.radians(deg)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def _le(value: float | None, limit: float) -> bool:
    return value is not None and value <= limit


def _centroids(labels: ImageVolume, names: dict[int, str]) -> list[np.ndarray]:
    out = []
    for value, name in names.items():
        if name in _LEVELS:
            ijk = np.argwhere(labels.voxels == value)[:, ::-1]
            if len(ijk):
                out.append(labels.ijk_to_lps_points(ijk.mean(axis=0)[None])[0])
    return out


def _scene(rng: np.random.Generator, centroids: list[np.ndarray]
           ) -> tuple[np.ndarray, np.ndarray, float, int, float]:
    c = centroids[int(rng.integers(len(centroids)))]
    side = 1.0 if rng.random() < 0.5 else -1.0
    # LPS: +x left, +y posterior. Target beside and behind the body's centre.
    target = c + np.array([side * rng.uniform(8, 22), rng.uniform(5, 25),
                           rng.uniform(-6, 6)])
    yaw = math.radians(rng.uniform(20, 50))
    u = np.array([-side * math.sin(yaw), -math.cos(yaw), 0.0])  # from posterolateral skin
    tilt = rng.uniform(0.0, 25.0) * (1 if rng.random() < 0.5 else -1)
    u = _rot(np.cross(u, [0, 0, 1.0]), tilt) @ u
    length = rng.uniform(40, 80)
    n_slices = int(rng.integers(3, 11))
    thickness = float(rng.choice([1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0]))
    return target - length * u, target, abs(tilt), n_slices, thickness


def evaluate_slabs(segmenter: Segmenter, ct: ImageVolume, labels: ImageVolume,
                   names: dict[int, str], *, n: int = 60, n_free: int = 100,
                   n_motion: int = 20, seed: int = 1,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run the control-scan path on held-out simulated slabs.

    Args:
        segmenter: the CT model.
        ct, labels, names: the real CT and its labels (targets near vertebrae).
        n: slabs with a needle; n_free: needle-free slabs; n_motion: slabs after 10 mm /
            3 degrees of patient motion.
        seed: scene seed (held out: not the training seed).
        progress: called with (done, total).

    Returns:
        JSON-ready report: per-group errors, summary statistics and the targets.
    """
    rng = np.random.default_rng([seed, 18])
    cents = _centroids(labels, names)
    if not cents:
        raise ValueError("no T11-L3 vertebra in the labels")
    total = n + n_free + n_motion
    done = 0
    tip_err: list[float] = []
    axis_err: list[float] = []
    beyond = 0
    missed = 0
    free_reported = 0
    motion_err: list[float] = []
    ms: list[float] = []

    def run(motion: np.ndarray | None, needle: bool) -> tuple[Any, Any]:
        entry, target, _tilt, k, th = _scene(rng, cents)
        d = (target - entry) / np.linalg.norm(target - entry)
        plan_dir = _rot(np.cross(d, rng.normal(size=3)), rng.uniform(0, 4)) @ d
        plan = Plan(target - 70.0 * plan_dir, target)
        proc = ControlScanProcessor(segmenter)
        proc.set_planning_ct(ct)
        proc.set_plan(plan)
        centre = target + rng.uniform(-0.3, 0.3) * k * th * np.array([0, 0, 1.0])
        slab, truth = make_slab(ct, entry, target, n_slices=k, thickness_mm=th,
                                centre_lps=centre, ct_to_scanner=motion, needle=needle,
                                rng=np.random.default_rng(int(rng.integers(1 << 31))))
        res = proc.process(slab)
        ms.append(res.seg_ms + res.fit_ms + res.registration_ms)
        return res, truth

    for _ in range(n):
        res, truth = run(None, True)
        if not res.needle.found:
            missed += 1
        elif truth.tip_in_slab and res.needle.tip_in_slab:
            tip_err.append(float(np.linalg.norm(res.tip_ct_lps - truth.tip_ct_lps)))
            cos = abs(float(res.axis_ct_lps @ truth.axis_ct_lps))
            axis_err.append(math.degrees(math.acos(min(1.0, cos))))
        else:
            beyond += 1
        done += 1
        if progress:
            progress(done, total)
    for _ in range(n_free):
        res, _truth = run(None, False)
        free_reported += int(res.needle.found)
        done += 1
        if progress:
            progress(done, total)
    for _ in range(n_motion):
        m = np.eye(4)
        direction = rng.normal(size=3)
        m[:3, 3] = 10.0 * direction / np.linalg.norm(direction)
        m[:3, :3] = _rot(rng.normal(size=3), 3.0)
        res, truth = run(m, True)
        if res.needle.found and res.needle.tip_in_slab and truth.tip_in_slab:
            motion_err.append(float(np.linalg.norm(res.tip_ct_lps - truth.tip_ct_lps)))
        done += 1
        if progress:
            progress(done, total)

    def pct(v: list[float], q: float) -> float | None:
        return round(float(np.percentile(v, q)), 3) if v else None

    values = {"tip_median_mm": pct(tip_err, 50), "tip_p90_mm": pct(tip_err, 90),
              "axis_median_deg": pct(axis_err, 50),
              "needle_free_reported_fraction": round(free_reported / max(n_free, 1), 4),
              "motion_tip_median_mm": pct(motion_err, 50)}
    targets = {k: {"value": values[k], "target": f"<= {lim:g}",
                   "pass": _le(values[k], lim)}
               for k, lim in TARGETS.items()}
    return {
        "slabs": {"with_needle": n, "needle_free": n_free, "after_motion": n_motion,
                  "seed": seed},
        "with_needle": {"tips_measured": len(tip_err), "missed": missed,
                        "tip_beyond_slab_or_not_in_slab": beyond},
        "after_motion": {"tips_measured": len(motion_err)},
        "ms_per_slab": {"median": pct(ms, 50), "p90": pct(ms, 90)},
        "values": values, "targets": targets,
    }
