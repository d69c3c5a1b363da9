"""The session's transform graph at work: the needle tip and the frames in the planning CT.

One :class:`Navigator` per live session owns the transform graph. Every incoming
TRANSFORM / TDATA / POSITION goes into it as it arrives (:meth:`Navigator.on_message`,
a receive-thread listener: no pose is lost to the latest-value slots, so that poses can
be interpolated to a frame's time); every ``--calibration FILE`` is a static edge
(:class:`~guidance.navigation.setup.RoomSetup`). The pipeline asks, per update:

- :meth:`Navigator.tracked_tip`: ``NeedleTip -> CT`` at a time (``NeedleTipToReference``
  when the tracker sends it, else pivot calibration + marker pose, then the
  registration); a missing edge is named with the command that makes it, never
  replaced by the marker's pose;
- :meth:`Navigator.place`: where a frame's pixels are in the planning CT (a slice
  through ``Image -> Probe -> Reference -> CT``, a projection through the C-arm
  calibration);
- :meth:`Navigator.widening`: the margin widening from the uncertainties the files on
  the path declare.

Thread-safety: :meth:`on_message` runs in receive threads; the graph and the tool streams
lock themselves. The query methods are called from the pipeline thread only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from guidance.geometry import ImageVolume
from guidance.io.messages import PositionMessage, TrackingDataMessage
from guidance.io.slots import Received
from guidance.navigation.setup import RoomSetup
from guidance.pipeline.config import NavigationConfig
from guidance.pipeline.frame import Reason, StateReason
from guidance.pipeline.placement import FramePlacement
from guidance.safety.config import SafetyConfig
from guidance.safety.decision import MarginWidening
from trackers.chains import NEEDLE_TIP_TO_CT, frame_to_ct_chain, missing_link
from trackers.tool_stream import ToolStreams
from trackers.transform_graph import (
    FRAME_PATTERN,
    EdgeUse,
    NoPathError,
    TransformGraph,
    TransformQuery,
    TransformState,
    parse_transform_name,
)

__all__ = ["POSE_TYPES", "Navigator", "TrackedTip", "frame_of_device"]

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
NAN3 = np.full(3, np.nan)

#: OpenIGTLink message types that carry tool poses.
POSE_TYPES = ("TRANSFORM", "TDATA", "POSITION")


def frame_of_device(device_name: str, default: str) -> str:
    """The frame an IMAGE's matrix maps to, from its device name (PLUS: ``Image_Reference``
    -> ``Reference``); ``default`` when the name has no ``_Frame`` suffix."""
    _, sep, suffix = device_name.rpartition("_")
    return suffix if sep and FRAME_PATTERN.fullmatch(suffix) else default


@dataclass(frozen=True, eq=False)
class TrackedTip:
    """The tracked needle tip in the planning CT at one time.

    Attributes:
        tip_ct: (3,) tip, LPS mm of the planning CT (NaN when not known).
        axis_ct: (3,) unit direction hub -> tip (NaN when not known).
        at_s: the time asked for (poses' clock), s.
        edges: the transforms composed (empty when there is no path).
        problem: why it cannot be used (``None`` when it can).
        age_s: age of the oldest live pose on the path, s.
        time_gap_s: how far ``at_s`` lies outside the poses used, s.
    """

    tip_ct: F64
    axis_ct: F64
    at_s: float
    edges: tuple[EdgeUse, ...] = ()
    problem: StateReason | None = None
    age_s: float = 0.0
    time_gap_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.problem is None


def _edge_problem(q: TransformQuery, what: str) -> StateReason:
    """Why a composed path is not trusted, naming the edge."""
    e = q.worst_edge()
    assert e is not None
    if e.state is TransformState.INVALID:
        return StateReason(Reason.POSE_INVALID,
                           f"{e.name} flagged invalid by the tracker (out of view?): {what}")
    if e.state is TransformState.IDENTITY:
        return StateReason(Reason.POSE_INVALID,
                           f"{e.name} is an identity matrix (what a tracker sends for a tool "
                           f"out of view): {what}")
    if e.time_gap_s > e.max_age_s:
        return StateReason(Reason.POSE_STALE,
                           f"no {e.name} pose within {e.time_gap_s:.2f} s of the frame's time "
                           f"(limit {e.max_age_s:.2f} s; do the tracker and the scanner share "
                           f"a clock?): {what}")
    return StateReason(Reason.POSE_STALE, f"{e.name} is {e.age_s:.2f} s old (limit "
                                          f"{e.max_age_s:.2f} s): {what}")


def _rss_or_default(values: list[float], default: float, what: str, notes: list[str]) -> float:
    """Root sum of squares of the declared values, else the default (noted)."""
    if values:
        return math.sqrt(sum(v * v for v in values))
    notes.append(f"{what} {default:.2f} mm not declared on the path (configuration default)")
    return default


class Navigator:
    """The transform graph of one session and the room's calibrations.

    Args:
        setup: the calibration files' content (``None``: none given).
        config: the ``navigation`` section.
        clock_ns: local monotonic clock (injectable for tests).
    """

    def __init__(self, setup: RoomSetup | None = None, config: NavigationConfig | None = None,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.setup = setup or RoomSetup()
        self.config = config or NavigationConfig()
        c = self.config
        self.graph = TransformGraph(default_max_age_s=c.pose_stale_after_s, clock_ns=clock_ns)
        for name, limit in c.stale_limits_s.items():
            self.graph.set_max_age(name, float(limit))
        self.setup.apply_to(self.graph)
        self.tools = ToolStreams(self.graph, time_base=c.time_base)
        self._clock_ns = clock_ns

    # -- input (receive threads) ---------------------------------------------------------

    def on_message(self, item: Received) -> None:
        """Take a received pose message (TRANSFORM, TDATA, POSITION) into the graph; other
        types are ignored. Never raises: a bad pose is logged and counted (``tools``)."""
        msg = item.message
        try:
            if item.message_type == "TRANSFORM":
                self.tools.on_transform(item.device_name, msg.matrix,
                                        item.timestamp_s, item.received_ns)
            elif item.message_type == "TDATA" and isinstance(msg, TrackingDataMessage):
                self.tools.on_tdata(zip(msg.names, msg.matrices, strict=True),
                                    item.timestamp_s, item.received_ns)
            elif item.message_type == "POSITION" and isinstance(msg, PositionMessage):
                self.tools.on_position(item.device_name, msg.position,
                                       msg.quaternion if msg.has_orientation else None,
                                       item.timestamp_s, item.received_ns)
        except Exception as e:  # a listener must not raise into the receive loop
            log.exception("pose message %s from %s not taken: %s", item.device_name,
                          item.peer, e)

    def time_of(self, timestamp_s: float, received_ns: int) -> float:
        """An input's time on the poses' clock (the sender's, or the receive time)."""
        if self.config.time_base == "sender" and timestamp_s != 0.0 and math.isfinite(
                timestamp_s):
            return float(timestamp_s)
        return received_ns * 1e-9

    # -- queries (pipeline thread) -------------------------------------------------------

    @property
    def tracks_needle(self) -> bool:
        """True when the room has a tracked needle (any transform of ``Needle`` or
        ``NeedleTip``): its tip is then expected, and a missing link is an error."""
        frames = self.graph.frames()
        return "NeedleTip" in frames or "Needle" in frames

    def tracked_tip(self, at_s: float | None, now_ns: int | None = None) -> TrackedTip | None:
        """``NeedleTip -> CT`` at ``at_s`` (``None``: the newest poses).

        Returns:
            ``None`` when the room tracks no needle; else the tip, or why not (a missing
            transform named with what makes it; a stale, invalid or identity pose).
        """
        if not self.tracks_needle:
            return None
        now = self._clock_ns() if now_ns is None else now_ns
        t = math.nan if at_s is None else at_s
        try:
            q = self.graph.query("NeedleTip", "CT", now_ns=now, at_s=at_s)
        except NoPathError as e:
            ml = missing_link(e.reachable, NEEDLE_TIP_TO_CT)
            text = ml.message if ml is not None else str(e)
            return TrackedTip(NAN3, NAN3, t, problem=StateReason(Reason.MISSING_TRANSFORM, text))
        m = q.matrix
        problem = None if q.ok else _edge_problem(q, "needle tip not current")
        return TrackedTip(m[:3, 3].copy(), m[:3, 2].copy(), t, q.edges, problem, q.age_s,
                          q.time_gap_s)

    def place(self, frame_name: str, image: ImageVolume, projection: bool, at_s: float | None,
              now_ns: int | None = None
              ) -> tuple[FramePlacement | None, StateReason | None, tuple[EdgeUse, ...]]:
        """Where a frame lies in the planning CT.

        Args:
            frame_name: the frame its IMAGE matrix maps to (:func:`frame_of_device`).
            image: the frame (``ijk_to_lps`` maps to ``frame_name``).
            projection: a fluoroscopy frame (placed by the C-arm calibration).
            at_s: the time it shows (poses' clock); ``None``: the newest poses.

        Returns:
            ``(placement, problem, edges)``: the placement or ``None`` with why not.
        """
        now = self._clock_ns() if now_ns is None else now_ns
        if projection:
            return self._place_projection(at_s, now)
        if frame_name == "CT":
            return FramePlacement("slice", image.ijk_to_lps, path=("CT",)), None, ()
        try:
            q = self.graph.query(frame_name, "CT", now_ns=now, at_s=at_s)
        except NoPathError as e:
            ml = missing_link(e.reachable, frame_to_ct_chain(frame_name))
            text = ml.message if ml is not None else str(e)
            return None, StateReason(Reason.FRAME_NOT_PLACED,
                                     f"frame not placed in the planning CT: {text}"), ()
        if not q.ok:
            return None, _edge_problem(q, "frame not placed"), q.edges
        placement = FramePlacement("slice", q.matrix @ image.ijk_to_lps, path=q.path)
        return placement, self._spacing_problem(image, q.edges), q.edges

    def _spacing_problem(self, image: ImageVolume, edges: tuple[EdgeUse, ...]
                         ) -> StateReason | None:
        """A probe calibration holds for the pixel spacing it was made with: a frame
        with another (the depth was changed on the scanner) does not fit it."""
        for e in edges:
            unc = self.setup.uncertainties.get(e.name)
            if unc is None or unc.pixel_spacing_mm is None:
                continue
            got = image.spacing_mm[:2]
            want = unc.pixel_spacing_mm
            if np.any(np.abs(got - want) > 0.01 * want):
                return StateReason(
                    Reason.SPACING_NOT_CALIBRATED,
                    f"the frame's pixel spacing {got[0]:.3f} x {got[1]:.3f} mm is not the "
                    f"{want[0]:.3f} x {want[1]:.3f} mm the probe calibration "
                    f"{unc.source} was made with (depth changed?): placement unsure; "
                    "calibrate the probe at this depth")
        return None

    def _place_projection(self, at_s: float | None, now: int
                          ) -> tuple[FramePlacement | None, StateReason | None,
                                     tuple[EdgeUse, ...]]:
        carm = self.setup.carm
        if carm is None:
            return None, StateReason(
                Reason.OVERLAY_NOT_REGISTERED,
                "fluoroscopy overlay not registered: no C-arm calibration (make one with "
                "`guidance calibrate carm --name ReferenceToCArm ...` and give "
                "`--calibration carm.json`)"), ()
        try:
            q = self.graph.query("CT", carm.camera_frame, now_ns=now, at_s=at_s)
        except NoPathError as e:
            return None, StateReason(
                Reason.OVERLAY_NOT_REGISTERED,
                f"fluoroscopy overlay not registered: no transform joins the planning CT to "
                f"the C-arm frame {carm.camera_frame} of {carm.source} (CT is joined to "
                f"{sorted(e.reachable - {'CT'}) or 'nothing'}; a registration such as "
                "ReferenceToCT is needed)"), ()
        if not q.ok:
            return None, _edge_problem(q, "fluoroscopy overlay not registered"), q.edges
        proj = carm.intrinsics @ q.matrix[:3, :]
        return FramePlacement("projection", ct_to_pixel=proj, path=q.path), None, q.edges

    def widening(self, edges: tuple[EdgeUse, ...], target_ct: F64 | None, tracking_mm: float,
                 latency_s: float, speed_mm_s: float, config: SafetyConfig) -> MarginWidening:
        """The margin widening for a needle found through ``edges``.

        Calibration: root sum of squares of the RMS declared by the calibration files on
        the path (pivot, spin, probe); registration: the expected TRE of the registrations
        on the path at the target (their fixed frame); where the path has none declared,
        the configuration's value is used and the notes say so.
        """
        cal: list[float] = []
        reg: list[float] = []
        notes: list[str] = []
        for e in edges:
            unc = self.setup.uncertainties.get(e.name)
            if unc is None:
                continue
            point = None
            if unc.kind == "registration" and target_ct is not None:
                point = self._in_fixed_frame(unc.edge, target_ct)
            value, note = unc.at(point)
            (reg if unc.kind == "registration" else cal).append(value)
            notes.append(note)
        calibration = _rss_or_default(cal, config.calibration_sigma_mm, "calibration", notes)
        registration = _rss_or_default(reg, config.registration_tre_mm, "registration", notes)
        if not math.isfinite(tracking_mm):
            tracking_mm = config.tracking_sigma_mm
            notes.append(f"tracking {tracking_mm:.2f} mm (configuration default)")
        return MarginWidening(tracking_mm, calibration, registration,
                              latency_s + config.display_latency_s, speed_mm_s,
                              config.coverage_k, tuple(notes))

    def _in_fixed_frame(self, edge: str, point_ct: F64) -> F64 | None:
        _, fixed = parse_transform_name(edge)
        if fixed == "CT":
            return point_ct
        try:
            q = self.graph.query("CT", fixed)
        except NoPathError:
            return None
        out: F64 = q.matrix[:3, :3] @ point_ct + q.matrix[:3, 3]
        return out
