"""The stages of the live pipeline (DESIGN.md), each a small object with a per-frame
kernel (the segment stage is in :mod:`guidance.pipeline.segment`). The loop
(``guidance.pipeline.loop``) only wires them together and times them.

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

from guidance.pipeline.config import NavigationConfig, PreprocessConfig
from guidance.pipeline.frame import NeedleEstimate2D3D, Reason, WorkItem
from guidance.pipeline.segment import angle_deg
from guidance.planning.plan import Plan
from guidance.planning.structures import StructureSet
from guidance.records import SafetyReason, WarningLevel
from guidance.safety import SafetyCheck, SafetyConfig
from guidance.safety.decision import MarginWidening, SafetyDecision
from guidance.safety.image_anatomy import (
    ImageAnatomyCheck,
    ImageAnatomyConfig,
    ImageAnatomyResult,
)
from trackers.needle_filter import NeedleFilter

if TYPE_CHECKING:
    from guidance.navigation.navigator import Navigator

__all__ = ["NeedleStage", "PreprocessStage", "SafetyStage", "combine_decisions"]

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
        assert item.frame is not None
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


class NeedleStage:
    """The needle in the planning CT: the tracked needle (``NeedleTip -> CT``) and the
    needle seen in the image (an ultrasound or CT slice placed in the planning CT), each
    a check on the other, through a constant-velocity Kalman filter
    (``trackers.needle_filter``) for the speed and the tracking covariance.

    - Tracked needle present: it is the needle (the tip as composed through the graph,
      never smoothed away from the measurement); the image's needle is compared with it
      and a disagreement beyond the tolerance makes the update DEGRADED with both
      numbers. For a projection (fluoroscopy) the tracked needle is projected through the
      C-arm calibration and compared in the image.
    - No tracked needle: the image's needle placed in the CT (slices only) is filtered;
      a projection gives no 3D needle.
    - A measurement the filter gates out as an outlier makes the update DEGRADED.
    """

    name = "needle"

    def __init__(self, config: NavigationConfig) -> None:
        self.config = config
        self.filter = NeedleFilter()

    def _image_needle_ct(self, item: WorkItem) -> tuple[np.ndarray, np.ndarray] | None:
        det, pl = item.needle, item.placement
        if det is None or not det.in_image or pl is None or pl.is_projection:
            return None
        pts = pl.pixel_to_ct(np.stack([det.tip_ij, det.hub_ij]))
        d = pts[0] - pts[1]
        n = float(np.linalg.norm(d))
        return (pts[0], d / n) if n > 1e-6 else None

    def _compare(self, item: WorkItem, tracked: NeedleEstimate2D3D,
                 image_ct: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Tracker against image: DEGRADED with both numbers beyond the tolerance."""
        c = self.config
        det, pl = item.needle, item.placement
        if det is None or not det.in_image or pl is None:
            return
        if pl.is_projection:
            # Pixels per mm at the tip's depth (magnification): 1 mm across the beam.
            assert pl.ct_to_pixel is not None
            beam = pl.ct_to_pixel[2, :3]
            across = np.cross(beam, [1.0, 0.0, 0.0] if abs(beam[0]) < 0.9 * np.linalg.norm(beam)
                              else [0.0, 1.0, 0.0])
            across /= np.linalg.norm(across)
            ij, _ = pl.project(np.stack([tracked.tip_lps,
                                         tracked.tip_lps - 40.0 * tracked.axis_lps,
                                         tracked.tip_lps + across]))
            if not np.all(np.isfinite(ij)):
                return
            px_per_mm = float(np.linalg.norm(ij[2] - ij[0]))
            d_mm = float(np.linalg.norm(ij[0] - det.tip_ij)) / max(px_per_mm, 1e-9)
            ang = angle_deg(ij[0] - ij[1], det.tip_ij - det.hub_ij)
            where = (f"image tip at pixel ({det.tip_ij[0]:.0f}, {det.tip_ij[1]:.0f}), tracked "
                     f"tip projects to ({ij[0, 0]:.0f}, {ij[0, 1]:.0f}); mm at the tip's "
                     "depth")
        else:
            assert image_ct is not None
            tip_img, axis_img = image_ct
            _, off = pl.project(tracked.tip_lps[None])
            if abs(float(off[0])) > c.image_plane_mm:
                item.metrics["tracked_tip_off_plane_mm"] = float(off[0])
                return  # the tracked tip is not in the picture: nothing to compare
            d_mm = float(np.linalg.norm(tip_img - tracked.tip_lps))
            ang = angle_deg(axis_img, tracked.axis_lps)
            where = (f"image tip {np.round(tip_img, 1).tolist()}, tracked tip "
                     f"{np.round(tracked.tip_lps, 1).tolist()} (planning CT, LPS mm)")
        item.metrics["tracker_image_tip_mm"] = d_mm
        item.metrics["tracker_image_angle_deg"] = ang
        if d_mm > c.image_tracker_tip_mm or ang > c.image_tracker_angle_deg:
            item.add(Reason.TRACKER_IMAGE_DISAGREE,
                     f"image and tracker disagree: tips {d_mm:.1f} mm apart (tolerance "
                     f"{c.image_tracker_tip_mm:g} mm), axes {ang:.1f} deg (tolerance "
                     f"{c.image_tracker_angle_deg:g} deg); {where}")

    def process(self, item: WorkItem) -> None:
        det = item.needle
        tracked = item.tracked
        image_ct = self._image_needle_ct(item)
        if tracked is not None:
            self._compare(item, tracked, image_ct)
            e = self.filter.update(tracked.tip_lps, tracked.axis_lps, item.at_s, "tracker",
                                   self.config.tracker_sigma_mm)
            speed, sigma, conf = (e.speed_mm_s, e.tip_sigma_mm, e.confidence) if e is not None \
                else (0.0, float("nan"), self.config.unfiltered_confidence)
            if e is not None and not e.accepted:
                item.add(Reason.OUTLIER, f"tracked needle jumped {e.innovation_mm:.1f} mm from "
                                         "its track")
            item.needle = NeedleEstimate2D3D(
                det.tip_ij if det is not None else NAN2, det.hub_ij if det is not None else NAN2,
                tracked.tip_lps, tracked.axis_lps, conf,
                "image+tracker" if det is not None and det.in_image else "tracker", speed, sigma)
            return
        if image_ct is None:
            return  # 2D only, or nothing
        assert item.frame is not None and det is not None
        sigma_mm = (self.config.image_sigma_px * item.work_scale
                    * float(item.frame.image.spacing_mm[:2].mean()))
        e = self.filter.update(image_ct[0], image_ct[1], item.at_s, "image", sigma_mm)
        if e is None:
            return
        if not e.accepted:
            item.add(Reason.OUTLIER, f"image needle measurement rejected as an outlier "
                                     f"({e.innovation_mm:.1f} mm from the track)")
        item.needle = NeedleEstimate2D3D(det.tip_ij, det.hub_ij, e.tip_lps, e.axis_lps,
                                         e.confidence, "image", e.speed_mm_s, e.tip_sigma_mm)


class SafetyStage:
    """The one safety decision of an update, from up to two checks:

    * the plan's (:class:`guidance.safety.SafetyCheck`), with a plan and a 3D needle, its
      margins widened by the uncertainties declared on the needle's path
      (``Navigator.widening``) and the latency times the needle's speed;
    * on ultrasound, the anatomy the model sees in the frame
      (:class:`guidance.safety.image_anatomy.ImageAnatomyCheck`: nerves and vessels, in
      the image plane), with a needle in the image -- with or without a plan.

    Both sets of findings go into the one :class:`SafetyDecision` (worst first). A US
    target given as a point of the frame (:meth:`set_image_target_px`) gives the
    in-plane tip-to-target distance when there is no 3D one.
    """

    name = "safety"

    def __init__(self, config: SafetyConfig, navigator: Navigator,
                 image_config: ImageAnatomyConfig | None = None) -> None:
        self.config = config
        self.navigator = navigator
        self.check: SafetyCheck | None = None
        self.image_check = ImageAnatomyCheck(image_config)
        self.image_target_px: npt.NDArray[np.float64] | None = None
        #: the image-anatomy result of the last update (for the overlay).
        self.last_image: ImageAnatomyResult | None = None

    def set_plan(self, plan: Plan, structures: StructureSet | None) -> None:
        """Check against this plan (and its structures) from now on."""
        self.check = SafetyCheck(plan, structures, self.config)

    def set_image_target_px(self, target: npt.ArrayLike | None) -> None:
        """A target as a point of the incoming frame (column, row, pixels), or None."""
        self.image_target_px = None if target is None else np.asarray(target, float)

    @staticmethod
    def image_anatomy_model(item: WorkItem) -> bool:
        """An ultrasound frame segmented by a model with nerve and vessel classes."""
        return (item.modality == "us" and item.segmentation is not None
                and all(k in item.label_names for k in ("nerve", "vessel")))

    @classmethod
    def image_check_applies(cls, item: WorkItem) -> bool:
        """:meth:`image_anatomy_model`, with a needle in the image."""
        return (cls.image_anatomy_model(item) and item.needle is not None
                and item.needle.in_image)

    def process(self, item: WorkItem, plan_check: bool = True) -> None:
        """The decision of this update. ``plan_check``: the update's state allows the
        plan's check (OK or DEGRADED); the image anatomy is checked on any current
        frame."""
        n = item.needle
        plan_decision: SafetyDecision | None = None
        if self.check is not None and n is not None and n.has_3d and plan_check:
            widening = self.navigator.widening(
                item.tip_edges, self.check.plan.target_lps, n.sigma_mm, item.latency_s,
                n.speed_mm_s, self.config)
            plan_decision = self.check.check(n.tip_lps, n.axis_lps, item.t_s, widening)
        image = self.image_anatomy(item)
        self.last_image = image
        if image is not None:
            item.image_structures = image.structures
        if image is None:
            if self.check is None:
                item.add(Reason.NO_PLAN, "no plan loaded (--plan plan.json): no safety check")
            item.decision = plan_decision
            return
        if self.check is None:
            item.add(Reason.IMAGE_ANATOMY_ONLY,
                     "no plan: the nerves and vessels the model sees are checked, in the "
                     "image plane")
        item.decision = combine_decisions(plan_decision, image, item.t_s,
                                          self._image_target_mm(item))

    def image_anatomy(self, item: WorkItem) -> ImageAnatomyResult | None:
        """The image-anatomy check of a US frame (None when it does not apply)."""
        if not self.image_check_applies(item):
            return None
        seg = item.segmentation
        n = item.needle
        assert n is not None
        grid = seg.grid
        if not math.isfinite(grid.model_spacing_mm) or grid.model_spacing_mm <= 0:
            item.add(Reason.SPACING_NOT_CALIBRATED,
                     "the frame's pixel spacing is unknown: nerve and vessel distances are "
                     "not measured")
            return None
        names = list(item.label_names)
        probs = seg.probs
        ur, uc = grid.used_shape
        labels = seg.labels[:ur, :uc]
        order = [0] * len(names)
        order[2], order[3] = names.index("nerve"), names.index("vessel")
        tip = grid.to_model_ij(n.tip_ij)
        hub = grid.to_model_ij(n.hub_ij)
        axis = tip - hub
        norm = float(np.linalg.norm(axis))
        axis = axis / norm if norm > 0 else np.array([1.0, 0.0])
        if order[2] != 2 or order[3] != 3:  # the card's own class order
            remap = np.zeros(256, np.uint8)
            remap[order[2]], remap[order[3]] = 2, 3
            labels = remap[labels]
            probs = probs[[0, names.index("needle"), order[2], order[3]]]
        return self.image_check.check(probs[:, :ur, :uc], labels, grid.model_spacing_mm,
                                      tip, axis, grid.to_frame_ij, item.t_s)

    def _image_target_mm(self, item: WorkItem) -> float:
        """In-plane tip-to-target distance, mm (NaN without an image target)."""
        if self.image_target_px is None or item.needle is None or item.frame is None:
            return math.nan
        sp = float(item.frame.image.spacing_mm[0])
        if not math.isfinite(sp) or sp <= 0:
            return math.nan
        return float(np.linalg.norm(item.needle.tip_ij - self.image_target_px)) * sp


def combine_decisions(plan: SafetyDecision | None, image: ImageAnatomyResult, t_s: float,
                      image_target_mm: float = math.nan) -> SafetyDecision:
    """One decision from the plan's (if any) and the image anatomy's findings: every
    finding, worst first; the worst one's level, reason, structure and distance; every
    clearance, closest first. The plan's figures (target, angle, widening) when there is
    a plan decision, else the in-plane ones."""
    findings = tuple(sorted((*(plan.findings if plan else ()), *image.findings),
                            key=lambda w: -int(w.level)))
    clearances = tuple(sorted((*(plan.clearances if plan else ()), *image.clearances),
                              key=lambda c: c.clearance_mm if math.isfinite(c.clearance_mm)
                              else math.inf))
    worst = findings[0] if findings else None
    if plan is not None:
        if worst is None or worst in plan.findings:
            return dataclasses.replace(plan, findings=findings, clearances=clearances)
        return dataclasses.replace(
            plan, level=worst.level, reason=worst.reason, structure=worst.structure,
            clearance_mm=worst.distance_mm, margin_mm=worst.margin_mm, findings=findings,
            clearances=clearances)
    return SafetyDecision(
        t_s=t_s,
        level=worst.level if worst else WarningLevel.NONE,
        reason=worst.reason if worst else SafetyReason.CLEAR,
        structure=worst.structure if worst else "",
        clearance_mm=worst.distance_mm if worst else math.nan,
        margin_mm=worst.margin_mm if worst else math.nan,
        findings=findings,
        widening=MarginWidening(notes=(
            "image anatomy: in-plane distances on the model's segmentation, no widening",)),
        clearances=clearances,
        tip_to_target_mm=image_target_mm,
        lateral_offset_mm=math.nan,
        angle_deg=math.nan,
        depth_to_target_mm=math.nan,
        depth_to_breach_mm=image.depth_to_breach_mm,
        breach_structure=image.breach_structure,
    )
