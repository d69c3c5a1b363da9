"""The live view on a simulated stream through the real pipeline, judged from pixels."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PyQt5.QtCore import QRectF, Qt
from PyQt5.QtGui import QFontMetrics, QImage
from PyQt5.QtWidgets import QApplication

from guidance.geometry import ImageVolume
from guidance.gui import theme
from guidance.gui.canvas import LiveRenderer
from guidance.gui.feed import LiveFeed, RecordControl
from guidance.gui.live_model import build_view_model
from guidance.gui.live_view import LiveView
from guidance.planning.config import StructureConfig, StructureSpec
from guidance.planning.plan import Plan
from guidance.planning.structures import build_structures
from guidance.records import GuidanceState, SafetyWarning, WarningLevel
from tests.guidance.gui.helpers import (
    HUB_IJ,
    TIP_IJ,
    Feeder,
    colour_fraction,
    make_pipeline,
    px_to_lps,
    to_array,
)

TIMEOUT_MS = 8000


@pytest.fixture
def live(qtbot):
    """A pipeline with a plan along the needle, its feeder and a shown live view."""
    pipe, slots = make_pipeline()
    entry, tip = px_to_lps(HUB_IJ), px_to_lps(TIP_IJ)
    target = tip + (tip - entry) / np.linalg.norm(tip - entry) * 5.0
    pipe.set_plan(Plan(entry, target))
    pipe.start()
    view = LiveView(LiveFeed(pipe, slots), poll_ms=20)
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    qtbot.waitExposed(view)
    feeder = Feeder(slots).start()
    yield view, pipe, feeder, (entry, target)
    feeder.stop()
    view.stop()
    pipe.stop()


def _grab(view: LiveView) -> np.ndarray:
    return to_array(view.canvas.grab().toImage())


def _banner(view: LiveView, rgb: np.ndarray) -> np.ndarray:
    b, _ = LiveRenderer.layout(view.canvas.width(), view.canvas.height())
    return rgb[: int(b.height()) - 2]


def test_trajectory_drawn_where_the_plan_projects(qtbot, live):
    view, pipe, _feeder, _plan = live
    # A plan away from the needle (so that the needle does not cover it).
    entry, target = px_to_lps((20, 220)), px_to_lps((200, 170))
    pipe.set_plan(Plan(entry, target))
    qtbot.waitUntil(lambda: view.model is not None and not view.model.stale, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: view.canvas.renderer.plan is not None
                    and np.allclose(view.canvas.renderer.plan[1], target), timeout=TIMEOUT_MS)
    view.canvas.repaint()
    rgb = _grab(view)
    r = view.canvas.renderer
    proj = r.projection_for(view.shown)
    ij, off = proj.project(np.stack([entry, target]))
    assert np.allclose(off, 0.0)
    xy = r.to_device(ij)
    # Along the planned segment (away from the needle's end), the plan colour is there.
    hits = 0
    for f in (0.3, 0.5, 0.7, 0.9):
        x, y = (xy[0] + f * (xy[1] - xy[0])).round().astype(int)
        patch = rgb[y - 3:y + 4, x - 3:x + 4]
        hits += colour_fraction(patch, theme.PLAN_COLOUR, tol=40) > 0
    assert hits >= 3
    # ... and the target cross is drawn at the projected target, not elsewhere.
    tx, ty = xy[1].round().astype(int)
    assert colour_fraction(rgb[ty - 20:ty + 21, tx - 20:tx + 21], theme.PLAN_COLOUR, 40) > 0.02
    assert colour_fraction(rgb[:200, -200:], theme.PLAN_COLOUR, 40) == 0.0


def test_danger_banner_when_a_structure_is_breached(qtbot, live):
    view, pipe, _feeder, (entry, target) = live
    # A "spinal cord" sphere around the needle tip: the live check must say DANGER.
    shape = (40, 100, 100)
    m = np.diag([1.0, 1.0, 1.0, 1.0])
    m[:3, 3] = [-20.0, -20.0, -20.0]
    grid = ImageVolume(np.zeros(shape, np.uint8), m)
    k, j, i = np.indices(shape)
    pts = grid.ijk_to_lps_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1))
    tip = px_to_lps(TIP_IJ)
    ball = (np.linalg.norm(pts - tip, axis=1) <= 4.0).reshape(shape).astype(np.uint8)
    cfg = StructureConfig(structures=(StructureSpec("spinal_cord", ("spinal_cord",), 3.0),),
                          derive_nerve_roots=False)
    ss = build_structures(ImageVolume(ball, m), {1: "spinal_cord"}, cfg,
                          roi_center_lps=[30.0, 30.0, 0.0], roi_half_size_mm=45.0,
                          use_cache=False)
    pipe.set_plan(Plan(entry, target), ss)
    qtbot.waitUntil(lambda: view.model is not None and view.model.level == WarningLevel.DANGER
                    and "spinal_cord" in view.model.text, timeout=TIMEOUT_MS)
    view.canvas.repaint()
    banner = _banner(view, _grab(view))
    assert colour_fraction(banner, theme.LEVEL_COLOURS[WarningLevel.DANGER]) > 0.4
    assert "mm" in view.model.text
    assert any(m.label == "spinal_cord" and m.level == WarningLevel.DANGER
               for m in view.model.metrics)


def test_stale_state_drawn_after_input_stops(qtbot, live):
    view, _pipe, feeder, _plan = live
    qtbot.waitUntil(lambda: view.model is not None and not view.model.stale, timeout=TIMEOUT_MS)
    view.canvas.repaint()
    before = _grab(view)
    assert colour_fraction(before, theme.STALE_HATCH, 8) < 0.001
    feeder.stop()
    qtbot.waitUntil(lambda: view.model.stale and view.model.age_s > 0.6, timeout=TIMEOUT_MS)
    view.canvas.repaint()
    rgb = _grab(view)
    banner = _banner(view, rgb)
    assert colour_fraction(banner, theme.STALE_COLOUR, 4) > 0.4  # grey, no level colour
    assert colour_fraction(banner, theme.LEVEL_COLOURS[WarningLevel.NONE], 8) == 0.0
    assert colour_fraction(rgb, theme.STALE_HATCH, 8) > 0.03  # hatched border and box
    # The frame is dimmed: its brightest grey pixels are far darker than before.
    # (a band of the image above the STALE box, inside the hatched border).
    img = view.canvas.renderer.image_rect.toRect()
    band = (slice(img.top() + 40, img.top() + 120), slice(img.left() + 40, img.right() - 40))
    inner = rgb[band]
    grey = inner[(inner.max(axis=2) - inner.min(axis=2)) < 3]
    assert grey.size > 1000
    assert np.percentile(grey, 99) < 0.6 * np.percentile(before[band], 99)
    assert view.big.text().startswith("-")  # the old distance is not shown as current
    assert "STALE" in view.model.title and "NOT current" in view.model.text


def test_frozen_gui_does_not_queue_results(qtbot, live):
    view, pipe, feeder, _plan = live
    qtbot.waitUntil(lambda: view.shown is not None, timeout=TIMEOUT_MS)
    processed0, taken0 = pipe.frames_processed, view.results_taken
    paints0 = view.canvas.paint_count
    # Freeze the GUI thread for 1.5 s while frames keep coming at 30 fps.
    done = threading.Event()
    done.wait(1.5)
    during = pipe.frames_processed - processed0
    assert during >= 15  # the pipeline kept going without the GUI
    assert view.results_taken == taken0 and view.canvas.paint_count == paints0
    # After the freeze the view takes the newest result at once: no backlog replayed.
    t0 = time.monotonic()
    qtbot.waitUntil(lambda: view.results_taken > taken0, timeout=TIMEOUT_MS)
    assert time.monotonic() - t0 < 1.0
    assert view.results_taken - taken0 <= 3
    assert view.shown is not None and view.shown.seq >= pipe.latest().seq - 2
    assert feeder.sent > 40


def test_long_warning_is_wrapped_not_cut(qtbot):
    r = LiveRenderer()
    text = ("nerve_root_L1_left (derived): 0.3 mm, within the 4.4 mm margin (tracking, "
            "calibration, registration and latency included) " * 2).strip()
    w = SafetyWarning(0.0, WarningLevel.DANGER, "nerve_root_L1_left (derived)", 0.3, text)
    from guidance.pipeline.frame import FrameResult
    from tests.guidance.gui.test_display_model import _decision

    res = FrameResult(seq=1, t_s=0.0, received_ns=1, state=GuidanceState.OK,
                      decision=_decision([w]),
                      image=ImageVolume(np.zeros((1, 512, 512), np.uint8), np.eye(4)))
    model = build_view_model(res, res, 1, 0.5)
    img = QImage(512, 512, QImage.Format.Format_RGB32)
    r.render(img, res, model, {1: "needle"})
    key = next(k for k in r._fit_cache if k[0] == text)
    size = r._fit_cache[key]
    rect = QRectF(0, 0, key[1], key[2])
    fm = QFontMetrics(theme.font(size, True))
    br = fm.boundingRect(rect.toRect(), int(Qt.TextFlag.TextWordWrap), text)
    assert size >= 12 and br.height() <= rect.height() and br.width() <= rect.width()


def test_record_button_and_shortcut(qtbot, tmp_path):
    pipe, slots = make_pipeline()
    listeners: list = []
    rec = RecordControl(listeners, tmp_path)
    view = LiveView(LiveFeed(pipe, slots, record=rec), poll_ms=50)
    qtbot.addWidget(view)
    view.show()
    view.activateWindow()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is not None, timeout=TIMEOUT_MS)
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_R)
    assert rec.recording and len(listeners) == 1 and view.record.isChecked()
    assert "recording to" in view.message.text()
    listeners[0](b"h" * 58, memoryview(b"body"), time.monotonic_ns(), "peer")
    qtbot.mouseClick(view.record, Qt.MouseButton.LeftButton)
    assert not rec.recording and listeners == [] and not view.record.isChecked()
    assert "1 messages" in view.message.text()
    files = list(tmp_path.glob("recording-*.igtlrec"))
    assert len(files) == 1 and files[0].stat().st_size > 62
    view.stop()


def test_a_ct_reslice_is_shown_as_on_the_scanner_console(qtbot) -> None:
    """A pose update's reslice stored posterior-first (rows towards anterior, as the
    embedded CT) is drawn anterior up with its letters; points follow the flip."""
    from guidance.pipeline.frame import FrameResult

    n = 64
    vox = np.zeros((1, n, n), np.int16)
    vox[0, 2:8, 28:36] = 1500  # bright near stored row 0: posterior (the spine)
    m = np.eye(4)
    m[:3, 0], m[:3, 1] = [0.5, 0, 0], [0, -0.5, 0]  # columns to the left, rows anterior
    res = FrameResult(seq=1, t_s=0.0, received_ns=1, state=GuidanceState.OK, kind="pose",
                      image=ImageVolume(vox, m), modality="ct")
    model = build_view_model(res, res, 2, 10.0)
    img = QImage(600, 600, QImage.Format.Format_RGB888)
    r = LiveRenderer()
    r.render(img, res, model, {})
    assert r.orientation is not None and r.orientation.flip.flip_rows
    rect = r.image_rect
    y_spine = r.to_device(np.array([[32.0, 4.0]]))[0, 1]
    assert y_spine > rect.center().y() + rect.height() / 3  # at the bottom
    rgb = to_array(img)
    col = int(r.to_device(np.array([[32.0, 4.0]]))[0, 0])
    assert rgb[int(y_spine), col].mean() > 150  # the bright spine drawn where it maps
    top = rgb[int(rect.y()):int(rect.y() + rect.height() / 10),
              int(rect.center().x() - 20):int(rect.center().x() + 20)]
    from PyQt5.QtGui import QColor

    assert colour_fraction(top, QColor(255, 255, 120), 30) > 0.01  # the "A" letter on top
