"""The stages of the live pipeline (DESIGN.md), each a small object with a per-frame
kernel. The loop (``guidance.pipeline.loop``) only wires them together and times them.

Each stage's ``process(item)`` reads and fills a :class:`WorkItem`; buffers are sized on
the first frame of a given shape and reused.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from guidance.pipeline.config import PreprocessConfig, SafetyConfig, SegmentConfig
from guidance.pipeline.frame import NeedleEstimate2D3D, WorkItem
from guidance.pipeline.plan_check import PlanCheck
from guidance.records import GuidanceState, WarningLevel
from trackers.needle_detect import RidgeNeedleDetector
from trackers.needle_filter import NeedleFilter
from trackers.needle_fit import NeedleRule, needle_evidence

if TYPE_CHECKING:
    from models.segmenter import Segmenter

__all__ = ["NeedleStage", "PreprocessStage", "SafetyStage", "SegmentStage", "load_segmenters"]

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


def _angle_deg(u: npt.NDArray[np.float64], v: npt.NDArray[np.float64]) -> float:
    c = abs(float(u @ v)) / max(float(np.linalg.norm(u) * np.linalg.norm(v)), 1e-12)
    return math.degrees(math.acos(min(1.0, c)))


def load_segmenters(config: SegmentConfig, modalities: tuple[str, ...]
                    ) -> tuple[dict[str, Segmenter], dict[str, str]]:
    """Load the model of each modality (at start, never on the frame path).

    Returns:
        (segmenters, errors): loaded models by modality, and why a modality has none.
    """
    from models.card import CardError
    from models.segmenter import Segmenter
    from models.shipped import shipped_card

    found: dict[str, Segmenter] = {}
    errors: dict[str, str] = {}
    if config.model == "none":
        return found, errors
    chain: str | list[str] = (config.backends if config.backends == "auto"
                              else [b.strip() for b in config.backends.split(",")])
    by_card: dict[str, Segmenter] = {}  # one explicit card serves every modality: load once
    for m in modalities:
        try:
            card = str(shipped_card(m)) if config.model == "auto" else config.model
            seg = by_card.get(card) or Segmenter(card, chain=chain, threads=config.threads)
            by_card[card] = seg
            if config.model != "auto" and seg.card.modality != m and config.modality != "auto":
                raise ValueError(f"model {card} is for {seg.card.modality}, not {m}")
            found[m] = seg
        except (CardError, FileNotFoundError, ValueError, TypeError, RuntimeError) as e:
            errors[m] = f"no {m} model: {e}"
            log.warning("segment: %s", errors[m])
    return found, errors


class SegmentStage:
    """Segmentation: the model is the primary segmenter, the classical detector (ridge
    filter + robust line fit) runs beside it as a cross-check.

    With a model the label map is the model's classes (``item.label_names``) resampled
    to the frame's grid, and the needle is the line fitted to the model's needle mask
    when it passes :class:`trackers.needle_fit.NeedleRule` (:meth:`rule`: long enough,
    straight, most of the needle evidence on one line, and where the model's card says
    so (CT) a line, not an edge; the piece's scatter, collinear share and flank
    asymmetry are in ``metrics``). When the classical detector disagrees (tips more
    than ``disagree_tip_mm`` apart or axes more than ``disagree_angle_deg``), the
    needle's confidence is halved, the frame is DEGRADED and the disagreement is
    reported; when only the classical detector sees a needle the model's "no needle"
    stands and the disagreement is reported. Without a model
    (``segment.model = none``, or none loaded) the classical detector alone segments and
    the frame is DEGRADED with the reason.

    Args:
        config: the segment section.
        segmenters: loaded models by modality (see :func:`load_segmenters`).
        load_errors: why a modality has no model, by modality.
    """

    name = "segment"

    def __init__(self, config: SegmentConfig, segmenters: dict[str, Segmenter] | None = None,
                 load_errors: dict[str, str] | None = None) -> None:
        self.config = config
        self._rules: dict[int, NeedleRule] = {}  # by id() of the segmenter
        self.segmenters = dict(segmenters or {})
        self.load_errors = dict(load_errors or {})
        self._detectors: dict[str, RidgeNeedleDetector] = {}
        self._labels: np.ndarray | None = None
        self.hub_hint_ij: npt.NDArray[np.float64] | None = None  # frame pixels

    def rule(self, seg: Segmenter) -> NeedleRule:
        """The needle rule for a model: the configured limits and the model card's own
        (:meth:`trackers.needle_fit.NeedleRule.for_model`; a CT card adds the flank
        check)."""
        r = self._rules.get(id(seg))
        if r is None:
            c = self.config
            r = self._rules[id(seg)] = NeedleRule.for_model(
                seg.card.needle_rule, threshold=c.needle_threshold,
                min_length_mm=c.min_needle_length_mm, max_scatter_mm=c.needle_max_scatter_mm,
                max_scatter_px=c.needle_max_scatter_px, min_collinear=c.needle_min_collinear)
        return r

    def _classical(self, item: WorkItem) -> NeedleEstimate2D3D | None:
        assert item.work is not None
        pol = self.config.polarity
        det = self._detectors.get(pol)
        if det is None:
            det = self._detectors[pol] = RidgeNeedleDetector(
                polarity=pol, sigma_px=self.config.sigma_px,
                min_length_px=self.config.min_length_px)
        s = item.work_scale
        hint = None if self.hub_hint_ij is None else (self.hub_hint_ij + 0.5) / s - 0.5
        found = det.detect(item.work, hub_hint_ij=hint)
        if found is None:
            return None
        tip = (found.tip_ij + 0.5) * s - 0.5
        hub = (found.hub_ij + 0.5) * s - 0.5
        return NeedleEstimate2D3D(tip, hub, NAN3, NAN3, found.confidence, "image")

    def _label_buffer(self, rows: int, cols: int) -> np.ndarray:
        if self._labels is None or self._labels.shape != (rows, cols):
            self._labels = np.zeros((rows, cols), np.uint8)
        return self._labels

    def process(self, item: WorkItem) -> None:
        vox = item.frame.image.voxels
        rows, cols = vox.shape[1], vox.shape[2]
        labels = self._label_buffer(rows, cols)
        item.labels = labels
        seg = self.segmenters.get(item.modality)
        classical = self._classical(item) if (seg is None or self.config.crosscheck) else None
        if seg is None:
            labels.fill(0)
            item.label_names = ("background", "needle")
            if self.config.model != "none":  # configured classical-only is not a failure
                item.reasons.append(self.load_errors.get(
                    item.modality, f"no model for {item.modality or 'this frame'}")
                    + ": classical detector only")
                if item.state == GuidanceState.OK:
                    item.state = GuidanceState.DEGRADED
            if classical is not None:
                cv2.line(labels, (round(classical.hub_ij[0]), round(classical.hub_ij[1])),
                         (round(classical.tip_ij[0]), round(classical.tip_ij[1])), 1,
                         self.config.label_width_px)
            item.needle = classical
            return
        self._model(item, seg, classical, labels)

    def _model(self, item: WorkItem, seg: Segmenter, classical: NeedleEstimate2D3D | None,
               labels: np.ndarray) -> None:
        img = item.frame.image
        plane = img.voxels[img.voxels.shape[0] // 2]
        spacing = float(img.spacing_mm[0])
        res = seg.segment(plane, spacing)
        res.grid.labels_to_frame(res.labels, out=labels)
        item.label_names = seg.card.labels
        item.metrics["segment_infer_ms"] = res.infer_ms
        if seg.degraded:
            item.reasons.append(f"segmentation backend: {seg.degraded_reason}")
            if item.state == GuidanceState.OK:
                item.state = GuidanceState.DEGRADED
        if not res.spacing_ok:
            lo, hi = seg.card.spacing_range_mm
            item.reasons.append(
                f"frame spacing {res.grid.model_spacing_mm:.3f} mm/px on the model grid is "
                f"outside the {seg.card.name} training range {lo:.3f}-{hi:.3f}")
            if item.state == GuidanceState.OK:
                item.state = GuidanceState.DEGRADED
        hint = None if self.hub_hint_ij is None else res.grid.to_model_ij(self.hub_hint_ij)
        ev = needle_evidence(res.probs[1], res.grid.model_spacing_mm,
                             seg.card.pixel_spacing_mm, self.rule(seg), hint,
                             res.image)
        found = ev.needle
        if ev.candidate is not None:
            item.metrics["needle_scatter_mm"] = ev.scatter_mm
            item.metrics["needle_collinear"] = ev.collinear
            if not math.isnan(ev.flank_asymmetry):
                item.metrics["needle_flank_asymmetry"] = ev.flank_asymmetry
        model = None
        if found is not None:
            model = NeedleEstimate2D3D(res.grid.to_frame_ij(found.tip_ij),
                                       res.grid.to_frame_ij(found.hub_ij), NAN3, NAN3,
                                       found.confidence, "image")
        item.needle = self._crosscheck(item, model, classical, spacing)

    def _crosscheck(self, item: WorkItem, model: NeedleEstimate2D3D | None,
                    classical: NeedleEstimate2D3D | None,
                    spacing_mm: float) -> NeedleEstimate2D3D | None:
        if not self.config.crosscheck:
            return model
        if model is None:
            if classical is not None:
                t = classical.tip_ij
                item.reasons.append(
                    f"cross-check: the classical detector sees a needle (tip at pixel "
                    f"{t[0]:.0f}, {t[1]:.0f}) that the model does not")
                item.metrics["crosscheck_agree"] = 0.0
            return None
        if classical is None:
            item.metrics["crosscheck_agree"] = 0.5  # not confirmed
            return dataclasses.replace(model, confidence=model.confidence * 0.8)
        sp = spacing_mm if math.isfinite(spacing_mm) and spacing_mm > 0 else 1.0
        d_mm = float(np.linalg.norm(model.tip_ij - classical.tip_ij)) * sp
        ang = _angle_deg(model.tip_ij - model.hub_ij, classical.tip_ij - classical.hub_ij)
        item.metrics["crosscheck_tip_mm"] = d_mm
        item.metrics["crosscheck_angle_deg"] = ang
        if d_mm > self.config.disagree_tip_mm or ang > self.config.disagree_angle_deg:
            item.metrics["crosscheck_agree"] = 0.0
            item.reasons.append(
                f"cross-check: model and classical detector disagree (tips {d_mm:.1f} mm "
                f"apart, axes {ang:.1f} deg)")
            if item.state == GuidanceState.OK:
                item.state = GuidanceState.DEGRADED
            return dataclasses.replace(model, confidence=model.confidence * 0.5)
        item.metrics["crosscheck_agree"] = 1.0
        return model


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
