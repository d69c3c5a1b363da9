"""A click on the live ultrasound picture sets the pipeline's target at that frame pixel
(its in-plane tip-to-target), and the view draws the cross there."""

from __future__ import annotations

import numpy as np
import pytest
from PyQt5.QtCore import QPoint, QRectF, Qt

from guidance.figures import DisplayFlip
from guidance.gui import theme
from guidance.gui.canvas import LiveRenderer
from guidance.gui.feed import LiveFeed
from guidance.gui.live_view import LiveView
from guidance.pipeline.overlay import Orientation
from tests.guidance.gui.helpers import (
    Feeder,
    colour_fraction,
    make_pipeline,
    to_array,
)

TIMEOUT_MS = 8000


@pytest.mark.parametrize("flip", [DisplayFlip("as acquired"),
                                  DisplayFlip("x", flip_rows=True),
                                  DisplayFlip("x", flip_cols=True, flip_rows=True),
                                  DisplayFlip("x", transpose=True, flip_cols=True)])
def test_to_frame_inverts_to_device(flip):
    r = LiveRenderer()
    stored = (128, 256)  # rows, cols as the frame arrived
    shown = stored[::-1] if flip.transpose else stored
    r.image_rect = QRectF(10.0, 20.0, shown[1] * 2.0, shown[0] * 2.0)
    r.frame_shape = shown
    r._stored_shape = stored
    r.orientation = Orientation(flip, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), 0.2)
    pts = np.array([[0.0, 0.0], [255.0, 127.0], [31.25, 100.5], [200.0, 3.0]])
    for p in pts:
        x, y = r.to_device(p)[0]
        back = r.to_frame(x, y)
        assert back is not None
        np.testing.assert_allclose(back, p, atol=1e-9)
    assert r.to_frame(5.0, 25.0) is None  # left of the picture
    assert LiveRenderer().to_frame(10.0, 10.0) is None  # nothing drawn yet


@pytest.fixture
def live(qtbot):
    pipe, slots = make_pipeline()
    pipe.start()
    view = LiveView(LiveFeed(pipe, slots), poll_ms=20)
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    qtbot.waitExposed(view)
    feeder = Feeder(slots).start()
    yield view, pipe
    feeder.stop()
    view.stop()
    pipe.stop()


def test_a_click_sets_the_target_there(qtbot, live):
    view, pipe = live
    qtbot.waitUntil(lambda: view.shown is not None
                    and not view.canvas.renderer.image_rect.isEmpty(), timeout=TIMEOUT_MS)
    assert pipe.image_target_px is None
    want = np.array([200.0, 60.0])
    x, y = view.canvas.renderer.to_device(want)[0]
    qtbot.mouseClick(view.canvas, Qt.MouseButton.LeftButton, pos=QPoint(round(x), round(y)))
    got = pipe.image_target_px
    assert got is not None
    np.testing.assert_allclose(got, want, atol=0.6)  # a device pixel is < 0.4 frame pixel
    assert "target set at pixel (200, 60)" in view.message.text()
    # The view draws the target cross where it was clicked (the in-plane tip-to-target
    # of the decisions needs the US model's nerves and vessels: tests/guidance/
    # test_image_anatomy.py and the US demo).
    qtbot.waitUntil(lambda: view.canvas.renderer.image_target_px is not None,
                    timeout=TIMEOUT_MS)
    view.canvas.repaint()
    rgb = to_array(view.canvas.grab().toImage())
    cx, cy = round(x), round(y)
    assert colour_fraction(rgb[cy - 20:cy + 21, cx - 20:cx + 21], theme.PLAN_COLOUR, 40) > 0.02


def test_a_click_outside_the_picture_or_right_button_sets_nothing(qtbot, live):
    view, pipe = live
    qtbot.waitUntil(lambda: view.shown is not None
                    and not view.canvas.renderer.image_rect.isEmpty(), timeout=TIMEOUT_MS)
    r = view.canvas.renderer.image_rect
    qtbot.mouseClick(view.canvas, Qt.MouseButton.LeftButton,
                     pos=QPoint(round(r.center().x()), 5))  # the banner
    x, y = view.canvas.renderer.to_device(np.array([100.0, 100.0]))[0]
    qtbot.mouseClick(view.canvas, Qt.MouseButton.RightButton, pos=QPoint(round(x), round(y)))
    assert pipe.image_target_px is None
