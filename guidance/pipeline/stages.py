"""The stages of the live pipeline (DESIGN.md), each a small object with a per-frame
kernel. The loop (``guidance.pipeline.loop``) only wires them together and times them.

Each stage's ``process(item)`` reads and fills a :class:`WorkItem`; buffers are sized on
the first frame of a given shape and reused.
"""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np
import numpy.typing as npt

from guidance.pipeline.config import PreprocessConfig, SafetyConfig, SegmentConfig
from guidance.pipeline.frame import NeedleEstimate2D3D, WorkItem
from guidance.pipeline.plan_check import PlanCheck
from guidance.records import GuidanceState, WarningLevel
from trackers.needle_detect import RidgeNeedleDetector
from trackers.needle_filter import NeedleFilter

__all__ = ["NeedleStage", "PreprocessStage", "SafetyStage", "SegmentStage"]

log = logging.getLogger(__name__)
NAN2 = np.full(2, np.nan)
NAN3 = np.full(3, np.nan)


class PreprocessStage:
    """Frame -> float32 2D image on the working grid (longest side ``work_size``)."""

    name = "preprocess"

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config
        self._key: tuple[object, ...] | None = None
        self._gray: np.ndarray | None = None
        self._work: np.ndarray | None = None

    def process(self, item: WorkItem) -> None:
        vox = item.frame.image.voxels
        plane = vox[vox.shape[0] // 2]  # a 3D volume: its middle slice
        rows, cols = plane.shape[:2]
        scale = max(rows, cols) / self.config.work_size
        scale = max(scale, 1.0)
        wr, wc = round(rows / scale), round(cols / scale)
        key = (plane.shape, plane.dtype.str, wr, wc)
        if key != self._key:
            self._key = key
            self._gray = np.empty((rows, cols), np.float32)
            self._work = np.empty((wr, wc), np.float32)
        assert self._gray is not None and self._work is not None
        if plane.ndim == 3:  # colour: mean of the components
            np.mean(plane, axis=2, dtype=np.float32, out=self._gray)
        else:
            self._gray[...] = plane  # dtype conversion into the preallocated buffer
        if scale > 1.0:
            cv2.resize(self._gray, (wc, wr), dst=self._work, interpolation=cv2.INTER_AREA)
        else:
            self._work[...] = self._gray
        item.work = self._work
        item.work_scale = scale


class SegmentStage:
    """Classical needle segmentation: ridge filter + line fit, label map on the frame grid.

    Label values: 0 background, 1 needle.
    """

    name = "segment"

    def __init__(self, config: SegmentConfig) -> None:
        self.config = config
        self._detectors: dict[str, RidgeNeedleDetector] = {}
        self._labels: np.ndarray | None = None
        self.hub_hint_ij: npt.NDArray[np.float64] | None = None  # frame pixels

    def process(self, item: WorkItem) -> None:
        assert item.work is not None
        vox = item.frame.image.voxels
        pol = self.config.polarity
        det = self._detectors.get(pol)
        if det is None:
            det = self._detectors[pol] = RidgeNeedleDetector(
                polarity=pol, sigma_px=self.config.sigma_px,
                min_length_px=self.config.min_length_px)
        s = item.work_scale
        hint = None if self.hub_hint_ij is None else (self.hub_hint_ij + 0.5) / s - 0.5
        found = det.detect(item.work, hub_hint_ij=hint)
        rows, cols = vox.shape[1], vox.shape[2]
        if self._labels is None or self._labels.shape != (rows, cols):
            self._labels = np.zeros((rows, cols), np.uint8)
        else:
            self._labels.fill(0)
        item.labels = self._labels
        if found is None:
            item.needle = None
            return
        tip = (found.tip_ij + 0.5) * s - 0.5
        hub = (found.hub_ij + 0.5) * s - 0.5
        cv2.line(self._labels, (round(hub[0]), round(hub[1])), (round(tip[0]), round(tip[1])),
                 1, self.config.label_width_px)
        item.needle = NeedleEstimate2D3D(tip, hub, NAN3, NAN3, found.confidence, "image")


class NeedleStage:
    """Image detection -> 3D needle (in-plane frames), fused with the tracked needle pose
    in a constant-velocity Kalman filter (``trackers.needle_filter``).

    For a 2D frame whose plane is in LPS (ultrasound: the IMAGE matrix places the scan
    plane), the detected tip and hub map to LPS directly. For a projection (fluoroscopy)
    the image gives no depth, so the 3D needle comes from the tracker
    (``needle_pose``: origin at the tip, +z hub -> tip), and the image detection is shown.
    A measurement the filter gates out as an outlier makes the frame DEGRADED.
    """

    name = "needle"

    def __init__(self, needle_pose: str, pose_stale_after_s: float, in_plane: bool,
                 tracker_sigma_mm: float = 0.5) -> None:
        self.needle_pose = needle_pose
        self.pose_stale_after_s = pose_stale_after_s
        self.in_plane = in_plane
        self.tracker_sigma_mm = tracker_sigma_mm
        self.filter = NeedleFilter()

    def _measurements(self, item: WorkItem) -> list[tuple[np.ndarray, np.ndarray, str, float]]:
        out: list[tuple[np.ndarray, np.ndarray, str, float]] = []
        pose = item.frame.poses.get(self.needle_pose)
        if pose is not None:
            age = (item.frame.received_ns - pose.received_ns) * 1e-9
            if abs(age) > self.pose_stale_after_s:
                item.reasons.append(f"{self.needle_pose} is {abs(age):.2f} s old (STALE)")
                item.state = GuidanceState.STALE
            elif not pose.valid:
                item.reasons.append(f"{self.needle_pose} reported invalid by the tracker")
            else:
                axis = pose.pose[:3, 2] / max(float(np.linalg.norm(pose.pose[:3, 2])), 1e-12)
                out.append((pose.pose[:3, 3].copy(), axis, "tracker", self.tracker_sigma_mm))
        det = item.needle
        if det is not None and self.in_plane:
            img = item.frame.image
            pts = img.ijk_to_lps_points(np.array(
                [[det.tip_ij[0], det.tip_ij[1], 0.0], [det.hub_ij[0], det.hub_ij[1], 0.0]]))
            d = pts[0] - pts[1]
            if np.linalg.norm(d) > 1e-6:
                # About 1.5 working-grid pixels of localisation noise.
                sigma = 1.5 * item.work_scale * float(img.spacing_mm[:2].mean())
                out.append((pts[0], d / np.linalg.norm(d), "image", sigma))
        return out

    def process(self, item: WorkItem) -> None:
        det = item.needle
        est = None
        sources = []
        for tip, axis, source, sigma in self._measurements(item):
            e = self.filter.update(tip, axis, item.t_s, source, sigma)
            if e is None:
                continue
            est = e
            sources.append(source)
            if not e.accepted:
                item.reasons.append(
                    f"{source} needle measurement rejected as an outlier "
                    f"({e.innovation_mm:.1f} mm from the track)")
                if item.state == GuidanceState.OK:
                    item.state = GuidanceState.DEGRADED
        if est is None:
            if det is None:
                item.needle = None
                return
            item.needle = det  # 2D only (projection without a tracked needle)
            return
        item.needle = NeedleEstimate2D3D(
            det.tip_ij if det is not None else NAN2,
            det.hub_ij if det is not None else NAN2,
            est.tip_lps, est.axis_lps, est.confidence, "+".join(sources), est.speed_mm_s)


class SafetyStage:
    """Needle against the plan (and, when available, the critical structures)."""

    name = "safety"

    def __init__(self, config: SafetyConfig) -> None:
        self.config = config
        self.plan: PlanCheck | None = None
        self.live_checker: object | None = None  # guidance.planning LiveChecker when loaded

    def set_plan(self, entry_lps: npt.ArrayLike, target_lps: npt.ArrayLike) -> None:
        """Use this plan from now on (resets hysteresis)."""
        self.plan = PlanCheck(entry_lps, target_lps, self.config)

    def process(self, item: WorkItem) -> None:
        n = item.needle
        if self.plan is None:
            item.reasons.append("no plan loaded: no safety check")
            return
        if n is None or not n.has_3d:
            item.reasons.append("no 3D needle estimate: no safety check")
            return
        dev = self.plan.check(n.tip_lps, n.axis_lps, item.t_s, n.speed_mm_s)
        item.metrics.update(
            tip_to_target_mm=dev.tip_to_target_mm, lateral_offset_mm=dev.lateral_offset_mm,
            angle_deg=dev.angle_deg, depth_mm=dev.depth_mm)
        item.warnings.extend(dev.warnings)
        checker = self.live_checker
        if checker is not None:
            res = checker.check(n.tip_lps, n.axis_lps, item.t_s,  # type: ignore[attr-defined]
                                needle_speed_mm_s=n.speed_mm_s)
            item.warnings.extend(res.warnings)
            for name, v in res.clearance_mm.items():
                if math.isfinite(v):
                    item.metrics[f"clearance_{name}_mm"] = float(v)
        item.level = max([w.level for w in item.warnings], default=WarningLevel.NONE)
