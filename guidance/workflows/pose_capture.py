"""Tool poses captured live over OpenIGTLink for pivot and spin calibration
(``guidance calibrate pivot|spin --from HOST:PORT``).

The capture logic itself (valid, distinct poses for a duration) is
:func:`trackers.capture.capture_poses`; this module connects it to an OpenIGTLink server
and keeps the captured poses, with their SHA-256, as the calibration's input.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from guidance.workflows.shared import WorkflowError
from trackers.capture import capture_poses
from trackers.pose import TrackedPose
from trackers.transform_graph import FRAME_PATTERN, parse_transform_name

__all__ = ["POSE_SOURCE", "CapturedPoses", "capture_tool_poses", "igtl_poses", "tool_names"]

_log = logging.getLogger(__name__)


def tool_names(tool: str) -> tuple[str, str]:
    """(TRANSFORM device name, tool frame) of ``tool``: ``StylusToTracker`` or ``Stylus``
    (then the device is ``StylusToTracker``).

    Raises:
        WorkflowError: neither a frame name nor a transform name (the message names
            ``--tool``, the option that gives it).
    """
    try:
        frame, _ = parse_transform_name(tool)
        return tool, frame
    except ValueError:
        if not FRAME_PATTERN.fullmatch(tool):
            raise WorkflowError(
                f"--tool must be a frame name like 'Stylus' or a transform name like "
                f"'StylusToTracker', got {tool!r}"
            ) from None
        return f"{tool}ToTracker", tool


def igtl_poses(host: str, port: int, device: str, seconds: float) -> Iterator[TrackedPose]:
    """TrackedPose stream (poses ``device`` → tracker, mm) of one TRANSFORM device from an
    OpenIGTLink server, for at most ``seconds`` plus one second of wall-clock time."""
    from guidance.io.igtl import IgtlClient

    client = IgtlClient(host, port)
    client.start()
    try:
        deadline = time.monotonic() + seconds + 1.0
        seq = 0
        while (remaining := deadline - time.monotonic()) > 0:
            item = client.slots.wait_newer(device, seq, min(remaining, 0.5))
            if item is None:
                continue
            seq = item.seq
            matrix = getattr(item.message, "matrix", None)
            if matrix is None:
                _log.warning("device %s sent a %s, not a TRANSFORM", device, type(item.message))
                continue
            yield TrackedPose(
                name=device,
                pose=np.asarray(matrix, dtype=np.float64),
                timestamp_s=float(item.timestamp_s),
                received_ns=int(item.received_ns),
            )
    finally:
        client.stop()


#: Replaced in tests by a fake source: ``(host, port, device, seconds) -> iterator``.
POSE_SOURCE: Callable[[str, int, str, float], Iterator[TrackedPose]] = igtl_poses


@dataclass(frozen=True, eq=False)
class CapturedPoses:
    """Poses captured live.

    Attributes:
        matrices: (N, 4, 4) float64 poses tool → tracker, mm.
        source: ``igtl://HOST:PORT/DEVICE``, the calibration's input source.
        sha256: SHA-256 (hex) of the poses JSON (as ``save_to`` holds it).
    """

    matrices: npt.NDArray[np.float64]
    source: str
    sha256: str


def capture_tool_poses(address: str, device: str, seconds: float,
                       save_to: str | Path | None = None) -> CapturedPoses:
    """Capture the valid poses of ``device`` from the OpenIGTLink server at ``address``
    for ``seconds`` (:func:`trackers.capture.capture_poses` over :data:`POSE_SOURCE`).

    Args:
        address: ``HOST:PORT`` (an IPv6 host in brackets).
        device: TRANSFORM device name, e.g. ``StylusToTracker``.
        seconds: capture duration, s (> 0).
        save_to: also write the captured poses as JSON ``{"poses": [...]}`` here.

    Raises:
        WorkflowError: ``address`` not HOST:PORT, ``seconds`` not > 0 (the messages name
            ``--from`` and ``--seconds``), no valid pose received, ``save_to`` not
            writable.
    """
    host, sep, port_s = str(address).rpartition(":")
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise WorkflowError(f"--from must be HOST:PORT, got {address!r}")
    if not seconds > 0:
        raise WorkflowError(f"--seconds must be > 0, got {seconds}")
    result = capture_poses(
        POSE_SOURCE(host.strip("[]"), int(port_s), device, float(seconds)),
        device,
        duration_s=float(seconds),
    )
    if not result.poses:
        raise WorkflowError(
            f"no valid pose of {device} received from {address} in {seconds} s "
            f"({result.n_seen} seen, {result.n_invalid} invalid)"
        )
    raw = json.dumps({"poses": result.matrices.tolist()}).encode() + b"\n"
    if save_to:
        try:
            with open(save_to, "wb") as fh:
                fh.write(raw)
        except OSError as e:
            raise WorkflowError(f"{save_to}: cannot write: {e.strerror or e}") from None
    return CapturedPoses(result.matrices, f"igtl://{address}/{device}",
                         hashlib.sha256(raw).hexdigest())
