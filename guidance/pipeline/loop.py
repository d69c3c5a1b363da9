"""The live loop: one processing thread that always takes the newest input.

Inputs arrive in :class:`~guidance.io.slots.LatestSlots` (the OpenIGTLink server or
client, a replay). Tool poses go into the session's transform graph as they arrive
(:meth:`guidance.navigation.Navigator.on_message`, a slots listener), so every pose is
kept for interpolation. The thread wakes on a new frame or a new needle pose:

- a frame (IMAGE): modality (configuration or IGTLv3 metadata) -> placement in the
  planning CT at the frame's time (timestamp minus the temporal calibration's lag) ->
  preprocess -> segment -> tracked needle at that time -> needle (image and tracker
  compared) -> safety -> outputs;
- a needle pose, when no image stream is live: tracked needle -> needle -> safety ->
  outputs (navigation on the planning CT from poses alone, same outputs and latency
  statistics).

Every output -- label IMAGE, needle tip TRANSFORM, warning STRING and STATUS, plan POINT,
the overlay -- is derived from one :class:`~guidance.pipeline.frame.FrameResult`, whose
state comes from typed reasons and whose safety from one decision. Each stage is timed;
end-to-end latency runs from the input's last byte received to the later of "results
handed to the kernel" and "overlay composed". When nothing arrives for the stale limit
the loop reports STALE instead of repeating the last result.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from guidance.ctscan.timeline import TimelineWriter
from guidance.geometry import ImageVolume
from guidance.io.messages import volume_from_image_message
from guidance.io.slots import LatestSlots, Received
from guidance.navigation.navigator import POSE_TYPES, Navigator, frame_of_device
from guidance.navigation.setup import RoomSetup
from guidance.pipeline.config import PipelineConfig
from guidance.pipeline.ct_path import CtSlabPath, is_slab_message, slab_picture
from guidance.pipeline.frame import (
    Frame,
    FrameResult,
    NeedleEstimate2D3D,
    Reason,
    StateReason,
    WorkItem,
    state_of,
)
from guidance.pipeline.navview import NavigationView
from guidance.pipeline.outlines import StructureOutlines
from guidance.pipeline.outputs import SendFn, send_plan, send_stale, send_update
from guidance.pipeline.overlay import OverlayComposer
from guidance.pipeline.placement import FramePlacement
from guidance.pipeline.segment import SegmentStage, load_segmenters
from guidance.pipeline.stages import NeedleStage, PreprocessStage, SafetyStage
from guidance.pipeline.stats import EndToEnd, LatencyRecorder
from guidance.planning.plan import Plan
from guidance.planning.structures import StructureSet
from guidance.records import MODALITIES, GuidanceState, Modality, SafetyWarning, WarningLevel

__all__ = ["Pipeline", "modality_of", "result_text"]

log = logging.getLogger(__name__)

_NAN2 = np.full(2, np.nan)
#: Overlays composed per second at most for pose updates (no image; the tracker's rate).
POSE_OVERLAY_HZ = 15.0


def modality_of(configured: str, metadata: object) -> tuple[str, str]:
    """A frame's modality: the configured one, else its IGTLv3 metadata ``Modality``.

    Returns:
        ``(modality, "")``, or ``("", why not)`` naming what was (not) found.
    """
    if configured:
        return configured, ""
    if isinstance(metadata, dict):
        for key, value in metadata.items():
            if str(key).lower() == "modality":
                found = Modality.from_dicom_term(str(value))
                if found is not None:
                    return found.value, ""
                return "", (f"unknown modality {str(value)[:40]!r} in the frame's metadata "
                            f"(known: US, CT, XA, RF, DX, CR, RG): give "
                            "--modality us|fluoro|ct")
    return "", ("modality unknown: the frame carries no IGTLv3 metadata 'Modality'; give "
                "--modality us|fluoro|ct")


def result_text(result: FrameResult) -> str:
    """The STRING and console line of an update: the decision (level, structure,
    distance, margin) and, when the state is not OK, the state and its reasons."""
    parts = []
    if result.decision is not None:
        parts.append(result.decision.text())
    scan = result.ct_scan
    if scan is not None and scan.decision is not None:
        to_struct = scan.depth_to_structure_mm
        ahead = (f"{scan.structure_ahead} margin in {to_struct:.1f} mm"
                 if math.isfinite(to_struct) and scan.structure_ahead else
                 "no structure ahead" if to_struct == math.inf else "structure ahead unknown")
        parts.append(f"scan {scan.scan_number}: {scan.depth_to_target_mm:.1f} mm to the "
                     f"target depth, {ahead}")
    if result.state != GuidanceState.OK or result.decision is None:
        why = "; ".join(result.reasons)
        parts.append(f"{result.state.name}: {why}" if why else result.state.name)
    return " | ".join(parts)


class Pipeline:
    """The processing thread and its stages.

    Args:
        slots: where received messages arrive.
        config: stage configuration.
        send: the transport's send (``None``: results are not sent).
        on_result: called with each result and its overlay (RGB, a reused buffer; ``None``
            for the pose updates between two overlays, see ``POSE_OVERLAY_HZ``) from the
            processing thread; keep it quick (hand off to another thread).
        room: the calibration files' content (static transforms, declared
            uncertainties, lag, C-arm intrinsics).
    """

    def __init__(
        self,
        slots: LatestSlots,
        config: PipelineConfig | None = None,
        send: SendFn | None = None,
        on_result: Callable[[FrameResult, np.ndarray | None], None] | None = None,
        room: RoomSetup | None = None,
    ) -> None:
        self.slots = slots
        self.config = config or PipelineConfig()
        self.send = send
        self.on_result = on_result
        self.navigator = Navigator(room, self.config.navigation)
        slots.add_listener(self._on_message)
        self.preprocess = PreprocessStage(self.config.preprocess)
        modality = self.config.ingest.modality
        self.segment = SegmentStage(self.config.segment, *load_segmenters(
            self.config.segment, (modality,) if modality else MODALITIES))
        self.needle = NeedleStage(self.config.navigation)
        self.safety = SafetyStage(self.config.safety, self.navigator,
                                  self.config.image_anatomy)
        #: CT control slabs (2-64 slices): the needle in 3D, the patient's motion.
        self.ct_path = CtSlabPath(self.segment.segmenters.get("ct"), self.safety,
                                  model_error=self.segment.load_errors.get("ct", ""))
        self.overlay = OverlayComposer()
        self.stats = LatencyRecorder()
        self.frames_processed = 0
        self.poses_processed = 0
        self.stale_reports = 0
        self.warnings_log: list[SafetyWarning] = []
        self.decisions: dict[str, int] = {}
        self.states: dict[str, int] = {}
        #: Updates per state reason code (what made states what they were).
        self.reason_counts: dict[str, int] = {}
        self.last_result: FrameResult | None = None
        self._active: dict[str, WarningLevel] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0_ns = time.monotonic_ns()
        self._latest: FrameResult | None = None
        self._latest_picture: FrameResult | None = None
        self._latest_lock = threading.Lock()
        self._last_plan_sent = 0.0
        self._plan: Plan | None = None
        self._outlines: StructureOutlines | None = None
        self._structures: StructureSet | None = None
        self._navview: NavigationView | None = None
        self._last_image_ns = 0
        #: the last update was a CT control slab (its own stale limit).
        self._last_was_slab = False
        self._last_pose_overlay_ns = 0
        self._tip_live_names: frozenset[str] = frozenset()
        self.last_error = ""

    # -- control ---------------------------------------------------------------------

    def set_plan(self, plan: Plan, structures: StructureSet | None = None) -> None:
        """The plan (LPS mm of the planning CT) and its structures for the safety check
        and the overlay (``structures=None``: the decision says the anatomy is not
        checked)."""
        if not isinstance(plan, Plan):
            raise TypeError(f"plan must be a Plan, got {type(plan).__name__}")
        self.safety.set_plan(plan, structures)
        self._structures = structures
        self._navview = None  # built again for this plan by set_navigation_ct
        self._outlines = (StructureOutlines(structures,
                                            path_lps=(plan.entry_lps, plan.target_lps))
                          if structures is not None else None)
        self.overlay.plan = (plan.entry_lps, plan.target_lps)
        self._plan = plan
        self.segment.hub_hint_ij = None
        self._last_plan_sent = 0.0

    def set_image_target_px(self, u: float, v: float) -> None:
        """A target given as a point of the incoming frame (ultrasound: column ``u``, row
        ``v``, pixels): the in-plane tip-to-target distance of the US decisions. May be
        called from another thread (the live view's click)."""
        if not (math.isfinite(u) and math.isfinite(v)):
            raise ValueError(f"image target must be finite pixels, got ({u}, {v})")
        self.safety.set_image_target_px((float(u), float(v)))
        self.overlay.image_target_px = (float(u), float(v))

    def clear_image_target(self) -> None:
        """Forget the image target."""
        self.safety.set_image_target_px(None)
        self.overlay.image_target_px = None

    @property
    def image_target_px(self) -> tuple[float, float] | None:
        """The image target (column, row, pixels), if any."""
        t = self.safety.image_target_px
        return None if t is None else (float(t[0]), float(t[1]))

    def set_navigation_ct(self, ct: ImageVolume) -> None:
        """The planning CT (HU, LPS) for the picture of navigation from poses alone: the
        CT resliced along the needle with the plan's structures (:mod:`navview`). May be
        called from another thread (a loader) once the CT is read."""
        self._navview = NavigationView(ct, self._structures)
        if self.ct_path.processor is not None:
            self.ct_path.processor.set_planning_ct(ct)

    def set_timeline(self, path: str | Path) -> None:
        """Write the procedure timeline of CT control scans (JSON Lines) to ``path``."""
        self.ct_path.timeline = TimelineWriter(path)

    @property
    def plan(self) -> Plan | None:
        return self._plan

    def start(self) -> Pipeline:
        """Start the processing thread."""
        self._t0_ns = time.monotonic_ns()
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the current update."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def latest(self) -> FrameResult | None:
        """The newest result (latest-value slot for the GUI)."""
        with self._latest_lock:
            return self._latest

    def latest_picture(self) -> FrameResult | None:
        """The newest result that carries an image (latest-value slot for the GUI)."""
        with self._latest_lock:
            return self._latest_picture

    @property
    def frames_dropped(self) -> int:
        """Frames replaced in their slot before processing, over all image devices."""
        total = 0
        for name, c in self.slots.counters().items():
            item = self.slots.latest(name)
            if item is not None and item.message_type == "IMAGE":
                total += c.dropped
        return total

    # -- the loop --------------------------------------------------------------------

    def _on_message(self, item: Received) -> None:
        if item.message_type in POSE_TYPES:
            self.navigator.on_message(item)

    def _images_live(self, now_ns: int) -> bool:
        return bool(self._last_image_ns) and (
            now_ns - self._last_image_ns) * 1e-9 <= self.config.ingest.stale_after_s

    def _pose_mode(self, now_ns: int) -> bool:
        """Navigation from poses alone: a tracked needle and no image stream."""
        return (self.config.navigation.pose_updates and self.navigator.tracks_needle
                and not self._images_live(now_ns))

    def _run(self) -> None:
        ingest = self.config.ingest
        nav = self.config.navigation
        seen: dict[str, int] = {}
        seq = 0
        types = ("IMAGE", *POSE_TYPES) if nav.pose_updates else ("IMAGE",)
        last_update_ns = last_stale_ns = time.monotonic_ns()
        while not self._stop.is_set():
            now = time.monotonic_ns()
            limit = (nav.pose_stale_after_s if self._pose_mode(now) else
                     ingest.ct_stale_after_s if self._last_was_slab else ingest.stale_after_s)
            # Wake up at the latest when the input turns stale: poses that lead to no
            # update (a probe's, say, with frames) must not keep a STALE report away.
            wait_s = max(limit - (now - max(last_update_ns, last_stale_ns)) * 1e-9, 1e-3)
            if ingest.image_device and not nav.pose_updates:
                item = self.slots.wait_newer(ingest.image_device, seq, wait_s)
            else:
                item = self.slots.wait_any(types, seen, wait_s)
            updated = False
            if item is not None:
                try:
                    if item.message_type == "IMAGE":
                        if not ingest.image_device or item.device_name == ingest.image_device:
                            seq = item.seq
                            updated = True
                            self._process_frame(item)
                    elif self._pose_mode(time.monotonic_ns()) and self._is_needle_pose(item):
                        updated = True
                        self._process_pose(item)
                except Exception as e:  # a bad input must not stop the loop
                    self.last_error = f"{item.device_name}#{item.seq}: {e}"
                    log.exception("pipeline failed on %s", self.last_error)
                    self._publish(FrameResult(
                        seq=item.seq, t_s=self._t(), received_ns=item.received_ns,
                        state=GuidanceState.NO_GUIDANCE, kind="none",
                        state_reasons=(StateReason(Reason.PROCESSING_FAILED,
                                                   f"processing failed: {e}"),),
                        device_name=item.device_name), None)
            now = time.monotonic_ns()
            if updated:
                last_update_ns = now
            elif (now - last_update_ns) * 1e-9 >= limit and \
                    (now - last_stale_ns) * 1e-9 >= limit:
                last_stale_ns = now
                self._report_stale((now - last_update_ns) * 1e-9)

    def _is_needle_pose(self, item: Received) -> bool:
        """A pose on the needle's chain: a needle's own pose or a live edge of the last
        tip query (the patient reference moving in the tracker frame, say)."""
        names = [item.device_name]
        msg_names = getattr(item.message, "names", None)
        if item.message_type == "TDATA" and isinstance(msg_names, list):
            names = [self.navigator.tools.transform_name(str(n)) for n in msg_names]
        return any(n.startswith("Needle") or n in self._tip_live_names for n in names)

    def _t(self) -> float:
        return (time.monotonic_ns() - self._t0_ns) * 1e-9

    def _process_frame(self, rec: Received) -> None:
        t_start = time.monotonic_ns()
        self._last_image_ns = rec.received_ns
        stage_ms: dict[str, float] = {}
        nav = self.navigator
        metadata = getattr(rec.message, "metadata", None)
        if modality_of(self.config.ingest.modality, metadata)[0] == "ct" and (
                self.config.ingest.ct_slabs or is_slab_message(rec.message)):
            self._last_was_slab = True
            self._process_ct_slab(rec, t_start, stage_ms)
            return
        self._last_was_slab = False
        image = volume_from_image_message(rec.message)
        frame_name = frame_of_device(rec.device_name, self.config.navigation.image_frame)
        at_s = nav.time_of(rec.timestamp_s, rec.received_ns) - nav.setup.lag_s
        frame = Frame(rec.seq, rec.device_name, image, rec.timestamp_s, rec.received_ns,
                      frame_name, at_s)
        item = WorkItem(frame=frame, t_s=(rec.received_ns - self._t0_ns) * 1e-9, at_s=at_s,
                        received_ns=rec.received_ns)
        modality, why = modality_of(self.config.ingest.modality,
                                    getattr(rec.message, "metadata", None))
        if not modality:
            item.add(Reason.MODALITY_UNKNOWN, f"frame {rec.device_name} refused: {why}")
            self._finish_update(item, rec, t_start, stage_ms, image)
            return
        item.modality = modality
        projection = modality == "fluoro"
        t = time.monotonic_ns()
        placement, problem, edges = nav.place(frame_name, image, projection, at_s, t)
        item.placement = placement
        item.placement_edges = edges
        if placement is not None and self._outlines is not None:
            item.outlines = self._outlines.project(placement, image.voxels.shape[1:3])
        if problem is not None:
            item.add(problem.reason, problem.message)
        stage_ms["ingest"] = (time.monotonic_ns() - t_start) * 1e-6
        for stage in (self.preprocess, self.segment):
            t_a = time.monotonic_ns()
            stage.process(item)
            stage_ms[stage.name] = (time.monotonic_ns() - t_a) * 1e-6
        if item.needle is not None and item.needle.in_image:
            # The hub end is stable: it tells the detector which end is the tip.
            self.segment.hub_hint_ij = item.needle.hub_ij
        self._track_and_check(item, stage_ms)
        age_s = (time.monotonic_ns() - rec.received_ns) * 1e-9
        if age_s > self.config.ingest.stale_after_s:
            item.add(Reason.FRAME_OLD, f"frame {age_s:.2f} s old when processed")
        self._finish_update(item, rec, t_start, stage_ms, image)
        self.frames_processed += 1

    def _process_ct_slab(self, rec: Received, t_start: int, stage_ms: dict[str, float]
                         ) -> None:
        """A CT control slab: :class:`~guidance.pipeline.ct_path.CtSlabPath`."""
        at_s = self.navigator.time_of(rec.timestamp_s, rec.received_ns)
        item = WorkItem(frame=None, t_s=(rec.received_ns - self._t0_ns) * 1e-9, at_s=at_s,
                        received_ns=rec.received_ns, modality="ct")
        result = self.ct_path.process(item, rec.message, rec.device_name, stage_ms)
        item.ct_scan = result
        self._finish_update(item, rec, t_start, stage_ms,
                            result.slab if result is not None else None)
        self.frames_processed += 1

    def _process_pose(self, rec: Received) -> None:
        t_start = time.monotonic_ns()
        nav = self.navigator
        at_s = nav.time_of(rec.timestamp_s, rec.received_ns)
        item = WorkItem(frame=None, t_s=(rec.received_ns - self._t0_ns) * 1e-9, at_s=at_s,
                        received_ns=rec.received_ns)
        stage_ms = {"ingest": (time.monotonic_ns() - t_start) * 1e-6}
        self._track_and_check(item, stage_ms)
        self._finish_update(item, rec, t_start, stage_ms, None)
        self.poses_processed += 1

    def _track_and_check(self, item: WorkItem, stage_ms: dict[str, float]) -> None:
        """Tracked needle at the update's time -> needle stage -> why no 3D needle ->
        safety stage."""
        t_a = time.monotonic_ns()
        tip = self.navigator.tracked_tip(item.at_s, t_a)
        if tip is not None:
            self._tip_live_names = frozenset(e.name for e in tip.edges if not e.static)
            if tip.problem is not None:
                item.add(tip.problem.reason, tip.problem.message)
            else:
                item.tracked = NeedleEstimate2D3D(_NAN2, _NAN2, tip.tip_ct, tip.axis_ct, 1.0,
                                                  "tracker")
                item.tip_edges = tip.edges
        self.needle.process(item)
        if item.tracked is None and item.needle is not None and item.needle.has_3d:
            item.tip_edges = item.placement_edges  # the image needle's path to the CT
        stage_ms["needle"] = (time.monotonic_ns() - t_a) * 1e-6
        if item.state == GuidanceState.OK or item.state == GuidanceState.DEGRADED:
            if item.needle is None:
                item.add(Reason.NO_NEEDLE, "no needle found" if item.frame is not None
                         else "no needle pose")
            elif not item.needle.has_3d and not self.safety.image_check_applies(item):
                item.add(Reason.NO_3D_NEEDLE,
                         "the needle is seen in the image only: no 3D position "
                         + ("(a projection without a tracked needle)"
                            if item.placement is None or item.placement.is_projection
                            else "(the frame is not placed in the planning CT)"))
        t_b = time.monotonic_ns()
        current = item.state in (GuidanceState.OK, GuidanceState.DEGRADED)
        # The nerves and vessels in a US frame are checked whenever the frame is current,
        # even when the 3D guidance is not available (no registration yet): an
        # intraneural or intravascular risk is never hidden behind NO_GUIDANCE.
        image = self.safety.image_check_applies(item) and item.state != GuidanceState.STALE
        if (item.needle is not None and item.needle.has_3d and current) or image:
            gap = max((e.time_gap_s for e in item.tip_edges), default=0.0)
            item.latency_s = (t_b - item.received_ns) * 1e-9 + gap
            self.safety.process(item, plan_check=current)
        elif self.safety.check is None and not self.safety.image_anatomy_model(item):
            # (a US frame whose model sees nerves and vessels: the anatomy is the check;
            # without a needle, NO_NEEDLE says why there is none)
            item.add(Reason.NO_PLAN, "no plan loaded (--plan plan.json): no safety check")
        stage_ms["safety"] = (time.monotonic_ns() - t_b) * 1e-6

    def _finish_update(self, item: WorkItem, rec: Received, t_start: int,
                       stage_ms: dict[str, float], image: ImageVolume | None) -> None:
        state = state_of(item.reasons)
        self._log_decision(item, state)
        result = FrameResult(
            seq=rec.seq, t_s=item.t_s, received_ns=rec.received_ns, state=state,
            kind="frame" if item.frame is not None or item.modality == "ct" else "pose",
            state_reasons=tuple(item.reasons), needle=item.needle, decision=item.decision,
            metrics=dict(item.metrics), stage_ms=stage_ms, image=image, labels=item.labels,
            placement=item.placement, outlines=item.outlines, label_names=item.label_names,
            modality=item.modality, image_structures=item.image_structures,
            device_name=rec.device_name, timestamp_s=rec.timestamp_s, at_s=item.at_s,
            ct_scan=item.ct_scan, focus_window=item.focus_window)
        if item.ct_scan is not None:
            self.ct_path.log_scan(item.ct_scan, state.name, result.reasons, item.t_s)
        t_out = time.monotonic_ns()
        e2e = EndToEnd(self.stats, rec.received_ns)
        if self._send_outputs(result, rec, item, e2e) == 0:
            e2e.nothing_sent()
        stage_ms["output"] = (time.monotonic_ns() - t_out) * 1e-6
        t_ov = time.monotonic_ns()
        rgb: np.ndarray | None = None
        if item.ct_scan is not None or (item.modality == "ct" and item.frame is None):
            # A control slab: the picture is the slice through the tip.
            rgb = self.overlay.compose(slab_picture(result), (t_ov - rec.received_ns) * 1e-6)
            stage_ms["overlay"] = (time.monotonic_ns() - t_ov) * 1e-6
        elif item.frame is not None or (t_ov - self._last_pose_overlay_ns) * 1e-9 >= \
                1.0 / POSE_OVERLAY_HZ:
            # Pose updates come at the tracker's rate: their picture (the planning CT
            # resliced along the needle, when loaded) at most POSE_OVERLAY_HZ, after the
            # outputs went out on every one.
            if item.frame is None:
                result = self._navigation_picture(result)
            rgb = self.overlay.compose(result, (t_ov - rec.received_ns) * 1e-6)
            stage_ms["overlay"] = (time.monotonic_ns() - t_ov) * 1e-6
            if item.frame is None:
                self._last_pose_overlay_ns = t_ov
        e2e.overlay_composed(time.monotonic_ns())
        for name, ms in stage_ms.items():
            self.stats.add(name, ms)
        self.stats.add("processing", (time.monotonic_ns() - t_start) * 1e-6)
        self.stats.add("queue_wait", (t_start - rec.received_ns) * 1e-6)
        self._publish(result, rgb)

    def _navigation_picture(self, result: FrameResult) -> FrameResult:
        """A pose update's result with the reslice of the planning CT along its needle."""
        nav, n, plan = self._navview, result.needle, self._plan
        if nav is None or n is None or not n.has_3d:
            return result
        view = nav.render(n.tip_lps, n.axis_lps,
                          plan.direction_lps if plan is not None else None)
        return dataclasses.replace(
            result, image=view.image, labels=view.labels, label_names=view.label_names,
            placement=FramePlacement("slice", view.image.ijk_to_lps, path=("CT",)),
            needle=dataclasses.replace(n, tip_ij=view.tip_ij, hub_ij=view.hub_ij))

    def _publish(self, result: FrameResult, rgb: np.ndarray | None) -> None:
        with self._latest_lock:
            self._latest = result
            if result.image is not None:
                self._latest_picture = result
        self.last_result = result
        self.states[result.state.name] = self.states.get(result.state.name, 0) + 1
        for r in result.state_reasons:
            self.reason_counts[r.reason.code] = self.reason_counts.get(r.reason.code, 0) + 1
        if self.on_result is None:
            return
        if rgb is None and result.kind != "pose":
            rgb = self.overlay.compose(result)
        self.on_result(result, rgb)

    def _report_stale(self, idle_s: float) -> None:
        self.stale_reports += 1
        if self._pose_mode(time.monotonic_ns()):
            reason = StateReason(Reason.NO_POSE, f"no needle pose for {idle_s:.2f} s")
        else:
            reason = StateReason(Reason.NO_FRAME, f"no frame for {idle_s:.2f} s")
        result = FrameResult(seq=0, t_s=self._t(), received_ns=0, state=GuidanceState.STALE,
                             kind="none", state_reasons=(reason,))
        if self.send is not None:
            send_stale(self.send, self.config.output, reason.message)
        self._publish(result, None)

    def _log_decision(self, item: WorkItem, state: GuidanceState) -> None:
        """Counts per level, and the warnings log kept to level changes per structure
        (not 15 entries a second)."""
        d = item.decision
        level = d.level.name if d is not None else f"no decision ({state.name})"
        self.decisions[level] = self.decisions.get(level, 0) + 1
        now: dict[str, SafetyWarning] = {}
        for w in (d.findings if d is not None else ()):
            if w.structure not in now or w.level > now[w.structure].level:
                now[w.structure] = w
        for key, w in now.items():
            if self._active.get(key) != w.level:
                self.warnings_log.append(w)
        self._active = {k: w.level for k, w in now.items()}

    # -- outputs ---------------------------------------------------------------------

    def _send_outputs(self, result: FrameResult, rec: Received, item: WorkItem,
                      e2e: EndToEnd) -> int:
        """The update's messages (:mod:`guidance.pipeline.outputs`); the number of peers
        they went to."""
        if self.send is None:
            return 0
        ts = rec.timestamp_s

        def tip_done(ns: int) -> None:
            # Input received -> tip handed to the kernel (``guidance bench --tracked``).
            self.stats.add("tip_sent", (ns - rec.received_ns) * 1e-6)
            e2e.sent(ns)

        tip_ts = item.at_s if math.isfinite(item.at_s) else ts
        sent = send_update(self.send, self.config.output, result, result_text(result), ts,
                           tip_ts, e2e.sent, tip_done)
        now = time.monotonic()
        plan = self._plan
        if plan is not None and now - self._last_plan_sent > 2.0:
            self._last_plan_sent = now
            send_plan(self.send, self.config.output, plan, ts)
        return sent
