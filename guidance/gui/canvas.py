"""The live picture: frame, outlines, needle, plan, warning banner, STALE state.

:class:`LiveRenderer` draws one :class:`~guidance.pipeline.frame.FrameResult` with its
:class:`~guidance.gui.live_model.LiveViewModel` into any ``QPaintDevice`` (the view's
widget, or a ``QImage`` for the benchmark and the tests). Per frame: grey mapping
through a lookup table, class outlines with ``cv2.findContours`` at frame resolution,
one ``cv2.resize`` to the display size into a reused buffer, then vector graphics and
text with ``QPainter`` at display resolution (sharp at any size). Buffers are sized
once per frame/display size; nothing per pixel runs in Python.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt
from PyQt5.QtCore import QPointF, QRectF, QSize, Qt
from PyQt5.QtGui import (
    QColor,
    QFontMetrics,
    QImage,
    QPaintDevice,
    QPainter,
    QPainterPath,
    QPen,
)

from guidance.ctscan.result import CtScanResult
from guidance.figures import edge_letters, scale_bar_mm
from guidance.gui import theme
from guidance.gui.ct_view import CT_WINDOW, render_ct_view
from guidance.gui.display import DisplayMapper, WindowLevel, display_plane
from guidance.gui.live_model import LiveViewModel
from guidance.pipeline.frame import FrameResult
from guidance.pipeline.overlay import Orientation, display_orientation
from guidance.pipeline.placement import FramePlacement
from guidance.planning.structures import StructureSet
from guidance.records import GuidanceState, WarningLevel

__all__ = ["LiveRenderer"]

F64 = npt.NDArray[np.float64]

_LEFT_MID = int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
_LEFT_TOP = int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
_CENTRE = int(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter)

#: Brightness of the frame in the STALE view (dimmed, grey, hatched).
STALE_DIM = 0.35


def banner_colour(model: LiveViewModel) -> QColor:
    """Banner colour: STALE grey, else by warning level, else by state."""
    if model.stale:
        return theme.STALE_COLOUR
    if model.level > WarningLevel.NONE:
        return theme.LEVEL_COLOURS[model.level]
    if model.state == GuidanceState.NO_GUIDANCE:
        return theme.NO_GUIDANCE_COLOUR
    if model.state == GuidanceState.DEGRADED:
        return theme.DEGRADED_COLOUR
    return theme.LEVEL_COLOURS[WarningLevel.NONE]


class LiveRenderer:
    """Draws the live picture. Not thread-safe: use from the GUI thread only.

    Attributes:
        plan: (entry_lps, target_lps), LPS mm, or ``None``.
        image_target_px: a target given as a frame point (column, row, pixels), drawn
            as a cross, or ``None``.
        show_labels: draw the segmentation outlines.
        image_rect: where the last frame was drawn (device pixels).
        frame_shape: (rows, cols) of the last frame drawn.
    """

    def __init__(self) -> None:
        self.mapper = DisplayMapper()
        self.plan: tuple[F64, F64] | None = None
        #: a target given as a point of the frame (column, row, pixels), or ``None``
        self.image_target_px: tuple[float, float] | None = None
        self.show_labels = True
        self.image_rect = QRectF()
        self.frame_shape: tuple[int, int] = (0, 0)
        self._rgb: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        self._disp: np.ndarray | None = None
        self._flipped: np.ndarray | None = None
        #: how the last frame is shown (flips, patient directions), ``None``: not placed
        self.orientation: Orientation | None = None
        self._stored_shape: tuple[int, int] = (0, 0)
        self._fit_cache: dict[tuple[str, int, int, bool], int] = {}
        self._stale_img: QImage | None = None
        #: the plan's structures (planning CT) for a CT control scan's outlines
        self.structures: object | None = None
        self._ct_cache: tuple[tuple[object, ...], np.ndarray] | None = None

    # -- geometry --------------------------------------------------------------------

    def to_device(self, ij: F64) -> F64:
        """(N, 2) frame pixel coordinates (column, row, as stored) -> (N, 2) device
        coordinates of the last drawn frame (through its display flips)."""
        rows, cols = self.frame_shape
        r = self.image_rect
        sx = r.width() / max(cols, 1)
        sy = r.height() / max(rows, 1)
        ij = np.atleast_2d(ij)
        if self.orientation is not None and not self.orientation.flip.identity:
            ij = self.orientation.flip.points(ij, self._stored_shape)
        return np.stack([r.x() + (ij[:, 0] + 0.5) * sx, r.y() + (ij[:, 1] + 0.5) * sy], axis=1)

    def to_frame(self, x: float, y: float) -> tuple[float, float] | None:
        """Device coordinates -> frame pixel (column, row, as stored: as the frame
        arrived) of the last drawn frame, through its display flips; ``None`` outside
        the picture. The inverse of :meth:`to_device`."""
        r = self.image_rect
        rows, cols = self.frame_shape
        if r.isEmpty() or rows <= 0 or cols <= 0 or not (
                r.left() <= x <= r.right() and r.top() <= y <= r.bottom()):
            return None
        p = np.array([(x - r.x()) / (r.width() / cols) - 0.5,
                      (y - r.y()) / (r.height() / rows) - 0.5])
        p = np.clip(p, -0.5, [cols - 0.5, rows - 0.5])
        o = self.orientation
        if o is not None and not o.flip.identity:  # undo DisplayFlip.points
            if o.flip.flip_cols:
                p[0] = cols - 1 - p[0]
            if o.flip.flip_rows:
                p[1] = rows - 1 - p[1]
            if o.flip.transpose:
                p = p[::-1]
        return float(p[0]), float(p[1])

    @staticmethod
    def layout(width: int, height: int, banner_h: float | None = None,
               ) -> tuple[QRectF, QRectF]:
        """(banner, image area) rectangles for a device of this size."""
        hb = banner_h if banner_h is not None else max(64.0, round(height * 0.13))
        return QRectF(0, 0, width, hb), QRectF(0, hb, width, height - hb)

    def _banner_height(self, w: int, h: int, model: LiveViewModel) -> float:
        """The banner grows (up to 40 % of the height) until its text fits at >= 16 px:
        a warning is never cut."""
        hb = max(64.0, round(h * 0.13))
        text = self._banner_text(model)
        while hb < 0.4 * h:
            rect = self._text_rect(QRectF(0, 0, w, hb))
            fm = QFontMetrics(theme.font(16, True))
            br = fm.boundingRect(rect.toRect(), _LEFT_MID | int(Qt.TextFlag.TextWordWrap), text)
            if br.height() <= rect.height() and br.width() <= rect.width():
                break
            hb *= 1.2
        return float(round(hb))

    @staticmethod
    def _banner_text(model: LiveViewModel) -> str:
        return model.text + (f"   (+{len(model.more)} more)" if model.more else "")

    @staticmethod
    def _title_rect(rect: QRectF) -> QRectF:
        pad = min(rect.height() * 0.08, 10.0)
        inner = rect.adjusted(pad, pad, -pad, -pad)
        return QRectF(inner.x(), inner.y(), min(inner.width() * 0.3, inner.height() * 4.2,
                                                 64 * 4.2), inner.height())

    def _text_rect(self, rect: QRectF) -> QRectF:
        pad = min(rect.height() * 0.08, 10.0)
        t = self._title_rect(rect)
        return QRectF(t.right() + pad, t.y(), rect.right() - pad - t.right() - pad, t.height())

    @staticmethod
    def projection_for(result: FrameResult) -> FramePlacement | None:
        """How planning-CT points map into ``result``'s frame (``None``: the frame is not
        placed in the planning CT, so nothing of the plan is drawn on it)."""
        return result.placement if result.image is not None else None

    # -- drawing ---------------------------------------------------------------------

    def render(self, device: QPaintDevice, shown: FrameResult | None, model: LiveViewModel,
               names: dict[int, str]) -> None:
        """Draw everything into ``device``.

        Args:
            device: a widget or a ``QImage``.
            shown: the newest result with an image (``None``: nothing received yet).
            model: what to say (STALE, banner, numbers).
            names: class id -> name for the outlines and the legend.
        """
        w, h = device.width(), device.height()
        banner, area = self.layout(w, h, self._banner_height(w, h, model))
        p = QPainter(device)
        try:
            p.fillRect(QRectF(0, 0, w, h), theme.BACKGROUND)
            ct = shown.ct_scan if shown is not None else None
            if ct is not None:
                self._ct(p, ct, area, model.stale)
            elif shown is not None and shown.image is not None:
                self._frame(p, shown, area, model.stale, names)
            else:
                self.image_rect = QRectF()
            p.setRenderHint(QPainter.Antialiasing, True)
            p.setRenderHint(QPainter.TextAntialiasing, True)
            if not model.stale and shown is not None and ct is None:
                self._outlines(p, shown)
                self._plan(p, shown)
                self._image_target(p)
                self._needle(p, shown)
            if shown is not None and shown.image is not None and ct is None:
                self._orientation_marks(p)
            inset = max(14.0, area.width() / 60) + 6  # inside the STALE border
            corners = area.adjusted(inset, 0, -inset, -inset)
            if ct is None:
                self._legend(p, corners, names, model.stale)
            self._age(p, corners, model)
            self._banner(p, banner, model)
            if model.stale:
                self._stale(p, area, model)
        finally:
            p.end()

    def _frame(self, p: QPainter, result: FrameResult, area: QRectF, stale: bool,
               names: dict[int, str]) -> None:
        assert result.image is not None
        plane = display_plane(result.image.voxels)
        rows, cols = plane.shape
        gray = self.mapper.map(plane, STALE_DIM if stale else 1.0)
        if self._rgb is None or self._rgb.shape[:2] != (rows, cols):
            self._rgb = np.empty((rows, cols, 3), np.uint8)
            self._mask = np.empty((rows, cols), np.uint8)
        rgb, mask = self._rgb, self._mask
        assert mask is not None
        cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB, dst=rgb)
        labels = result.labels
        if (self.show_labels and not stale and labels is not None
                and labels.shape == (rows, cols) and labels.dtype == np.uint8):
            for cid, name in names.items():
                cv2.compare(labels, cid, cv2.CMP_EQ, dst=mask)  # type: ignore[call-overload]
                contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL,
                                               cv2.CHAIN_APPROX_SIMPLE)
                if contours:
                    cv2.drawContours(rgb, contours, -1, theme.class_colour(cid, name), 1)
        if result.focus_window is not None and not stale:  # where the model looked
            fx0, fy0, fx1, fy1 = result.focus_window
            cv2.rectangle(rgb, (fx0, fy0), (fx1 - 1, fy1 - 1), (150, 150, 150), 1)
        # As a DICOM viewer shows the slice (guidance.figures), when it is placed.
        self.orientation = display_orientation(result)
        self._stored_shape = (rows, cols)
        sp = result.image.spacing_mm
        sx_mm, sy_mm = float(sp[0]), float(sp[1])
        if self.orientation is not None and not self.orientation.flip.identity:
            view = self.orientation.flip.apply(rgb)
            if self._flipped is None or self._flipped.shape != view.shape:
                self._flipped = np.empty(view.shape, np.uint8)
            np.copyto(self._flipped, view)
            rgb = self._flipped
            rows, cols = rgb.shape[:2]
            if self.orientation.flip.transpose:
                sx_mm, sy_mm = sy_mm, sx_mm
        # Fit with the pixel aspect ratio (mm per pixel along columns and rows).
        aspect = (cols * sx_mm) / max(rows * sy_mm, 1e-9)
        dw, dh = area.width(), area.height()
        if dw / max(dh, 1.0) > aspect:
            dw = dh * aspect
        else:
            dh = dw / aspect
        iw, ih = max(int(dw), 1), max(int(dh), 1)
        x0 = area.x() + (area.width() - iw) / 2
        y0 = area.y() + (area.height() - ih) / 2
        self.image_rect = QRectF(x0, y0, iw, ih)
        self.frame_shape = (rows, cols)
        if self._disp is None or self._disp.shape[:2] != (ih, iw):
            self._disp = np.empty((ih, iw, 3), np.uint8)
        cv2.resize(rgb, (iw, ih), dst=self._disp, interpolation=cv2.INTER_LINEAR)
        qimg = QImage(self._disp.data, iw, ih, iw * 3,  # type: ignore[call-overload]
                      QImage.Format_RGB888)
        p.drawImage(QPointF(x0, y0), qimg)

    def _ct(self, p: QPainter, ct: CtScanResult, area: QRectF, stale: bool) -> None:
        """A CT control scan: :mod:`guidance.gui.ct_view`'s picture, rendered once per
        scan, window, plan and structures (the window keys work on ``mapper.window``)."""
        if self.mapper.window is None:
            self.mapper.window = WindowLevel(*CT_WINDOW)
        w = self.mapper.window
        key = (ct, w, id(self.plan), id(self.structures))
        if self._ct_cache is None or self._ct_cache[0] != key:
            st = self.structures if isinstance(self.structures, StructureSet) else None
            rgb = render_ct_view(ct, window=(w.centre, w.width), plan=self.plan,
                                 structures=st).rgb
            self._ct_cache = (key, rgb)
        rgb = self._ct_cache[1]
        if stale:
            rgb = np.ascontiguousarray((rgb * STALE_DIM).astype(np.uint8))
        h, wd = rgb.shape[:2]
        k = min(area.width() / wd, area.height() / h)
        self.image_rect = QRectF()
        rect = QRectF(area.x() + (area.width() - wd * k) / 2,
                      area.y() + (area.height() - h * k) / 2, wd * k, h * k)
        img = QImage(rgb.data, wd, h, wd * 3, QImage.Format_RGB888)  # type: ignore[call-overload]
        p.setRenderHint(QPainter.SmoothPixmapTransform, True)
        p.drawImage(rect, img)

    def _orientation_marks(self, p: QPainter) -> None:
        """L/R/A/P (or S/I) letters at the middle of the image's edges and a scale bar
        at the top right (slices only), from the shown frame's patient directions."""
        o, r = self.orientation, self.image_rect
        if o is None or r.isEmpty():
            return
        p.save()
        p.setClipRect(r)
        size = max(16, int(r.height() / 28))
        p.setFont(theme.font(size, bold=True))
        p.setPen(QColor(255, 255, 120))
        letters = edge_letters(o.right_lps, o.down_lps)
        box = 3.0 * size
        rects = {"left": QRectF(r.x() + 6, r.center().y() - box / 2, box, box),
                 "right": QRectF(r.right() - 6 - box, r.center().y() - box / 2, box, box),
                 "top": QRectF(r.center().x() - box / 2, r.y() + 4, box, box),
                 "bottom": QRectF(r.center().x() - box / 2, r.bottom() - 4 - box, box, box)}
        align = {"left": _LEFT_MID, "right": int(Qt.AlignmentFlag.AlignRight
                                                 | Qt.AlignmentFlag.AlignVCenter),
                 "top": int(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop),
                 "bottom": int(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignBottom)}
        for edge, text in letters.items():
            p.drawText(rects[edge], align[edge], text)
        if o.pixel_mm is not None and self.frame_shape[1] > 0:
            mm_per_px = o.pixel_mm * self.frame_shape[1] / r.width()
            bar = scale_bar_mm(r.width() * mm_per_px)
            n = bar / mm_per_px
            y = r.y() + size + 12  # top right: the legend and the age box are below
            x1 = r.right() - 12
            pen = QPen(QColor(255, 255, 255), 3)
            p.setPen(pen)
            p.drawLine(QPointF(x1 - n, y), QPointF(x1, y))
            p.setFont(theme.font(max(12, int(size * 0.7))))
            p.drawText(QRectF(x1 - n, y - size - 6, n, size + 2),
                       int(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignBottom),
                       f"{bar:g} mm")
        p.restore()

    def _outlines(self, p: QPainter, result: FrameResult) -> None:
        """The plan's structures where the C-arm calibration projects them, named."""
        if not result.outlines or self.image_rect.isEmpty():
            return
        p.save()
        p.setClipRect(self.image_rect)
        p.setPen(QPen(theme.OUTLINE_COLOUR, 2))
        p.setFont(theme.font(max(12, int(self.image_rect.height() / 60))))
        for o in result.outlines:
            for poly in o.polygons:
                xy = self.to_device(poly)
                path = QPainterPath(QPointF(*xy[0]))
                for x, y in xy[1:]:
                    path.lineTo(QPointF(x, y))
                path.closeSubpath()
                p.drawPath(path)
            top = min(o.polygons, key=lambda q: float(q[:, 1].min()))
            x, y = self.to_device(top[np.argmin(top[:, 1])][None])[0]
            p.drawText(QPointF(x, y - 4), o.structure)
        p.restore()

    def _plan(self, p: QPainter, result: FrameResult) -> None:
        if self.plan is None or self.image_rect.isEmpty():
            return
        proj = self.projection_for(result)
        if proj is None:
            return
        ij, off = proj.project(np.stack(self.plan))
        if not np.all(np.isfinite(ij)):
            return
        xy = self.to_device(ij)
        p.save()
        p.setClipRect(self.image_rect)
        pen = QPen(theme.PLAN_COLOUR, 3)
        pen.setCapStyle(Qt.PenCapStyle.RoundCap)
        p.setPen(pen)
        a, b = QPointF(*xy[0]), QPointF(*xy[1])
        p.drawLine(a, b)
        r = max(10.0, self.image_rect.width() / 60)
        p.drawEllipse(b, r, r)
        p.drawLine(b - QPointF(1.8 * r, 0), b + QPointF(1.8 * r, 0))
        p.drawLine(b - QPointF(0, 1.8 * r), b + QPointF(0, 1.8 * r))
        p.setFont(theme.font(max(16, int(self.image_rect.height() / 40)), bold=True))
        label = "target"
        if not proj.is_projection and abs(off[1]) > 2.0:
            label += f" ({abs(off[1]):.0f} mm out of plane)"
        p.drawText(b + QPointF(1.4 * r, -1.2 * r), label)
        p.restore()

    def _image_target(self, p: QPainter) -> None:
        """The target given as a frame point (``--target-px`` or a click): a cross."""
        if self.image_target_px is None or self.image_rect.isEmpty():
            return
        x, y = self.to_device(np.asarray(self.image_target_px, np.float64))[0]
        p.save()
        p.setClipRect(self.image_rect)
        pen = QPen(theme.PLAN_COLOUR, 3)
        p.setPen(pen)
        r = max(10.0, self.image_rect.width() / 60)
        b = QPointF(x, y)
        p.drawEllipse(b, r, r)
        p.drawLine(b - QPointF(1.8 * r, 0), b + QPointF(1.8 * r, 0))
        p.drawLine(b - QPointF(0, 1.8 * r), b + QPointF(0, 1.8 * r))
        p.setFont(theme.font(max(16, int(self.image_rect.height() / 40)), bold=True))
        p.drawText(b + QPointF(1.4 * r, -1.2 * r), "target")
        p.restore()

    def _needle(self, p: QPainter, result: FrameResult) -> None:
        n = result.needle
        if n is None or self.image_rect.isEmpty():
            return
        p.save()
        p.setClipRect(self.image_rect)
        r = max(9.0, self.image_rect.width() / 70)
        if n.in_image:
            xy = self.to_device(np.stack([n.hub_ij, n.tip_ij]))
            pen = QPen(theme.DETECTED_NEEDLE, 3)
            p.setPen(pen)
            tip = QPointF(*xy[1])
            p.drawLine(QPointF(*xy[0]), tip)
            p.drawEllipse(tip, r, r)
        elif n.has_3d:
            proj = self.projection_for(result)
            if proj is not None:
                ij, _ = proj.project(n.tip_lps[None])
                if np.all(np.isfinite(ij)):
                    pen = QPen(theme.DETECTED_NEEDLE, 3, Qt.PenStyle.DashLine)
                    p.setPen(pen)
                    p.drawEllipse(QPointF(*self.to_device(ij)[0]), r, r)
        p.restore()

    def _fit(self, p: QPainter, rect: QRectF, text: str, max_px: int, bold: bool,
             flags: int) -> None:
        """Draw ``text`` wrapped in ``rect`` at the largest size <= max_px that fits
        (never cut: the size shrinks down to 12 px, then the text may overflow)."""
        key = (text, int(rect.width()), int(rect.height()), bold)
        size = self._fit_cache.get(key)
        if size is None:
            size = max_px
            while size > 12:
                fm = QFontMetrics(theme.font(size, bold))
                br = fm.boundingRect(rect.toRect(), flags | Qt.TextFlag.TextWordWrap, text)
                if br.height() <= rect.height() and br.width() <= rect.width():
                    break
                size = int(size * 0.9)
            if len(self._fit_cache) > 256:
                self._fit_cache.clear()
            self._fit_cache[key] = size
        p.setFont(theme.font(size, bold))
        p.drawText(rect, flags | Qt.TextFlag.TextWordWrap, text)

    def _banner(self, p: QPainter, rect: QRectF, model: LiveViewModel) -> None:
        p.fillRect(rect, banner_colour(model))
        p.setPen(QColor(255, 255, 255))
        title = self._title_rect(rect)
        self._fit(p, title, model.title, int(min(title.height(), 110) * 0.62), True, _LEFT_MID)
        text = self._text_rect(rect)
        self._fit(p, text, self._banner_text(model), int(min(text.height(), 110) * 0.42), True,
                  _LEFT_MID)

    def _legend(self, p: QPainter, area: QRectF, names: dict[int, str], stale: bool) -> None:
        px = max(14, int(area.height() / 42))
        p.setFont(theme.font(px))
        fm = QFontMetrics(theme.font(px))
        items: list[tuple[str, QColor]] = [
            (name, QColor(*theme.class_colour(cid, name))) for cid, name in names.items()]
        items += [("needle axis", theme.DETECTED_NEEDLE), ("plan / target", theme.PLAN_COLOUR),
                  ("planned structures", theme.OUTLINE_COLOUR)]
        line_h = fm.height() + 4
        box_w = max(fm.horizontalAdvance(t) for t, _ in items) + 2.6 * px
        box = QRectF(area.x() + 8, area.bottom() - 8 - line_h * len(items) - 8, box_w,
                     line_h * len(items) + 8)
        p.fillRect(box, QColor(0, 0, 0, 150))
        for k, (text, colour) in enumerate(items):
            y = box.y() + 4 + k * line_h
            c = QColor(colour)
            if stale:
                c.setAlpha(90)
            p.fillRect(QRectF(box.x() + 6, y + line_h * 0.3, px * 1.2, line_h * 0.4), c)
            p.setPen(QColor(230, 230, 230) if not stale else QColor(140, 140, 140))
            p.drawText(QRectF(box.x() + 6 + px * 1.8, y, box_w, line_h),
                       _LEFT_MID, text)

    def _age(self, p: QPainter, area: QRectF, model: LiveViewModel) -> None:
        px = max(16, int(area.height() / 30))
        age = "-" if not math.isfinite(model.age_s) else f"{model.age_s:.2f} s"
        state = "STALE" if model.stale else "LIVE"
        lines = [f"{state}  age {age}"]
        fps = "-" if not math.isfinite(model.fps) else f"{model.fps:.1f}"
        lat = "-" if not math.isfinite(model.latency_ms) else f"{model.latency_ms:.0f}"
        lines.append(f"latency {lat} ms   {fps} fps")
        f = theme.font(px, bold=True)
        fm = QFontMetrics(f)
        wbox = max(fm.horizontalAdvance(t) for t in lines) + 24
        hbox = (fm.height() + 4) * len(lines) + 12
        box = QRectF(area.right() - wbox - 8, area.bottom() - hbox - 8, wbox, hbox)
        p.fillRect(box, theme.STALE_HATCH if model.stale else QColor(0, 0, 0, 170))
        p.setFont(f)
        p.setPen(QColor(0, 0, 0) if model.stale else theme.STREAM_COLOURS["LIVE"])
        p.drawText(box.adjusted(12, 6, -12, -6), _LEFT_TOP, "\n".join(lines))

    def _stale_layer(self, w: int, h: int) -> QImage:
        """The hatched border and the hatch over the image for an area of w x h,
        drawn once per size (about 100 anti-aliased lines: too slow to draw per frame)."""
        if self._stale_img is not None and self._stale_img.size() == QSize(w, h):
            return self._stale_img
        img = QImage(w, h, QImage.Format_ARGB32_Premultiplied)
        img.fill(Qt.GlobalColor.transparent)
        area = QRectF(0, 0, w, h)
        p = QPainter(img)
        p.setRenderHint(QPainter.Antialiasing, True)
        border = max(14.0, w / 60)
        outer = QPainterPath()
        outer.addRect(area)
        inner = QPainterPath()
        inner.addRect(area.adjusted(border, border, -border, -border))
        p.setClipPath(outer.subtracted(inner))
        p.fillRect(area, theme.STALE_HATCH)
        p.setPen(QPen(QColor(0, 0, 0), border * 0.6))
        span = w + h
        x, step = -float(h), border * 2.2
        while x < span:
            p.drawLine(QPointF(x, h), QPointF(x + h, 0))
            x += step
        hatch = QColor(theme.STALE_HATCH)
        hatch.setAlpha(60)
        p.setPen(QPen(hatch, 4))
        p.setClipRect(area.adjusted(border, border, -border, -border))
        x, step = -float(h), max(40.0, w / 18)
        while x < span:
            p.drawLine(QPointF(x, h), QPointF(x + h, 0))
            x += step
        p.end()
        self._stale_img = img
        return img

    def _stale(self, p: QPainter, area: QRectF, model: LiveViewModel) -> None:
        """Hatched border and hatch over the image, a large STALE box with the age."""
        p.save()
        p.drawImage(area.topLeft(), self._stale_layer(int(area.width()), int(area.height())))
        bw, bh = area.width() * 0.62, area.height() * 0.34
        box = QRectF(area.center().x() - bw / 2, area.center().y() - bh / 2, bw, bh)
        p.fillRect(box, QColor(0, 0, 0, 215))
        p.setPen(QPen(theme.STALE_HATCH, 4))
        p.drawRect(box)
        p.setPen(theme.STALE_HATCH)
        self._fit(p, QRectF(box.x(), box.y() + bh * 0.04, bw, bh * 0.55), "STALE",
                  int(bh * 0.5), True, _CENTRE)
        age = "no frame yet" if not math.isfinite(model.age_s) else \
            f"newest input {model.age_s:.1f} s old"
        p.setPen(QColor(255, 255, 255))
        self._fit(p, QRectF(box.x() + 12, box.y() + bh * 0.58, bw - 24, bh * 0.38),
                  f"{age}\nnot current: do not guide on this image", int(bh * 0.15), True,
                  _CENTRE)
        p.restore()
