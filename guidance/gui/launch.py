"""Starting the Qt application for a command, and ending it with a screenshot or when
its window closes. Refusals are :class:`~guidance.session.SessionError` (one line)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from guidance.session import SessionError

__all__ = ["show_or_screenshot", "start_gui"]


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
