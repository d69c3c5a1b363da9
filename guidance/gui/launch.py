"""Starting the Qt application for a command, and ending it with a screenshot or when
its window closes; the live view of a session. Refusals are
:class:`~guidance.session.SessionError` (one line)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guidance.session import LiveSession, SessionError

__all__ = ["live_view", "show_or_screenshot", "show_verification", "start_gui"]


def start_gui(gui: bool, screenshot: Path | None, *, require_png: bool) -> Any:
    """Check ``--gui`` / ``--screenshot`` and, with ``gui``, create the Qt application
    before anything else starts (no screen fails fast; offscreen for screenshots).

    Args:
        gui: a window is asked for.
        screenshot: draw the window once into this PNG file and close it (None: run it).
        require_png: the screenshot file name must end in ``.png``.

    Returns:
        The ``QApplication`` with ``gui``, else None.

    Raises:
        SessionError: a screenshot without ``gui``, a screenshot name that is not
            ``.png`` (when required), or no screen for ``gui``.
    """
    if screenshot is not None and not gui:
        raise SessionError("--screenshot FILE needs --gui")
    if require_png and screenshot is not None and screenshot.suffix.lower() != ".png":
        raise SessionError(f"--screenshot {screenshot}: the file name must end in .png")
    if not gui:
        return None
    from guidance.gui.app import GuiUnavailable, ensure_app

    try:
        return ensure_app(headless=screenshot is not None)
    except GuiUnavailable as e:
        raise SessionError(str(e)) from e


def show_or_screenshot(app: Any, win: Any, screenshot: Path | None,
                       before_grab: Callable[[], object] | None = None) -> Path | None:
    """Run the shown window ``win`` until it is closed, or, with ``screenshot``, draw it
    once (after ``before_grab()``), write the PNG, close it and return its path.

    Raises:
        SessionError: the screenshot file cannot be written.
    """
    from guidance.gui.app import grab_to_file

    if screenshot is None:
        app.exec_()
        return None
    if before_grab is not None:
        before_grab()
    app.processEvents()
    try:
        grab_to_file(win, screenshot)
    except OSError as e:
        raise SessionError(str(e)) from e
    win.close()
    return screenshot


def live_view(session: LiveSession, *, seconds: float | None = None,
              screenshot: Path | None = None, finished: threading.Event | None = None,
              sound: bool = False, out_dir: Path | None = None,
              ctrl_c_closes: bool = False) -> str | None:
    """The live view of the started ``session`` on this (main) thread until its window
    closes (:func:`guidance.gui.live_app.run_live_gui`, the same arguments); with
    ``ctrl_c_closes``, Ctrl-C (SIGINT) closes it too.

    Returns:
        The screenshot's path (``screenshot``), else None.

    Raises:
        SessionError: no screen, or the screenshot cannot be written.
    """
    import signal

    from guidance.gui.app import GuiUnavailable
    from guidance.gui.live_app import run_live_gui

    previous = signal.signal(signal.SIGINT, lambda *_: _quit_app()) if ctrl_c_closes else None
    try:
        return run_live_gui(session, seconds=seconds, screenshot=screenshot, finished=finished,
                            sound=sound, out_dir=out_dir)
    except (GuiUnavailable, OSError) as e:
        raise SessionError(str(e)) from e
    finally:
        if ctrl_c_closes:
            signal.signal(signal.SIGINT, previous)


def _quit_app() -> None:
    from PyQt5.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None:
        app.quit()


def show_verification(ct: Any, plan: Any, result: Any, error: str, structures: Any, *,
                      ct_source: str, out: Path, screenshot: Path | None) -> Path | None:
    """The verification view of ``guidance verify --gui`` (the control CT, the plan, the
    result or the ``error`` that left none; its export writes the report of
    :func:`guidance.planning.report.write_verification_report` under ``out``) until it is
    closed, or, with ``screenshot``, drawn once into that PNG (returned)."""
    from guidance.gui.app import MainWindow, ensure_app
    from guidance.gui.verification_view import VerificationView
    from guidance.planning.report import write_verification_report

    app = ensure_app(headless=screenshot is not None)

    def export(folder: Path) -> dict[str, Path]:
        return write_verification_report(folder, ct, plan, result, ct_source=ct_source,
                                         structures=structures)

    view = VerificationView(ct, plan, result, error, structures, export, out)
    win = MainWindow([("Verification", view)])
    win.show()
    return show_or_screenshot(app, win, screenshot)
