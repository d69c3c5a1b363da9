"""Application set-up: the QApplication (offscreen when headless), the main window with
its tabs, screenshots, and running until closed or for a fixed time."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from PyQt5.QtCore import QMessageLogContext, QTimer, QtMsgType, qInstallMessageHandler
from PyQt5.QtGui import QCloseEvent, QKeySequence
from PyQt5.QtWidgets import QApplication, QMainWindow, QShortcut, QTabWidget, QWidget

from guidance.gui import theme

__all__ = ["TITLE", "GuiUnavailable", "MainWindow", "ensure_app", "grab_to_file", "run_until"]

_KEEP: list[QApplication] = []

TITLE = "guidance - research software, not a medical device"


class GuiUnavailable(RuntimeError):
    """No display to open a window on (and no offscreen platform requested)."""


def _quiet_offscreen(mode: QtMsgType, context: QMessageLogContext, message: str | None) -> None:
    # The offscreen platform warns on every window resize; everything else goes through.
    if message and "propagateSizeHints" not in message:
        sys.stderr.write(message + "\n")


def ensure_app(headless: bool = False) -> QApplication:
    """The QApplication, created once with the dark theme.

    Args:
        headless: draw offscreen (screenshots, tests, CI); sets ``QT_QPA_PLATFORM``.

    Raises:
        GuiUnavailable: not headless and no ``DISPLAY``/``WAYLAND_DISPLAY`` (Qt would
            abort the process instead of raising).
    """
    app = QApplication.instance()
    if isinstance(app, QApplication):
        return app
    if headless:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        qInstallMessageHandler(_quiet_offscreen)
    elif (not os.environ.get("QT_QPA_PLATFORM") and sys.platform.startswith("linux")
          and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")):
        raise GuiUnavailable("no display (DISPLAY is not set): run on the room's screen, "
                             "or add --screenshot FILE to draw offscreen")
    app = QApplication(sys.argv[:1])
    app.setApplicationName("guidance")
    theme.apply_dark_theme(app)
    _KEEP.append(app)  # a QApplication without a Python reference is destroyed
    return app


def grab_to_file(widget: QWidget, path: Path) -> None:
    """Save a PNG of ``widget``'s window.

    Raises:
        OSError: the file cannot be written (the message names it).
    """
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    top = widget.window() or widget
    if not top.grab().save(str(path)):
        raise OSError(f"cannot write screenshot {path}")


class MainWindow(QMainWindow):
    """The window: one tab per view (Live, Planning, Verification), Ctrl+1.. to switch.

    Args:
        tabs: (title, widget) in order.
        on_close: called once when the window closes (stop the pipeline there).
    """

    def __init__(self, tabs: list[tuple[str, QWidget]],
                 on_close: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.setWindowTitle(TITLE)
        self.tabs = QTabWidget(self)
        self.tabs.setFont(theme.font(18, bold=True))
        for title, w in tabs:
            self.tabs.addTab(w, title)
        self.setCentralWidget(self.tabs)
        self._tab_bar(len(tabs) > 1)
        for k in range(9):
            sc = QShortcut(QKeySequence(f"Ctrl+{k + 1}"), self)
            sc.activated.connect(lambda k=k: self.tabs.setCurrentIndex(k))
        self._on_close = on_close
        self.resize(1600, 1000)

    def _tab_bar(self, visible: bool) -> None:
        bar = self.tabs.tabBar()
        if bar is not None:
            bar.setVisible(visible)

    def add_tab(self, title: str, widget: QWidget) -> None:
        """Add a view (e.g. verification, once the control scan is there)."""
        self.tabs.addTab(widget, title)
        self._tab_bar(True)

    def closeEvent(self, event: QCloseEvent | None) -> None:  # noqa: N802 (Qt name)
        if self._on_close is not None:
            fn, self._on_close = self._on_close, None
            fn()
        super().closeEvent(event)


def run_until(app: QApplication, seconds: float | None, done: Callable[[], bool] | None = None,
              poll_ms: int = 50) -> None:
    """Run the event loop until the last window closes, ``seconds`` pass, or ``done()``
    becomes true (checked every ``poll_ms``)."""
    if seconds is not None:
        QTimer.singleShot(int(seconds * 1000), app.quit)
    if done is not None:
        t = QTimer(app)
        t.timeout.connect(lambda: app.quit() if done() else None)
        t.start(poll_ms)
    app.exec_()
