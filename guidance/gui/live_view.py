"""The live view: picture, large numbers, stream states, record button, shortcuts.

The GUI thread polls the pipeline's latest-value slot on a ``QTimer`` (every
``poll_ms``); a new result (or the clock moving past the stale threshold) schedules one
repaint (``QWidget.update`` coalesces). Nothing is queued towards the GUI, so a GUI that
freezes only means fewer frames shown: the pipeline keeps going and counts its drops.
No modal dialog is ever opened here: messages go to the message line.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from PyQt5.QtCore import Qt, QTimer
from PyQt5.QtGui import QColor, QKeySequence, QMouseEvent, QPaintEvent
from PyQt5.QtWidgets import (
    QApplication,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QShortcut,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from guidance.gui import theme
from guidance.gui.canvas import LiveRenderer
from guidance.gui.feed import FeedLike
from guidance.gui.live_model import (
    LiveViewModel,
    Metric,
    build_view_model,
    label_names_of,
)
from guidance.io.recording import RecordingError
from guidance.pipeline.frame import FrameResult
from guidance.records import WarningLevel

__all__ = ["SHORTCUTS", "LiveCanvas", "LiveView"]

log = logging.getLogger(__name__)

#: Keyboard shortcuts of the live view (key, action), shown with H.
SHORTCUTS: tuple[tuple[str, str], ...] = (
    ("R", "start / stop recording"),
    ("L", "segmentation outlines on / off"),
    ("Up / Down", "window level (CT, fluoro) or gain (ultrasound)"),
    ("Left / Right", "window narrower / wider"),
    ("A", "automatic window again"),
    ("Click", "set the target at that point of the frame (ultrasound)"),
    ("M", "warning sound on / off"),
    ("S", "save a screenshot"),
    ("F11", "full screen"),
    ("H", "show these shortcuts"),
    ("Ctrl+Q", "quit"),
)

_RIGHT_MID = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter

#: Text colours of numbers per level (brighter than the banner fills: read on dark grey).
_LEVEL_TEXT = {WarningLevel.NONE: theme.TEXT, WarningLevel.INFO: QColor(110, 170, 255),
               WarningLevel.CAUTION: QColor(255, 170, 30),
               WarningLevel.DANGER: QColor(255, 60, 60)}


class LiveCanvas(QWidget):
    """The picture (drawn by :class:`~guidance.gui.canvas.LiveRenderer`)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.renderer = LiveRenderer()
        self.shown: FrameResult | None = None
        self.model: LiveViewModel | None = None
        self.names: dict[int, str] = {}
        self.paint_count = 0
        #: called with the frame pixel (column, row) of a left click on the picture
        self.on_click: Callable[[float, float], None] | None = None
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.setMinimumSize(320, 320)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent, True)

    def paintEvent(self, event: QPaintEvent | None) -> None:  # noqa: N802 (Qt name)
        if self.model is None:
            return
        self.paint_count += 1
        self.renderer.render(self, self.shown, self.model, self.names)

    def mousePressEvent(self, event: QMouseEvent | None) -> None:  # noqa: N802 (Qt name)
        if event is None or event.button() != Qt.MouseButton.LeftButton:
            return
        ij = self.renderer.to_frame(event.pos().x(), event.pos().y())
        if ij is not None and self.on_click is not None:
            self.on_click(*ij)


def _fmt(m: Metric) -> str:
    return m.text()


class LiveView(QWidget):
    """Live guidance: the canvas on the left, the numbers and controls on the right.

    Args:
        feed: what to show (the pipeline's latest-value slot, streams, recorder).
        poll_ms: how often the GUI thread looks at the slot, ms.
        sound: beep when a DANGER warning appears.
        screenshot_dir: where ``S`` saves screenshots.
    """

    def __init__(self, feed: FeedLike, poll_ms: int = 30, sound: bool = False,
                 screenshot_dir: Path | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.feed = feed
        self.sound = sound
        self.screenshot_dir = screenshot_dir or Path(".")
        self.canvas = LiveCanvas(self)
        self.canvas.on_click = self.set_target
        self.last_result: FrameResult | None = None
        self.shown: FrameResult | None = None
        self.model: LiveViewModel | None = None
        self.results_taken = 0  # distinct results taken from the slot
        self._times: collections.deque[float] = collections.deque(maxlen=30)
        self._last_level = WarningLevel.NONE
        self._last_stale: bool | None = None
        self._last_age_tick = -1
        self._build_panel()
        self._shortcuts()
        self.timer = QTimer(self)
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self.poll)
        self.timer.start(int(poll_ms))
        self.poll()

    # -- layout ----------------------------------------------------------------------

    def _build_panel(self) -> None:
        panel = QWidget(self)
        panel.setFixedWidth(420)
        panel.setAutoFillBackground(True)
        v = QVBoxLayout(panel)
        v.setContentsMargins(16, 12, 16, 12)
        v.setSpacing(6)
        cap = QLabel("TIP TO TARGET")
        cap.setFont(theme.font(18, bold=True))
        v.addWidget(cap)
        self.big = QLabel("-")
        self.big.setFont(theme.font(80, bold=True))
        self.big.setAlignment(_RIGHT_MID)  # type: ignore[arg-type]
        v.addWidget(self.big)
        self.grid = QGridLayout()
        self.grid.setHorizontalSpacing(10)
        self._rows: list[tuple[QLabel, QLabel, QLabel]] = []
        v.addLayout(self.grid)
        v.addSpacing(8)
        self.more = QLabel("")
        self.more.setWordWrap(True)
        self.more.setFont(theme.font(18))
        v.addWidget(self.more)
        v.addStretch(1)
        self.streams = QLabel("")
        self.streams.setFont(theme.font(17))
        self.streams.setTextFormat(Qt.TextFormat.RichText)
        self.streams.setWordWrap(True)
        v.addWidget(self.streams)
        self.record = QPushButton("● Record (R)")
        self.record.setCheckable(True)
        self.record.setFont(theme.font(22, bold=True))
        self.record.setMinimumHeight(56)
        self.record.setEnabled(self.feed.record is not None)
        if self.feed.record is not None and self.feed.record.recording:
            self.record.setChecked(True)
        self.record.clicked.connect(self.toggle_record)
        v.addWidget(self.record)
        self.message = QLabel("H: shortcuts")
        self.message.setWordWrap(True)
        self.message.setFont(theme.font(16))
        self.message.setMinimumHeight(48)
        v.addWidget(self.message)
        h = QHBoxLayout(self)
        h.setContentsMargins(0, 0, 0, 0)
        h.setSpacing(0)
        h.addWidget(self.canvas, 1)
        h.addWidget(panel)

    def _shortcuts(self) -> None:
        keys: dict[str, Callable[[], None]] = {
            "R": self.toggle_record,
            "L": self._toggle_labels,
            "Up": lambda: self._window(0.0, -0.05, 1.1),
            "Down": lambda: self._window(0.0, 0.05, 1 / 1.1),
            "Left": lambda: self._window(1 / 1.15, 0.0, 1.0),
            "Right": lambda: self._window(1.15, 0.0, 1.0),
            "A": self._auto_window,
            "M": self._toggle_sound,
            "S": self._screenshot_key,
            "F11": self._fullscreen,
            "H": self._help,
            "F1": self._help,
            "Ctrl+Q": self._quit,
        }
        for key, fn in keys.items():
            sc = QShortcut(QKeySequence(key), self)
            sc.setContext(Qt.ShortcutContext.WindowShortcut)
            sc.activated.connect(fn)

    # -- polling ---------------------------------------------------------------------

    def poll(self) -> None:
        """Take the newest result (if any) and refresh what changed."""
        now_ns = time.monotonic_ns()
        result = self.feed.latest()
        new = result is not self.last_result
        if new:
            self.last_result = result
            self.results_taken += 1
        picture = self.feed.latest_picture()
        if picture is not None and picture is not self.shown:
            self.shown = picture
            self._times.append(now_ns * 1e-9)
            new = True
        fps = math.nan
        if len(self._times) >= 2 and now_ns * 1e-9 - self._times[-1] < 2.0:
            fps = (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-6)
        model = build_view_model(result, self.shown, now_ns, self.feed.stale_after_s,
                                 self.feed.streams(now_ns), fps)
        self.model = model
        # Repaint on a new frame, on a change of state, and 10x/s for the age display.
        age_tick = int(now_ns // 100_000_000)
        if new or model.stale != self._last_stale or age_tick != self._last_age_tick:
            self._last_stale = model.stale
            self._last_age_tick = age_tick
            self.canvas.shown = self.shown
            self.canvas.model = model
            self.canvas.names = label_names_of(self.shown)
            self.canvas.renderer.plan = self.feed.plan()
            structures = getattr(self.feed, "structures", None)  # a CT scan's outlines
            self.canvas.renderer.structures = structures() if callable(structures) else None
            self.canvas.renderer.image_target_px = self.feed.image_target()
            self.canvas.update()
            self._update_panel(model)
        if model.level >= WarningLevel.DANGER and self._last_level < WarningLevel.DANGER \
                and self.sound:
            QApplication.beep()
        self._last_level = model.level

    def _update_panel(self, model: LiveViewModel) -> None:
        metrics = list(model.metrics)
        first = metrics[0] if metrics else Metric("tip to target", math.nan, "mm")
        self.big.setText(f"{_fmt(first)} mm" if math.isfinite(first.value) else "-  mm")
        colour = theme.STALE_COLOUR if model.stale else _LEVEL_TEXT[first.level]
        self.big.setStyleSheet(f"color: {colour.name()}")
        rows = metrics[1:12]
        while len(self._rows) < len(rows):
            k = len(self._rows)
            labs = (QLabel(), QLabel(), QLabel())
            labs[0].setFont(theme.font(19))
            labs[1].setFont(theme.font(28, bold=True))
            labs[1].setAlignment(_RIGHT_MID)  # type: ignore[arg-type]
            labs[2].setFont(theme.font(18))
            for c, lab in enumerate(labs):
                self.grid.addWidget(lab, k, c)
            self._rows.append(labs)
        for k, labs in enumerate(self._rows):
            if k < len(rows):
                m = rows[k]
                colour = theme.STALE_COLOUR if model.stale else _LEVEL_TEXT[m.level]
                labs[0].setText(m.label.replace("_", " ").replace(" (derived)", " (der.)"))
                labs[1].setText(_fmt(m))
                labs[1].setStyleSheet(f"color: {colour.name()}")
                labs[2].setText(m.unit)
            for lab in labs:
                lab.setVisible(k < len(rows))
        self.more.setText("\n".join(model.more[:4]))
        lines = [f"<b>{self.feed.connection()}</b>"]
        for s in model.streams[:6]:
            dot = theme.STREAM_COLOURS.get(s.state, theme.TEXT).name()
            lines.append(f"<span style='color:{dot}'>●</span> {s.name} {s.state} "
                         f"{s.age_s:.1f} s ({s.received} rx, {s.dropped} dropped)")
        lines.append(f"pipeline dropped {self.feed.frames_dropped()} frames (newest wins)")
        self.streams.setText("<br>".join(lines))

    # -- actions ---------------------------------------------------------------------

    def say(self, text: str) -> None:
        """Show a one-line message (instead of a dialog) and log it."""
        self.message.setText(text)
        log.info("%s", text)

    def set_target(self, u: float, v: float) -> None:
        """The target at frame pixel (column ``u``, row ``v``): a click on the picture.
        Ultrasound only: elsewhere the target is the plan's, in the patient."""
        shown = self.shown
        if shown is None or shown.image is None:
            self.say("no frame yet: nothing to click on")
            return
        if shown.modality != "us":
            self.say("a target by click is for ultrasound frames; on this frame it is the "
                     "plan's")
            return
        try:
            self.feed.set_image_target(u, v)
        except ValueError as e:
            self.say(f"target not set: {e}")
            return
        self.canvas.renderer.image_target_px = (u, v)
        self.say(f"target set at pixel ({u:.0f}, {v:.0f}): tip to target in the image plane")
        self.canvas.update()

    def toggle_record(self) -> None:
        rec = self.feed.record
        if rec is None:
            self.say("recording is not available for this source")
            self.record.setChecked(False)
            return
        try:
            self.say(rec.toggle())
        except (RecordingError, OSError) as e:
            self.say(f"recording failed: {e}")
        self.record.setChecked(rec.recording)
        self.record.setText("■ Stop recording (R)" if rec.recording else "● Record (R)")

    def _toggle_labels(self) -> None:
        r = self.canvas.renderer
        r.show_labels = not r.show_labels
        self.say(f"segmentation outlines {'on' if r.show_labels else 'off'}")
        self.canvas.update()

    def _window(self, width_factor: float, shift: float, gain_factor: float) -> None:
        mapper = self.canvas.renderer.mapper
        img = self.shown.image if self.shown is not None else None
        if img is not None and img.voxels.dtype.itemsize == 1:
            mapper.set_gain(mapper.gain * gain_factor)
            self.say(f"gain {mapper.gain:.2f}")
        elif mapper.window is not None:
            mapper.window = mapper.window.scaled(width_factor, shift)
            self.say(f"window centre {mapper.window.centre:.0f}, width {mapper.window.width:.0f}")
        self.canvas.update()

    def _auto_window(self) -> None:
        self.canvas.renderer.mapper.window = None
        self.canvas.renderer.mapper.gain = 1.0
        self.say("automatic window")
        self.canvas.update()

    def _toggle_sound(self) -> None:
        self.sound = not self.sound
        self.say(f"warning sound {'on' if self.sound else 'off'}")

    def _fullscreen(self) -> None:
        w = self.window()
        if w is None:
            return
        if w.isFullScreen():
            w.showNormal()
        else:
            w.showFullScreen()

    def _help(self) -> None:
        self.say("  ".join(f"{k}: {a}" for k, a in SHORTCUTS))

    def _quit(self) -> None:
        top = self.window()
        if top is not None:
            top.close()

    def _screenshot_key(self) -> None:
        self.save_screenshot()

    def save_screenshot(self, path: Path | None = None) -> Path | None:
        """Save the whole window as PNG; returns the path (``None`` on failure, said on
        the message line)."""
        if path is None:
            path = self.screenshot_dir / time.strftime("guidance-%Y%m%d-%H%M%S.png")
        top = self.window() or self
        ok = top.grab().save(str(path))
        if not ok:
            self.say(f"cannot write screenshot {path}")
            return None
        self.say(f"screenshot saved: {path}")
        return path

    def stop(self) -> None:
        """Stop polling (the feed's owner stops the pipeline)."""
        self.timer.stop()
