"""The live loop's path for CT control slabs (2-64 slices): checked, registered to the
planning CT, segmented in one batch, the needle fitted in 3D
(:class:`guidance.ctscan.processor.ControlScanProcessor`), then the update's one safety
decision (the same :class:`~guidance.pipeline.stages.SafetyStage` as every other update),
the patient's motion as a finding of it, and one line of the procedure timeline.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from guidance.ctscan.processor import ControlScanConfig, ControlScanProcessor
from guidance.ctscan.result import CtScanResult, SlabError
from guidance.ctscan.slab import slab_from_message
from guidance.ctscan.timeline import TimelineWriter, timeline_entry
from guidance.geometry import ImageVolume
from guidance.pipeline.frame import FrameResult, NeedleEstimate2D3D, Reason, WorkItem, state_of
from guidance.pipeline.stages import SafetyStage
from guidance.records import SafetyReason, SafetyWarning, WarningLevel
from guidance.safety.decision import SafetyDecision
from models.segmenter import Segmenter

__all__ = ["CtSlabPath", "is_slab_message", "labels_volume", "slab_picture",
           "with_motion"]

log = logging.getLogger(__name__)
_NAN2 = np.full(2, np.nan)


def is_slab_message(message: Any) -> bool:
    """An IMAGE message of more than one slice (a control slab, not a CT-fluoroscopy
    slice)."""
    image = getattr(message, "image", None)
    return isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[0] > 1


def with_motion(decision: SafetyDecision, warning: SafetyWarning) -> SafetyDecision:
    """The decision with the patient-motion finding among its findings (worst first)."""
    findings = sorted((*decision.findings, warning), key=lambda w: -int(w.level))
    if warning.level > decision.level:
        return dataclasses.replace(decision, level=warning.level, reason=warning.reason,
                                   structure=warning.structure, clearance_mm=math.nan,
                                   margin_mm=math.nan, findings=tuple(findings))
    return dataclasses.replace(decision, findings=tuple(findings))


class CtSlabPath:
    """Control slabs in the live loop.

    Args:
        segmenter: the CT model (None: slabs are refused with the reason).
        safety: the loop's safety stage (the one decision).
        config: the control-scan settings.
        timeline_path: where the procedure timeline goes (None: not written).
        model_error: why there is no CT model (shown on every slab).
    """

    def __init__(self, segmenter: Segmenter | None, safety: SafetyStage,
                 config: ControlScanConfig | None = None,
                 timeline_path: str | Path | None = None, model_error: str = "") -> None:
        self.config = config or ControlScanConfig()
        self.processor = ControlScanProcessor(segmenter, self.config) \
            if segmenter is not None else None
        self.safety = safety
        self.model_error = model_error or "no CT model loaded"
        self.timeline = TimelineWriter(timeline_path) if timeline_path is not None else None
        self.timeline_errors = 0

    def process(self, item: WorkItem, message: Any, device_name: str,
                stage_ms: dict[str, float]) -> CtScanResult | None:
        """Fill ``item`` (needle, reasons, decision) from one slab message.

        Returns:
            The scan's result (None when the slab was refused: the reason is on
            ``item``).
        """
        t0 = time.monotonic_ns()
        try:
            slab = slab_from_message(message, device_name)
        except SlabError as e:
            item.add(Reason.SLAB_REFUSED, f"slab refused: {e}")
            return None
        if self.processor is None:
            item.add(Reason.MODEL_MISSING, f"CT slab not segmented: {self.model_error}")
            return None
        stage_ms["ingest"] = (time.monotonic_ns() - t0) * 1e-6
        check = self.safety.check
        self.processor.set_plan(check.plan if check is not None else None)
        res = self.processor.process(slab)
        stage_ms["registration"] = res.registration_ms
        stage_ms["segment"] = res.seg_ms
        stage_ms["needle"] = res.fit_ms
        motion = res.motion
        if motion is None:
            item.add(Reason.SLAB_NOT_REGISTERED,
                     "slab not registered (no planning CT loaded): the scanner's frame is "
                     "taken as the planning CT's")
        elif not motion.ok:
            item.add(Reason.REGISTRATION_FAILED,
                     f"{motion.reason}; the needle is placed with the last motion found "
                     f"({motion.translation_mm:.1f} mm)")
        n = res.needle
        if not n.found:
            item.add(Reason.NO_NEEDLE, n.message)
        elif not n.tip_in_slab:
            item.add(Reason.TIP_BEYOND_SLAB, n.message)
        t_s = time.monotonic_ns()
        if res.has_needle:
            item.needle = NeedleEstimate2D3D(_NAN2, _NAN2, res.tip_ct_lps, res.axis_ct_lps,
                                             n.confidence, "image", 0.0, n.tip_sigma_mm)
            if check is not None and state_of(item.reasons).name in ("OK", "DEGRADED"):
                item.latency_s = (t_s - item.received_ns) * 1e-9
                self.safety.process(item)
        if check is None:
            item.add(Reason.NO_PLAN, "no plan loaded (--plan plan.json): no safety check")
        d = item.decision
        if d is not None and motion is not None and motion.ok and \
                motion.translation_mm > self.config.motion_caution_mm:
            d = with_motion(d, SafetyWarning(
                d.t_s, WarningLevel.CAUTION, "patient", motion.translation_mm,
                f"patient moved {motion.translation_mm:.1f} mm ({motion.rotation_deg:.1f} "
                f"deg) since the planning scan", SafetyReason.PATIENT_MOTION,
                self.config.motion_caution_mm))
            item.decision = d
        stage_ms["safety"] = (time.monotonic_ns() - t_s) * 1e-6
        res = dataclasses.replace(
            res, decision=d,
            depth_to_target_mm=d.depth_to_target_mm if d is not None else math.nan,
            depth_to_structure_mm=d.depth_to_breach_mm if d is not None else math.nan,
            structure_ahead=d.breach_structure if d is not None else "",
            safety_ms=stage_ms["safety"])
        item.labels = (res.needle_prob >= self.config.fit.prob_threshold).astype(np.uint8)
        item.label_names = ("background", "needle")
        item.metrics["ct_scan"] = float(res.scan_number)
        if motion is not None:
            item.metrics["motion_mm"] = motion.translation_mm
            item.metrics["motion_deg"] = motion.rotation_deg
        return res

    def log_scan(self, result: CtScanResult, state: str, reasons: tuple[str, ...],
                 t_s: float) -> None:
        """One timeline line, now (a write error is logged and counted, never raised:
        the loop goes on)."""
        if self.timeline is None:
            return
        try:
            self.timeline.append(timeline_entry(result, state, reasons, t_s))
        except (OSError, ValueError, TypeError) as e:
            self.timeline_errors += 1
            log.error("procedure timeline %s not written: %s", self.timeline.path, e)


def labels_volume(result: CtScanResult) -> ImageVolume:
    """The slab's needle labels (K, J, I) uint8 placed in the planning CT."""
    m = result.motion.slab_to_ct if result.motion is not None else np.eye(4)
    labels = (result.needle_prob >= 0.5).astype(np.uint8)
    return ImageVolume(labels, m @ result.slab.ijk_to_lps)


def slab_picture(result: FrameResult) -> FrameResult:
    """A slab's update as a one-slice picture for the overlay: the slice through the
    tip (the middle one without a needle), its labels, the needle in its pixels."""
    scan = result.ct_scan
    if scan is None or result.image is None or result.image.voxels.ndim != 3:
        return dataclasses.replace(result, image=None, labels=None)
    slab = scan.slab
    n = scan.needle
    k = n.end_slice if n.found and n.end_slice >= 0 else slab.voxels.shape[0] // 2
    shift = np.eye(4)
    shift[2, 3] = k
    image = ImageVolume(slab.voxels[k:k + 1], slab.ijk_to_lps @ shift)
    labels = (scan.needle_prob[k] >= 0.5).astype(np.uint8)
    needle = result.needle
    if needle is not None and n.found:
        ij = slab.lps_to_ijk_points(np.stack([n.tip_lps, n.hub_lps]))[:, :2]
        needle = dataclasses.replace(needle, tip_ij=ij[0], hub_ij=ij[1])
    return dataclasses.replace(result, image=image, labels=labels, needle=needle)
