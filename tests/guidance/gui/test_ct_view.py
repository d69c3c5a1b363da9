"""The CT control scan's picture (no display): slice, orientation, needle, reformat."""

from __future__ import annotations

import numpy as np

from guidance.ctscan.result import CtScanResult, PatientMotion, SlabNeedle
from guidance.geometry import ImageVolume
from guidance.gui.ct_view import render_ct_view, tip_slice

N, NK, SP, DZ = 128, 5, 0.8, 2.0


def _result(flip_i: bool = False, needle: bool = True, tip_in_slab: bool = True):
    m = np.diag([SP, SP, DZ, 1.0])
    m[:3, 3] = (-N / 2 * SP, -N / 2 * SP, 100.0)
    if flip_i:
        m[0, 0], m[0, 3] = -SP, (N / 2 - 1) * SP
    inv = np.linalg.inv(m)
    jj, ii = np.mgrid[0:N, 0:N]
    vox = np.full((NK, N, N), -1000, np.int16)
    for k in range(NK):
        p = np.stack([ii, jj, np.full_like(ii, k), np.ones_like(ii)], -1) @ m.T
        vox[k][(p[..., 0] / 45) ** 2 + (p[..., 1] / 35) ** 2 < 1] = 40
        vox[k][(p[..., 0] - 30) ** 2 + (p[..., 1] + 5) ** 2 < 36] = 1500  # patient's left
    hub = np.array([-30.0, -30.0, 100.0 + DZ])
    tip = np.array([-5.0, 10.0, 100.0 + 3 * DZ])
    if needle:
        for s in np.linspace(0, 1, 400):
            i, j, k = np.round(inv[:3, :3] @ (hub + s * (tip - hub)) + inv[:3, 3]).astype(int)
            vox[k, j - 1:j + 1, i - 1:i + 1] = 2500
    vol = ImageVolume(vox, m)
    axis = (tip - hub) / np.linalg.norm(tip - hub)
    nan = np.full(3, np.nan)
    nd = (SlabNeedle(True, tip, axis, hub, tip_in_slab, 3, message="needle ends at slice 4")
          if needle else SlabNeedle(False))
    return CtScanResult(1, vol, np.zeros(vox.shape, np.float32), nd, PatientMotion.identity(),
                        tip if needle else nan, axis if needle else nan,
                        depth_to_target_mm=12.0)


def test_axial_slice_through_tip_and_orientation():
    r = _result()
    v = render_ct_view(r)
    assert tip_slice(r) == 3 and v.axial.slice_index == 3
    g = v.axial.gray
    bright = np.argwhere(g > 250)
    # the left-side marker (1500 HU) shows on the image's right half
    w = g.shape[1]
    assert (bright[:, 1] > w / 2).sum() > 50
    assert v.axial.letters["left"] == "R" and v.axial.letters["right"] == "L"
    assert v.axial.letters["top"] == "A"
    for edge in ("left", "right"):
        x0, y0, x1, y1 = v.axial.letter_boxes[edge]
        region = v.axial.rgb[y0:y1, x0:x1].astype(int)
        assert np.abs(region - np.array([255, 255, 120])).sum(-1).min() < 30


def test_flipped_i_axis_still_shows_left_on_the_right():
    a = render_ct_view(_result()).axial.gray
    b = render_ct_view(_result(flip_i=True)).axial.gray
    w = b.shape[1]
    marker = (b > 250) & (np.arange(w) > w / 2)[None, :]
    assert marker.sum() > 50
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 5


def test_reformat_shows_needle_along_axis():
    v = render_ct_view(_result(tip_in_slab=False))
    ref = v.reformat
    assert ref is not None and ref.needle_px is not None
    (x0, y0), (x1, y1) = ref.needle_px
    samples = [ref.gray[round(y0 + s * (y1 - y0)), round(x0 + s * (x1 - x0))]
               for s in np.linspace(0.1, 0.9, 9)]
    assert min(samples) > 200
    assert "tip beyond the slab" in v.axial.notes


def test_no_needle_renders_and_says_so(tmp_path):
    v = render_ct_view(_result(needle=False))
    assert v.reformat is None
    assert v.axial.slice_index == NK // 2
    assert any("no needle" in n for n in v.axial.notes)
    assert v.save_png(tmp_path / "x.png").exists()


def test_live_view_accepts_a_ct_frame(qtbot):
    import time

    from guidance.gui.live_view import LiveView
    from guidance.pipeline.frame import FrameResult
    from guidance.records import GuidanceState

    r = _result()
    fr = FrameResult(seq=1, t_s=0.0, received_ns=time.monotonic_ns(), state=GuidanceState.OK,
                     image=r.slab, modality="ct", ct_scan=r)

    class Feed:
        record = None
        stale_after_s = 60.0

        def latest(self):
            return fr

        latest_picture = latest

        def plan(self):
            return None

        def image_target(self):
            return None

        def set_image_target(self, u, v):
            pass

        def frames_dropped(self):
            return 0

        def connection(self):
            return "test"

        def streams(self, now_ns=None):
            return ()

    view = LiveView(Feed(), poll_ms=20)
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    qtbot.waitExposed(view)
    view.poll()
    assert view.shown is fr and view.model is not None and not view.model.stale
    from PyQt5.QtGui import QImage
    img = QImage(1000, 700, QImage.Format.Format_RGB888)
    view.canvas.renderer.render(img, view.shown, view.model, {})
    assert view.canvas.renderer._ct_cache is not None
    assert view.canvas.renderer.mapper.window is not None
