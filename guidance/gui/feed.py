"""What the live view reads, and how it starts and stops a recording (no Qt).

The view polls :meth:`LiveFeed.latest` -- the pipeline's latest-value slot -- on a
timer in the GUI thread; nothing is pushed to it, so a GUI that freezes never makes a
queue grow: the pipeline keeps overwriting one slot and counts the frames it drops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from guidance.gui.live_model import StreamStatus, stream_state
from guidance.io.recording import Recorder, RecordingError
from guidance.io.slots import LatestSlots
from guidance.navigation.navigator import POSE_TYPES
from guidance.pipeline.frame import FrameResult
from guidance.pipeline.loop import Pipeline

__all__ = ["FeedLike", "LiveFeed", "RecordControl"]

log = logging.getLogger(__name__)


class RecordControl:
    """Starts and stops recording every received message (the record button).

    Args:
        raw_listeners: the transport's raw-message listener list (``IgtlServer`` or
            ``IgtlClient.raw_listeners``); the recorder is added to and removed from it.
        out_dir: where new recordings go (``recording-YYYYmmdd-HHMMSS.igtlrec``).
        recorder: a recorder already running (``--record FILE``), or ``None``.

    Thread-safety: call from one thread (the GUI thread).
    """

    def __init__(self, raw_listeners: list[Any], out_dir: Path,
                 recorder: Recorder | None = None) -> None:
        self._listeners = raw_listeners
        self.out_dir = Path(out_dir)
        self.recorder = recorder
        self._external = recorder  # closed by its owner (LiveSession), not here
        self.finished: list[Recorder] = []

    @property
    def recording(self) -> bool:
        """True while messages are being recorded."""
        return self.recorder is not None

    def toggle(self) -> str:
        """Start or stop; returns a one-line message for the view's message line.

        Raises:
            RecordingError: the file cannot be created (the message names it).
        """
        if self.recorder is not None:
            rec = self.recorder
            if rec.on_raw in self._listeners:
                self._listeners.remove(rec.on_raw)
            if rec is not self._external:
                rec.close()
            self.recorder = None
            self.finished.append(rec)
            return f"recording stopped: {rec.written} messages in {rec.path}"
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RecordingError(f"cannot create recording folder {self.out_dir}: {e}") from e
        path = self.out_dir / time.strftime("recording-%Y%m%d-%H%M%S.igtlrec")
        rec = Recorder(path)
        self._listeners.append(rec.on_raw)
        self.recorder = rec
        return f"recording to {path}"

    def close(self) -> None:
        """Stop a recording the button started (a ``--record`` recorder is left to
        its owner)."""
        if self.recorder is not None and self.recorder is not self._external:
            self.toggle()


class FeedLike(Protocol):
    """What the live view needs from its source (:class:`LiveFeed` or a test double)."""

    record: RecordControl | None

    @property
    def stale_after_s(self) -> float: ...

    def latest(self) -> FrameResult | None: ...

    def latest_picture(self) -> FrameResult | None: ...

    def plan(self) -> tuple[Any, Any] | None: ...

    def image_target(self) -> tuple[float, float] | None: ...

    def set_image_target(self, u: float, v: float) -> None: ...

    def frames_dropped(self) -> int: ...

    def connection(self) -> str: ...

    def streams(self, now_ns: int | None = None) -> tuple[StreamStatus, ...]: ...


class LiveFeed:
    """The pipeline as the live view sees it.

    Args:
        pipeline: the running pipeline (its ``latest()`` slot is polled).
        slots: the transport's slots (per-stream ages and counters).
        connection: ``() -> str`` describing the transport (``"1 client connected"``).
        record: the record button's control, or ``None`` (button disabled).
    """

    def __init__(self, pipeline: Pipeline, slots: LatestSlots | None = None,
                 connection: Callable[[], str] | None = None,
                 record: RecordControl | None = None) -> None:
        self.pipeline = pipeline
        self.slots = slots if slots is not None else pipeline.slots
        self._connection = connection
        self.record = record

    @property
    def stale_after_s(self) -> float:
        """``ingest.stale_after_s`` of the pipeline."""
        return float(self.pipeline.config.ingest.stale_after_s)

    def latest(self) -> FrameResult | None:
        """The newest result (never blocks for long: one lock)."""
        return self.pipeline.latest()

    def latest_picture(self) -> FrameResult | None:
        """The newest result with an image: a frame, or the planning CT resliced along
        the needle for navigation from poses alone (drawn at most 15 times a second,
        while every pose gives a result)."""
        return self.pipeline.latest_picture()

    def plan(self) -> tuple[Any, Any] | None:
        """(entry_lps, target_lps) of the loaded plan, LPS mm, or ``None``."""
        return self.pipeline.overlay.plan

    def structures(self) -> Any:
        """The plan's structures (planning CT LPS) for a CT scan's outlines, or ``None``."""
        check = self.pipeline.safety.check
        return check.structures if check is not None else None

    def image_target(self) -> tuple[float, float] | None:
        """The target given as a point of the frames (column, row, pixels), or ``None``."""
        return self.pipeline.image_target_px

    def set_image_target(self, u: float, v: float) -> None:
        """Set the target to the frame point (column ``u``, row ``v``, pixels): the
        pipeline measures the tip to it in the image plane (a click in the view)."""
        self.pipeline.set_image_target_px(u, v)

    def frames_dropped(self) -> int:
        """Frames the pipeline skipped to stay on the newest."""
        return self.pipeline.frames_dropped

    def connection(self) -> str:
        """One line about the transport."""
        return self._connection() if self._connection is not None else "in-process"

    def streams(self, now_ns: int | None = None) -> tuple[StreamStatus, ...]:
        """Per-device status, images first."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        counters = self.slots.counters()
        out = []
        for name in self.slots.device_names():
            it = self.slots.latest(name)
            if it is None:
                continue
            c = counters.get(name)
            age = (now - it.received_ns) * 1e-9
            thr = (self.pipeline.config.ingest.stale_after_s if it.message_type == "IMAGE"
                   else self.pipeline.config.navigation.pose_stale_after_s)
            # Every pose reaches the transform graph as it arrives (a slots listener):
            # a pose replaced in its slot before the loop woke is not lost.
            dropped = 0 if it.message_type in POSE_TYPES or c is None else c.dropped
            out.append(StreamStatus(name, it.message_type, age, c.received if c else 0,
                                    dropped, stream_state(age, thr)))
        out.sort(key=lambda s: (s.message_type != "IMAGE", s.name))
        return tuple(out)
