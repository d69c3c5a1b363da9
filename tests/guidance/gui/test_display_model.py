"""Display mapping, projection into frames and the live view's rules (no Qt)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from guidance.geometry import ImageVolume
from guidance.gui.display import DisplayMapper, WindowLevel
from guidance.gui.live_model import (
    DEFAULT_LABEL_NAMES,
    build_view_model,
    label_names_of,
    stream_state,
)
from guidance.gui.projection import FrameProjection, source_lps_of
from guidance.pipeline.frame import FrameResult
from guidance.records import GuidanceState, SafetyWarning, WarningLevel
from trackers.pose import TrackedPose


def test_window_level_lut_uint16_int16_and_gain_uint8():
    m = DisplayMapper(WindowLevel(1000.0, 200.0))
    plane = np.array([[800, 900, 1000, 1100, 1200, 60000]], np.uint16)
    out = m.map(plane)
    assert np.abs(out.astype(int) - [[0, 0, 128, 255, 255, 255]]).max() <= 1
    assert m.map(plane) is out  # reused buffer, nothing allocated per frame
    ct = DisplayMapper(WindowLevel(0.0, 400.0)).map(np.array([[-1000, -200, 0, 200]], np.int16))
    assert np.abs(ct.astype(int) - [[0, 0, 128, 255]]).max() <= 1  # negative HU: 16-bit LUT
    us = DisplayMapper(gain=2.0)
    assert us.map(np.array([[10, 100, 200]], np.uint8)).tolist() == [[20, 200, 255]]
    assert us.map(np.array([[100]], np.uint8), dim=0.5).tolist() == [[100]]
    with pytest.raises(ValueError, match="width > 0"):
        WindowLevel(0.0, 0.0)
    with pytest.raises(ValueError, match="gain must be > 0"):
        us.set_gain(-1.0)


def test_auto_window_taken_once_and_kept():
    m = DisplayMapper()
    m.map(np.linspace(0, 1000, 64 * 64).reshape(64, 64).astype(np.uint16))
    w = m.window
    assert w is not None and 400 < w.centre < 600
    m.map(np.full((64, 64), 50000, np.uint16))
    assert m.window == w  # contrast never changes by itself


def test_projection_slice_and_central():
    m = np.diag([0.5, 0.5, 1.0, 1.0])
    m[:3, 3] = [-10.0, 20.0, 5.0]
    img = ImageVolume(np.zeros((1, 100, 100), np.uint8), m)
    ij, off = FrameProjection(img).project([[-5.0, 30.0, 8.0]])
    assert ij[0] == pytest.approx([10.0, 20.0]) and off[0] == pytest.approx(3.0)
    # Detector in z = 5, source 1000 mm above its pixel (50, 50): a point half-way
    # projects twice as far from the centre (magnification 2).
    centre = img.ijk_to_lps_points([[50, 50, 0]])[0]
    src = centre + np.array([0.0, 0.0, 1000.0])
    p = FrameProjection(img, src)
    ij, _ = p.project([centre + np.array([4.0, -2.0, 500.0])])
    assert p.is_projection
    assert ij[0] == pytest.approx([50 + 16.0, 50 - 8.0])
    ij, _ = p.project([src + np.array([0.0, 0.0, 10.0])])  # behind the source: not on the detector
    assert np.all(np.isnan(ij))
    pose = np.eye(4)
    pose[:3, 3] = src
    got = source_lps_of({"FocalSpotToReference": TrackedPose("FocalSpotToReference", pose, 0, 1)})
    assert got is not None and got.tolist() == src.tolist()
    assert source_lps_of({}) is None


def _result(state=GuidanceState.OK, warnings=(), metrics=None, received_ns=1_000_000_000,
            image=True):
    img = ImageVolume(np.zeros((1, 8, 8), np.uint8), np.eye(4)) if image else None
    level = max((w.level for w in warnings), default=WarningLevel.NONE)
    return FrameResult(1, 0.0, received_ns, state, ("why",), None, level, tuple(warnings),
                       metrics or {}, {}, img, None)


def test_view_model_danger_names_structure_and_distance():
    ws = [SafetyWarning(0, WarningLevel.CAUTION, "plan", 3.1, "3.1 mm off the plan"),
          SafetyWarning(0, WarningLevel.DANGER, "spinal_cord", 0.8,
                        "spinal_cord: 0.8 mm, within the 3.5 mm margin")]
    r = _result(warnings=ws, metrics={"tip_to_target_mm": 12.0, "clearance_aorta_mm": 9.0,
                                      "clearance_spinal_cord_mm": 0.8})
    vm = build_view_model(r, r, r.received_ns + 100_000_000, 0.5)
    assert not vm.stale and vm.level == WarningLevel.DANGER and vm.title == "DANGER"
    assert "spinal_cord" in vm.text and "0.8 mm" in vm.text
    assert vm.more == ("CAUTION: 3.1 mm off the plan",)
    assert vm.metrics[0].value == 12.0 and vm.metrics[0].unit == "mm"
    assert [m.label for m in vm.metrics[3:]] == ["spinal_cord", "aorta"]  # closest first
    assert vm.metrics[3].level == WarningLevel.DANGER
    assert vm.latency_ms == pytest.approx(100.0)


def test_view_model_stale_by_age_blanks_numbers():
    r = _result(metrics={"tip_to_target_mm": 12.0})
    vm = build_view_model(r, r, r.received_ns + 700_000_000, 0.5)
    assert vm.stale and vm.title == "STALE" and vm.state == GuidanceState.STALE
    assert "0.7 s" in vm.text and "NOT current" in vm.text
    assert math.isnan(vm.metrics[0].value)  # the old number is not shown as current
    # A STALE report without an image keeps the last frame on screen, still STALE.
    rep = _result(GuidanceState.STALE, image=False, received_ns=0)
    assert build_view_model(rep, r, r.received_ns + 10_000_000, 0.5).stale
    assert build_view_model(None, None, 0, 0.5).text.startswith("no frame received yet")


def test_view_model_no_guidance_is_never_ok():
    r = _result(GuidanceState.NO_GUIDANCE)
    vm = build_view_model(r, r, r.received_ns, 0.5)
    assert vm.title == "NO GUIDANCE" and vm.text == "why"


def test_label_names_and_stream_state():
    assert label_names_of(None) == DEFAULT_LABEL_NAMES

    class WithNames:
        label_names = ("background", "needle", "nerve", "vessel")

    assert label_names_of(WithNames()) == {1: "needle", 2: "nerve", 3: "vessel"}  # type: ignore[arg-type]
    assert [stream_state(a, 0.5) for a in (0.1, 1.0, 5.0, math.inf)] == [
        "LIVE", "LATE", "LOST", "LOST"]
