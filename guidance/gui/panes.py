"""A plane of the CT on screen, with LPS overlays and clicks mapped back to LPS mm."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
from PyQt5.QtCore import QPointF, QRectF, Qt, pyqtSignal
from PyQt5.QtGui import QColor, QImage, QMouseEvent, QPainter, QPaintEvent, QPen
from PyQt5.QtWidgets import QHBoxLayout, QLabel, QLayout, QSizePolicy, QVBoxLayout, QWidget

from guidance.gui import theme
from guidance.gui.planes import PlaneSpec

__all__ = ["Overlay", "PlanePane", "attach_side_panel"]

F64 = npt.NDArray[np.float64]

#: (points (N, 3) LPS mm, colour, label): a polyline (N >= 2) or a marker (N == 1).
Overlay = tuple[F64, QColor, str]


class PlanePane(QWidget):
    """Shows one :class:`~guidance.gui.planes.PlaneSpec` rendering.

    Signals:
        clicked(object, int): LPS mm (3,) of the clicked point, and the mouse button.
    """

    clicked = pyqtSignal(object, int)

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self.spec: PlaneSpec | None = None
        self.rgb: np.ndarray | None = None
        self.overlays: list[Overlay] = []
        self.setMinimumSize(240, 240)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setCursor(Qt.CursorShape.CrossCursor)

    def set_image(self, spec: PlaneSpec, rgb: np.ndarray, overlays: list[Overlay]) -> None:
        """Show ``rgb`` (size, size, 3) uint8 of ``spec`` with ``overlays``."""
        self.spec, self.rgb, self.overlays = spec, np.ascontiguousarray(rgb), overlays
        self.update()

    def image_rect(self) -> QRectF:
        """Where the image is drawn (square, centred)."""
        s = min(self.width(), self.height() - 30)
        return QRectF((self.width() - s) / 2, 30 + (self.height() - 30 - s) / 2, s, s)

    def to_widget(self, points_lps: F64) -> tuple[F64, F64]:
        """(N, 3) LPS mm -> ((N, 2) widget coordinates, (N,) distance from the plane)."""
        assert self.spec is not None
        px, off = self.spec.to_px(points_lps)
        r = self.image_rect()
        k = r.width() / self.spec.size_px
        return np.stack([r.x() + (px[:, 0] + 0.5) * k, r.y() + (px[:, 1] + 0.5) * k], 1), off

    def paintEvent(self, event: QPaintEvent | None) -> None:  # noqa: N802 (Qt name)
        p = QPainter(self)
        p.fillRect(self.rect(), theme.BACKGROUND)
        p.setPen(theme.TEXT)
        p.setFont(theme.font(18, bold=True))
        p.drawText(QRectF(6, 2, self.width() - 12, 26),
                   int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), self.title)
        if self.rgb is None or self.spec is None:
            p.end()
            return
        h, w = self.rgb.shape[:2]
        img = QImage(self.rgb.data, w, h, w * 3, QImage.Format.Format_RGB888)  # type: ignore[call-overload]
        r = self.image_rect()
        p.drawImage(r, img)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.setClipRect(r)
        p.setFont(theme.font(15, bold=True))
        for pts, colour, label in self.overlays:
            xy, off = self.to_widget(pts)
            near = np.abs(off) < 3.0 * self.spec.pixel_mm + 1.0
            pen = QPen(colour, 3)
            if len(pts) >= 2:
                pen.setStyle(Qt.PenStyle.SolidLine if near.all() else Qt.PenStyle.DashLine)
                p.setPen(pen)
                for a, b in itertools.pairwise(xy):
                    p.drawLine(QPointF(*a), QPointF(*b))
            else:
                p.setPen(pen)
                c = QPointF(*xy[0])
                rad = 9.0 if near[0] else 5.0
                p.drawEllipse(c, rad, rad)
                p.drawLine(c - QPointF(14, 0), c + QPointF(14, 0))
                p.drawLine(c - QPointF(0, 14), c + QPointF(0, 14))
            if label:
                p.drawText(QPointF(*xy[-1]) + QPointF(12, -10), label)
        p.end()

    def mousePressEvent(self, event: QMouseEvent | None) -> None:  # noqa: N802 (Qt name)
        if event is None or self.spec is None:
            return
        r = self.image_rect()
        pos = event.pos()
        if not r.contains(QPointF(pos)):
            return
        k = self.spec.size_px / r.width()
        col = (pos.x() - r.x()) * k - 0.5
        row = (pos.y() - r.y()) * k - 0.5
        self.clicked.emit(self.spec.to_lps(col, row), int(event.button()))


def attach_side_panel(owner: QWidget, panes: QLayout, side: QVBoxLayout, message: str) -> QLabel:
    """Lay ``owner`` out as its image panes (stretching) beside a fixed 520 px side panel
    that ends in a word-wrapped message line, which is returned (planning and
    verification views)."""
    label = QLabel(message)
    label.setWordWrap(True)
    label.setFont(theme.font(16))
    label.setMinimumHeight(44)
    side.addWidget(label)
    panel = QWidget()
    panel.setLayout(side)
    panel.setFixedWidth(520)
    h = QHBoxLayout(owner)
    h.addLayout(panes, 1)
    h.addWidget(panel)
    return label
