"""Send a simulated CT-guided procedure's control slabs over OpenIGTLink.

Each control slab (:mod:`guidance.sim.ct_slab`) goes as one 3D IMAGE message (int16 HU,
``(K, J, I)``, LPS matrix: the scanner's frame), device :data:`CT_DEVICE`, with IGTLv3
metadata ``Modality: CT``. Scans are spaced by ``interval_s`` on the monotonic clock,
waited with ``Event.wait`` (interruptible).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt
import pyigtl
from pyigtl.messages import MessageBase

from guidance.geometry import ImageVolume
from guidance.io.messages import image_message_from_volume
from guidance.sim.ct_slab import SlabTruth

__all__ = ["CT_DEVICE", "motion_translation", "slab_message", "stream_control_scans"]

#: Device name of the control slabs (PLUS naming: the image in the Reference frame).
CT_DEVICE = "CT_Reference"


def slab_message(slab: ImageVolume, timestamp_s: float) -> pyigtl.ImageMessage:
    """One control slab as an IGTLv3 IMAGE (LPS matrix, metadata ``Modality: CT``)."""
    msg = image_message_from_volume(slab, CT_DEVICE, timestamp_s, "lps")
    msg.header_version = 2
    msg.metadata = {"Modality": "CT"}
    return msg


def motion_translation(mm: float) -> npt.NDArray[np.float64]:
    """(4, 4) planning-CT LPS -> scanner LPS: the patient moved ``mm`` toward +L."""
    m = np.eye(4)
    m[0, 3] = float(mm)
    return m


def stream_control_scans(
    scans: Iterable[tuple[ImageVolume, SlabTruth]],
    send: Callable[[MessageBase], object],
    interval_s: float,
    stop: object,
    on_scan: Callable[[int, ImageVolume, SlabTruth], None] | None = None,
) -> int:
    """Send each slab, ``interval_s`` apart (the first at once); returns how many were sent.

    Args:
        scans: (slab, truth) pairs, e.g. :func:`guidance.sim.ct_slab.control_scan_series`.
        send: the transport's send.
        interval_s: seconds between scans (>= 0).
        stop: a ``threading.Event``; set it to stop early.
        on_scan: called with (index, slab, truth) after each send.
    """
    if not interval_s >= 0:
        raise ValueError(f"interval_s must be >= 0, got {interval_s}")
    t0 = time.monotonic()
    n = 0
    for slab, truth in scans:
        if stop.is_set():  # type: ignore[attr-defined]
            break
        delay = t0 + n * interval_s - time.monotonic()
        if delay > 0 and stop.wait(delay):  # type: ignore[attr-defined]
            break
        send(slab_message(slab, time.time()))
        if on_scan is not None:
            on_scan(n, slab, truth)
        n += 1
    return n
