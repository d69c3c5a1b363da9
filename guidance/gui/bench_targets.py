"""The live view's drawing as the render benchmark's targets (``guidance bench --stage
render``): the renderer on an offscreen canvas, the stale picture, the whole window."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

__all__ = ["GuiRenderTargets"]


class GuiRenderTargets:
    """The GUI's drawing for :func:`guidance.bench.render.run_render` (its
    ``RenderTargets``: the bench package is below the GUI and does not import it).

    Args:
        plan: the plan drawn on every frame.
        names: label value -> structure name, for the legend.
        canvas_wh: (width, height) of the offscreen canvas, pixels.
    """

    def __init__(self, plan: Any, names: dict[int, str], canvas_wh: tuple[int, int]) -> None:
        from PyQt5.QtGui import QImage

        from guidance.gui.app import ensure_app
        from guidance.gui.canvas import LiveRenderer
        from guidance.gui.live_model import build_view_model

        self.platform = os.environ.get("QT_QPA_PLATFORM", "")
        self.app = ensure_app(headless=self.platform == "offscreen")
        self.renderer = LiveRenderer()
        self.renderer.plan = plan
        self.canvas = QImage(*canvas_wh, QImage.Format_RGB32)
        self.names = names
        self.model = build_view_model
        self.view: Any = None
        self.paints0 = 0

    def render(self, r: Any) -> None:
        model = self.model(r, r, r.received_ns, 1e9, (), 15.0)
        self.renderer.render(self.canvas, r, model, self.names)

    def render_stale(self, r: Any) -> None:
        model = self.model(None, r, r.received_ns + 3_000_000_000, 0.5, (), math.nan)
        self.renderer.render(self.canvas, r, model, self.names)

    def save_picture(self, path: Path) -> None:
        self.canvas.save(str(path))

    def open_view(self, feed: Any) -> None:
        from guidance.gui.live_view import LiveView

        self.view = LiveView(feed, poll_ms=1000)
        self.view.timer.stop()
        self.view.resize(1600, 1000)
        self.view.show()
        for _ in range(5):
            self.app.processEvents()
        self.paints0 = self.view.canvas.paint_count

    def repaint_view(self) -> None:
        self.view.poll()
        self.view.canvas.repaint()

    def close_view(self) -> int:
        paints = int(self.view.canvas.paint_count - self.paints0)
        self.view.close()
        return paints
