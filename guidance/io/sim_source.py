"""Stream a simulated scanner over OpenIGTLink at a fixed frame rate.

Each tick sends the frame as an IMAGE (device ``Image_Reference``, the PLUS naming for
an image in the Reference frame, with IGTLv3 metadata ``Modality``) and every tool pose
as a TRANSFORM (``NeedleTipToReference`` ...), all with the same sender timestamp. The
simulator's Reference is the planning CT's frame; ``guidance simulate --tracked``
(:mod:`guidance.sim.room`) is the room, with a marker and a registration. Timing uses
deadlines on the monotonic clock waited with ``Event.wait`` (interruptible, no drift
accumulation).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pyigtl
from pyigtl.messages import MessageBase

from guidance.io.messages import image_message_from_volume
from guidance.records import Modality

#: DICOM modality term sent as IGTLv3 metadata ``Modality`` per simulated modality.
MODALITY_TERMS = {m.value: m.dicom_term for m in Modality}

__all__ = ["IMAGE_DEVICE", "stream_scanner"]

log = logging.getLogger(__name__)

IMAGE_DEVICE = "Image_Reference"


def stream_scanner(
    scanner: Any,
    send: Callable[[MessageBase], object],
    fps: float,
    seconds: float | None,
    stop: threading.Event,
    on_frame: Callable[[Any], None] | None = None,
    coordinate_system: str = "lps",
    start_s: float = 0.0,
) -> int:
    """Send frames until ``seconds`` pass (``None``: until ``stop`` is set).

    Args:
        scanner: object with ``frame(index, t_s) -> SimFrame`` (``guidance.sim``).
        send: the transport's send (called with each message).
        fps: frame rate, > 0.
        seconds: duration, or ``None``.
        stop: set it to stop early.
        on_frame: called with each SimFrame after it is sent (ground truth consumers).
        coordinate_system: of the IMAGE matrix, ``lps`` or ``ras``.
        start_s: simulation time of the first frame (skip the approach to the skin).

    Returns:
        Number of frames sent.
    """
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    period = 1.0 / fps
    t0 = time.monotonic()
    n = 0
    while not stop.is_set():
        t_sim = n * period
        if seconds is not None and t_sim >= seconds:
            break
        frame = scanner.frame(n, start_s + t_sim)
        ts = time.time()
        msg = image_message_from_volume(frame.image, IMAGE_DEVICE, ts, coordinate_system)
        modality = MODALITY_TERMS.get(getattr(scanner, "modality", ""))
        if modality:  # IGTLv3 metadata: what the frame is, not guessed from its pixels
            msg.header_version = 2
            msg.metadata = {"Modality": modality}
        send(msg)
        for name, m in frame.poses.items():
            send(pyigtl.TransformMessage(m, timestamp=ts, device_name=name))
        if on_frame is not None:
            on_frame(frame)
        n += 1
        delay = t0 + n * period - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        elif delay < -period:
            log.debug("simulator is %.0f ms behind its frame clock", -delay * 1e3)
    return n
