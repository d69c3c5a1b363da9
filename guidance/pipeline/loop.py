"""The live loop: a processing thread that always takes the newest frame.

Source (any :class:`~guidance.io.slots.LatestSlots` filled by the OpenIGTLink server,
client or a replay) -> ingest -> preprocess -> segment -> needle -> safety -> outputs
(label IMAGE, needle tip TRANSFORM, warning STRING and STATUS, plan POINT) and the
annotated overlay. Each stage is timed on every frame; end-to-end latency runs from the
frame's last byte received to the later of "results handed to the kernel" and "overlay
composed". When no frame arrives for ``stale_after_s`` the loop reports STALE instead of
repeating the last result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyigtl
from pyigtl.messages import MessageBase

from guidance.geometry import RAS_TO_LPS, ImageVolume
from guidance.io.messages import (
    StatusMessage,
    TrackingDataMessage,
    image_message_from_volume,
    volume_from_image_message,
)
from guidance.io.slots import LatestSlots, Received
from guidance.pipeline.config import PipelineConfig
from guidance.pipeline.frame import Frame, FrameResult, WorkItem
from guidance.pipeline.overlay import OverlayComposer
from guidance.pipeline.stages import (
    NeedleStage,
    PreprocessStage,
    SafetyStage,
    SegmentStage,
    load_segmenters,
)
from guidance.pipeline.stats import LatencyRecorder
from guidance.records import GuidanceState, SafetyWarning, WarningLevel
from trackers.pose import TrackedPose, pose_from_tip_axis
from trackers.tool_stream import ToolStreams

__all__ = ["Pipeline", "SendFn"]

log = logging.getLogger(__name__)

#: ``send(message, on_sent) -> number of peers``: the transport's send.
SendFn = Callable[[MessageBase, Callable[[int], None] | None], int]

_POSE_TYPES = ("TRANSFORM", "TDATA")


@dataclass
class _E2E:
    """End-to-end completion of one frame: the label IMAGE handed to the kernel (for the
    first peer) and the overlay composed, whichever is later."""

    received_ns: int
    expect_send: bool = True
    sent_ns: int = 0
    overlay_ns: int = 0
    recorded: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class Pipeline:
    """The processing thread and its stages.

    Args:
        slots: where received messages arrive.
        config: stage configuration.
        send: the transport's send (``None``: results are not sent).
        frame_kind: ``auto`` (8-bit or signed 16-bit = a slice in LPS such as an
            ultrasound or CT frame; unsigned 16-bit = a projection such as fluoroscopy),
            ``slice`` or ``projection``.
        on_result: called with each result and its overlay (RGB, a reused buffer) from
            the processing thread; keep it quick (hand off to another thread).
    """

    def __init__(
        self,
        slots: LatestSlots,
        config: PipelineConfig | None = None,
        send: SendFn | None = None,
        frame_kind: str = "auto",
        on_result: Callable[[FrameResult, np.ndarray], None] | None = None,
    ) -> None:
        if frame_kind not in ("auto", "slice", "projection"):
            raise ValueError(f"frame_kind must be auto, slice or projection, got {frame_kind!r}")
        self.slots = slots
        self.config = config or PipelineConfig()
        self.send = send
        self.frame_kind = frame_kind
        self.on_result = on_result
        self.preprocess = PreprocessStage(self.config.preprocess)
        modalities = (("us", "fluoro", "ct") if frame_kind == "auto"
                      else ("fluoro",) if frame_kind == "projection" else ("us", "ct"))
        if self.config.segment.modality != "auto":
            modalities = (self.config.segment.modality,)
        self.segment = SegmentStage(self.config.segment,
                                    *load_segmenters(self.config.segment, modalities))
        self.safety = SafetyStage(self.config.safety)
        self._needle_stages: dict[bool, NeedleStage] = {}
        self.overlay = OverlayComposer()
        self.stats = LatencyRecorder()
        self.tools = ToolStreams()
        self._pose_seq: dict[str, int] = {}
        self.frames_processed = 0
        self.stale_reports = 0
        self.warnings_log: list[SafetyWarning] = []
        self._active: dict[str, WarningLevel] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0_ns = time.monotonic_ns()
        self._latest: FrameResult | None = None
        self._latest_lock = threading.Lock()
        self._last_plan_sent = 0.0
        self._plan: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None
        self.last_error = ""

    # -- control ---------------------------------------------------------------------

    def set_plan(self, entry_lps: npt.ArrayLike, target_lps: npt.ArrayLike) -> None:
        """Planned entry and target (LPS mm) for the deviation check and the overlay."""
        entry = np.asarray(entry_lps, np.float64).reshape(3)
        target = np.asarray(target_lps, np.float64).reshape(3)
        self.safety.set_plan(entry, target)
        self.overlay.plan = (entry, target)
        self._plan = (entry, target)
        self.segment.hub_hint_ij = None
        self._last_plan_sent = 0.0

    def start(self) -> Pipeline:
        """Start the processing thread."""
        self._t0_ns = time.monotonic_ns()
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the current frame."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def latest(self) -> FrameResult | None:
        """The newest result (latest-value slot for the GUI)."""
        with self._latest_lock:
            return self._latest

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

    def _run(self) -> None:
        dev = self.config.ingest.image_device
        timeout = self.config.ingest.stale_after_s
        seen: dict[str, int] = {}
        seq = 0
        while not self._stop.is_set():
            if dev:
                item = self.slots.wait_newer(dev, seq, timeout)
            else:
                item = self.slots.wait_any(("IMAGE",), seen, timeout)
            if item is None:
                self._report_stale()
                continue
            seq = item.seq
            try:
                self._process(item)
            except Exception as e:  # a bad frame must not stop the loop
                self.last_error = f"frame {item.device_name}#{item.seq}: {e}"
                log.exception("pipeline failed on %s", self.last_error)
                self._publish(FrameResult(
                    item.seq, self._t(), item.received_ns, GuidanceState.NO_GUIDANCE,
                    (f"processing failed: {e}",), None, WarningLevel.NONE, (), {}, {}, None,
                    None), None)

    def _t(self) -> float:
        return (time.monotonic_ns() - self._t0_ns) * 1e-9

    def _poses(self) -> dict[str, TrackedPose]:
        """Newest pose per tool. Each new TRANSFORM/TDATA goes once through
        :class:`~trackers.tool_stream.ToolStreams`, which refuses non-rigid matrices and
        marks an identity matrix (a tracker's "out of view") as not valid."""
        for name in self.slots.device_names():
            it = self.slots.latest(name)
            if (it is None or it.message_type not in _POSE_TYPES
                    or it.seq <= self._pose_seq.get(name, 0)):
                continue
            self._pose_seq[name] = it.seq
            msg = it.message
            if isinstance(msg, TrackingDataMessage):
                self.tools.on_tdata(zip(msg.names, msg.matrices, strict=True),
                                    it.timestamp_s, it.received_ns)
            else:
                self.tools.on_transform(name, msg.matrix, it.timestamp_s, it.received_ns)
        return {n: p for n in self.tools.names() if (p := self.tools.latest(n)) is not None}

    def _in_plane(self, image: ImageVolume) -> bool:
        if self.frame_kind == "auto":
            return bool(image.voxels.dtype != np.uint16)
        return self.frame_kind == "slice"

    def _modality(self, image: ImageVolume) -> str:
        """The frame's modality for the segmenter (``segment.modality`` or from the kind)."""
        m = self.config.segment.modality
        if m != "auto":
            return m
        if not self._in_plane(image):
            return "fluoro"
        return "ct" if image.voxels.dtype == np.int16 else "us"

    def _needle_stage(self, image: ImageVolume) -> NeedleStage:
        in_plane = self._in_plane(image)
        st = self._needle_stages.get(in_plane)
        if st is None:
            ic = self.config.ingest
            st = self._needle_stages[in_plane] = NeedleStage(
                ic.needle_pose, ic.pose_stale_after_s, in_plane)
        return st

    def _process(self, rec: Received) -> None:
        t_start = time.monotonic_ns()
        stage_ms: dict[str, float] = {}
        image = volume_from_image_message(rec.message)
        frame = Frame(rec.seq, rec.device_name, image, rec.timestamp_s, rec.received_ns,
                      self._poses())
        item = WorkItem(frame=frame, t_s=(rec.received_ns - self._t0_ns) * 1e-9,
                        modality=self._modality(image))
        t = time.monotonic_ns()
        stage_ms["ingest"] = (t - t_start) * 1e-6
        for stage in (self.preprocess, self.segment, self._needle_stage(image), self.safety):
            t_a = time.monotonic_ns()
            stage.process(item)
            stage_ms[stage.name] = (time.monotonic_ns() - t_a) * 1e-6
        age_s = (time.monotonic_ns() - rec.received_ns) * 1e-9
        if age_s > self.config.ingest.stale_after_s:
            item.state = GuidanceState.STALE
            item.reasons.insert(0, f"frame {age_s:.2f} s old when processed")
        if item.needle is None and item.state == GuidanceState.OK:
            item.state = GuidanceState.NO_GUIDANCE
            item.reasons.insert(0, "no needle found")
        elif item.state == GuidanceState.OK and any("no safety check" in r for r in item.reasons):
            item.state = GuidanceState.NO_GUIDANCE
        if item.needle is not None and item.needle.in_image:
            # The hub end is stable: it tells the detector which end is the tip.
            self.segment.hub_hint_ij = item.needle.hub_ij
        self._log_warnings(item.warnings)
        result = FrameResult(
            rec.seq, item.t_s, rec.received_ns, item.state, tuple(item.reasons), item.needle,
            item.level, tuple(item.warnings), dict(item.metrics), stage_ms, image,
            item.labels, poses=frame.poses, label_names=item.label_names,
            modality=item.modality)
        t_out = time.monotonic_ns()
        e2e = _E2E(rec.received_ns)
        if self._send_outputs(result, rec, e2e) == 0:
            self._finish(e2e, expect_send=False)  # nobody to send to
        stage_ms["output"] = (time.monotonic_ns() - t_out) * 1e-6
        t_ov = time.monotonic_ns()
        latency_est = (t_ov - rec.received_ns) * 1e-6
        rgb = self.overlay.compose(result, latency_est)
        stage_ms["overlay"] = (time.monotonic_ns() - t_ov) * 1e-6
        self._finish(e2e, overlay_ns=time.monotonic_ns())
        for name, ms in stage_ms.items():
            self.stats.add(name, ms)
        self.stats.add("processing", (time.monotonic_ns() - t_start) * 1e-6)
        self.stats.add("queue_wait", (t_start - rec.received_ns) * 1e-6)
        self.frames_processed += 1
        self._publish(result, rgb)

    def _finish(self, e2e: _E2E, sent_ns: int = 0, overlay_ns: int = 0,
                expect_send: bool = True) -> None:
        with e2e.lock:
            if sent_ns and not e2e.sent_ns:
                e2e.sent_ns = sent_ns
            if overlay_ns:
                e2e.overlay_ns = overlay_ns
            e2e.expect_send = e2e.expect_send and expect_send
            send_done = e2e.sent_ns > 0 or not e2e.expect_send
            if e2e.overlay_ns and send_done and not e2e.recorded:
                e2e.recorded = True
                done = max(e2e.overlay_ns, e2e.sent_ns)
                self.stats.add("end_to_end", (done - e2e.received_ns) * 1e-6)

    def _publish(self, result: FrameResult, rgb: np.ndarray | None) -> None:
        with self._latest_lock:
            self._latest = result
        if self.on_result is not None and rgb is not None:
            self.on_result(result, rgb)
        elif self.on_result is not None:
            self.on_result(result, self.overlay.compose(result))

    def _report_stale(self) -> None:
        self.stale_reports += 1
        t = self._t()
        reason = f"no frame for {self.config.ingest.stale_after_s:.2f} s"
        result = FrameResult(0, t, 0, GuidanceState.STALE, (reason,), None, WarningLevel.NONE,
                             (), {}, {}, None, None)
        if self.send is not None:
            dev = self.config.output.warning_device
            self.send(StatusMessage(7, 0, "STALE", reason, device_name=dev), None)
            self.send(pyigtl.StringMessage(f"STALE: {reason}", device_name=dev), None)
        self._publish(result, None)

    def _log_warnings(self, warnings: list[SafetyWarning]) -> None:
        """Keep the warnings log to level changes per structure (not 15 entries/s)."""
        now: dict[str, SafetyWarning] = {}
        for w in warnings:
            if w.structure not in now or w.level > now[w.structure].level:
                now[w.structure] = w
        for key, w in now.items():
            if self._active.get(key) != w.level:
                self.warnings_log.append(w)
        self._active = {k: w.level for k, w in now.items()}

    # -- outputs ---------------------------------------------------------------------

    def _send_outputs(self, result: FrameResult, rec: Received, e2e: _E2E) -> int:
        if self.send is None:
            return 0
        out = self.config.output
        ts = rec.timestamp_s
        n = result.needle
        sent = 0
        if out.send_labels and result.labels is not None and result.image is not None:
            lab = ImageVolume(result.labels[None], result.image.ijk_to_lps)
            sent = self.send(image_message_from_volume(lab, out.label_device, ts),
                             lambda ns: self._finish(e2e, sent_ns=ns))
        if n is not None and n.has_3d:
            m = pose_from_tip_axis(n.tip_lps, n.axis_lps)
            self.send(pyigtl.TransformMessage(RAS_TO_LPS @ m, timestamp=ts,
                                              device_name=out.tip_device), None)
        worst = max(result.warnings, key=lambda w: w.level, default=None)
        if result.state != GuidanceState.OK:
            text = f"{result.state.name}: " + "; ".join(result.reasons)
        elif worst is not None:
            text = f"{worst.level.name}: {worst.message}"
        else:
            text = "OK"
        self.send(pyigtl.StringMessage(text, timestamp=ts, device_name=out.warning_device), None)
        code = {GuidanceState.OK: 1, GuidanceState.STALE: 7, GuidanceState.DEGRADED: 13,
                GuidanceState.NO_GUIDANCE: 16}[result.state]
        if result.state == GuidanceState.OK and result.level >= WarningLevel.DANGER:
            code = 2
        self.send(StatusMessage(code, int(result.level), result.level.name
                                if result.level else result.state.name, text[:200],
                                timestamp=ts, device_name=out.warning_device), None)
        now = time.monotonic()
        if self._plan is not None and now - self._last_plan_sent > 2.0:
            self._last_plan_sent = now
            pts = np.stack(self._plan) @ RAS_TO_LPS[:3, :3].T  # LPS -> RAS for Slicer
            self.send(pyigtl.PointMessage(pts, names=["Entry", "Target"], groups="Plan",
                                          timestamp=ts, device_name=out.plan_device), None)
        return sent
