"""The live window around a :class:`~guidance.session.LiveSession`: used by
``guidance run --gui`` and ``guidance demo --gui`` (and their ``--screenshot FILE``)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from PyQt5.QtCore import QTimer

from guidance.gui.app import MainWindow, ensure_app, grab_to_file, run_until
from guidance.gui.feed import LiveFeed, RecordControl
from guidance.gui.live_view import LiveView

if TYPE_CHECKING:
    from guidance.session import LiveSession

__all__ = ["run_live_gui"]

log = logging.getLogger(__name__)


def _connection_text(session: LiveSession) -> str:
    if session.server is not None:
        n = len(session.server.connections())
        return (f"port {session.server.port}: {n} client{'s' if n != 1 else ''} connected"
                if n else f"port {session.server.port}: waiting for a client")
    c = session.client
    assert c is not None  # a session is a server or a client
    where = f"{c.host}:{c.port}"
    return f"connected to {where}" if c.connected else f"connecting to {where} ..."


def run_live_gui(
    session: LiveSession,
    *,
    seconds: float | None = None,
    screenshot: Path | None = None,
    finished: threading.Event | None = None,
    sound: bool = False,
    out_dir: Path | None = None,
) -> str | None:
    """Show the live view of a started session until the window closes.

    Args:
        session: a started :class:`~guidance.session.LiveSession`.
        seconds: close after this long (``None``: when the user closes the window).
        screenshot: draw offscreen and save this PNG when ``finished`` is set (without
            ``finished``: after ``seconds``, default 5 s), then close.
        finished: set by the caller when its input ends (the demo's simulator).
        sound: beep on DANGER.
        out_dir: where recordings and screenshots (key S) go.

    Returns:
        The screenshot path written, or ``None``.

    Raises:
        guidance.gui.app.GuiUnavailable: no display and no ``screenshot``.
        OSError: the screenshot cannot be written.
    """
    app = ensure_app(headless=screenshot is not None)
    out = out_dir or Path(".")
    record = RecordControl(session.raw_listeners, out, session.recorder)
    feed = LiveFeed(session.pipeline, session.slots, lambda: _connection_text(session), record)
    view = LiveView(feed, sound=sound, screenshot_dir=out)
    win = MainWindow([("Live", view)])
    win.show()
    written: list[str] = []

    def grab() -> None:
        assert screenshot is not None
        view.poll()
        view.canvas.repaint()
        grab_to_file(win, screenshot)
        written.append(str(screenshot))

    def done() -> bool:
        if finished is not None and finished.is_set():
            grab()
            return True
        return False

    try:
        if screenshot is not None and finished is None:

            def grab_and_quit() -> None:
                grab()
                app.quit()

            QTimer.singleShot(int((seconds or 5.0) * 1000), grab_and_quit)
            app.exec_()
        elif screenshot is not None:
            run_until(app, None, done)
        else:
            run_until(app, seconds)
    finally:
        view.stop()
        record.close()
        win.close()
    return written[0] if written else None
