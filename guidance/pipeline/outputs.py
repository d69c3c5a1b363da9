"""The OpenIGTLink messages of one update, all derived from its
:class:`~guidance.pipeline.frame.FrameResult`.

In the order they go out: the label IMAGE (a CT control scan's labels, or the frame's on
its grid, placed in the planning CT when the frame is), the needle tip TRANSFORM (RAS, for
3D Slicer; never when the input is stale or the tip's chain is broken), the warning STRING
and its STATUS (:func:`status_code`), and, at most every 2 s, the plan's POINTs. A STALE
report is a STATUS and a STRING. The loop (:mod:`guidance.pipeline.loop`) decides when to
send; these functions only build the messages and hand them to the transport's send.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyigtl
from pyigtl.messages import MessageBase

from guidance.geometry import RAS_TO_LPS, ImageVolume
from guidance.io.messages import StatusMessage, image_message_from_volume
from guidance.pipeline.config import OutputConfig
from guidance.pipeline.ct_path import labels_volume
from guidance.pipeline.frame import FrameResult, Reason
from guidance.planning.plan import Plan
from guidance.records import GuidanceState, WarningLevel
from trackers.pose import pose_from_tip_axis

__all__ = ["SendFn", "send_plan", "send_stale", "send_update", "status_code"]

#: ``send(message, on_sent) -> number of peers``: the transport's send.
SendFn = Callable[[MessageBase, Callable[[int], None] | None], int]


def status_code(state: GuidanceState, level: WarningLevel) -> int:
    """OpenIGTLink STATUS code: 2 (DANGER) for a DANGER decision on current input (not
    STALE: a US nerve or vessel DANGER is sent even when the 3D guidance is
    NO_GUIDANCE), else 1 OK, 7 STALE, 13 DEGRADED, 16 NO_GUIDANCE."""
    if level >= WarningLevel.DANGER and state != GuidanceState.STALE:
        return 2
    return {GuidanceState.OK: 1, GuidanceState.STALE: 7, GuidanceState.DEGRADED: 13,
            GuidanceState.NO_GUIDANCE: 16}[state]


def send_update(send: SendFn, out: OutputConfig, result: FrameResult, text: str,
                ts: float, tip_ts: float, done: Callable[[int], None],
                tip_done: Callable[[int], None]) -> int:
    """Send an update's label IMAGE, tip TRANSFORM, warning STRING and STATUS.

    Args:
        send: the transport's send.
        out: device names and what to send.
        result: the update.
        text: its STRING (:func:`guidance.pipeline.loop.result_text`).
        ts: the messages' timestamp (the input's), s.
        tip_ts: the tip TRANSFORM's timestamp: the time the tip is for (a frame's time
            minus the lag), s.
        done: called with the monotonic ns at which a label, tip or STRING message was
            handed to the kernel (the transport's thread).
        tip_done: the same for the tip TRANSFORM (instead of ``done``).

    Returns:
        The number of peers the label, tip and STRING messages went to (0: nobody).
    """
    n = result.needle
    sent = 0
    if out.send_labels and result.ct_scan is not None:
        sent = send(image_message_from_volume(labels_volume(result.ct_scan),
                                              out.label_device, ts), done)
    elif (out.send_labels and result.kind == "frame" and result.labels is not None
            and result.image is not None):
        # On the frame's grid, placed in the planning CT when the frame is.
        pl = result.placement
        m = pl.ijk_to_ct if pl is not None and pl.ijk_to_ct is not None \
            else result.image.ijk_to_lps
        lab = ImageVolume(result.labels[None], m)
        sent = send(image_message_from_volume(lab, out.label_device, ts), done)
    blocking = [r for r in result.state_reasons if r.reason is not Reason.NO_PLAN
                and r.state in (GuidanceState.STALE, GuidanceState.NO_GUIDANCE)]
    if n is not None and n.has_3d and not blocking:
        # The tip at the time it is for (frame: its time minus the lag); sent without a
        # plan too (navigation), never when it is stale or its chain is broken.
        m = pose_from_tip_axis(n.tip_lps, n.axis_lps)
        k = send(pyigtl.TransformMessage(RAS_TO_LPS @ m, timestamp=tip_ts,
                                         device_name=out.tip_device), tip_done)
        sent = max(sent, k)
    k = send(pyigtl.StringMessage(text, timestamp=ts, device_name=out.warning_device), done)
    sent = max(sent, k)
    level = result.level
    send(StatusMessage(status_code(result.state, level), int(level),
                       level.name if level else result.state.name, text[:200],
                       timestamp=ts, device_name=out.warning_device), None)
    return sent


def send_plan(send: SendFn, out: OutputConfig, plan: Plan, ts: float) -> None:
    """The plan's entry and target as a POINT list (RAS, group ``Plan``)."""
    pts = np.stack([plan.entry_lps, plan.target_lps]) @ RAS_TO_LPS[:3, :3].T
    send(pyigtl.PointMessage(pts, names=["Entry", "Target"], groups="Plan",
                             timestamp=ts, device_name=out.plan_device), None)


def send_stale(send: SendFn, out: OutputConfig, message: str) -> None:
    """A STALE report: STATUS 7 and the STRING ``STALE: message``."""
    dev = out.warning_device
    text = f"STALE: {message}"
    send(StatusMessage(7, 0, "STALE", text, device_name=dev), None)
    send(pyigtl.StringMessage(text, device_name=dev), None)
