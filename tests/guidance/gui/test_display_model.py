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
from guidance.pipeline.frame import FrameResult, Reason, StateReason
from guidance.pipeline.placement import FramePlacement
from guidance.records import GuidanceState, SafetyReason, SafetyWarning, WarningLevel
from guidance.safety.decision import Clearance, MarginWidening, SafetyDecision


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


def test_placement_slice_and_projection():
    m = np.diag([0.5, 0.5, 1.0, 1.0])
    m[:3, 3] = [-10.0, 20.0, 5.0]
    ij, off = FramePlacement("slice", m).project([[-5.0, 30.0, 8.0]])
    assert ij[0] == pytest.approx([10.0, 20.0]) and off[0] == pytest.approx(3.0)
    np.testing.assert_allclose(FramePlacement("slice", m).pixel_to_ct([[10.0, 20.0]]),
                               [[-5.0, 30.0, 5.0]])
    # A camera at the origin looking along +z, 1000 px focal length, centre (50, 50): a
    # point at depth 500 mm, 4 mm off the axis, lands 8 px from the centre.
    k = np.array([[1000.0, 0, 50], [0, 1000.0, 50], [0, 0, 1]])
    p = FramePlacement("projection", ct_to_pixel=k @ np.eye(4)[:3])
    ij, off = p.project([[4.0, -2.0, 500.0]])
    assert p.is_projection and off[0] == 0.0
    assert ij[0] == pytest.approx([50 + 8.0, 50 - 4.0])
    ij, _ = p.project([[0.0, 0.0, -10.0]])  # behind the source: not on the detector
    assert np.all(np.isnan(ij))
    with pytest.raises(ValueError, match="parallel"):
        FramePlacement("slice", np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="only a slice"):
        p.pixel_to_ct([[0.0, 0.0]])


def _decision(warnings=(), tip_to_target=12.0, clearances=()):
    ws = tuple(sorted(warnings, key=lambda w: -int(w.level)))
    level = max((w.level for w in ws), default=WarningLevel.NONE)
    return SafetyDecision(
        t_s=0.0, level=level, reason=ws[0].reason if ws else SafetyReason.CLEAR,
        structure=ws[0].structure if ws else "", clearance_mm=math.nan, margin_mm=math.nan,
        findings=ws, widening=MarginWidening(0.3, 0.4, 0.9, 0.1, 2.0),
        clearances=tuple(clearances), tip_to_target_mm=tip_to_target, lateral_offset_mm=1.0,
        angle_deg=2.0, depth_to_target_mm=tip_to_target, depth_to_breach_mm=math.inf)


_WHY = {GuidanceState.NO_GUIDANCE: Reason.NO_NEEDLE, GuidanceState.STALE: Reason.NO_FRAME,
        GuidanceState.DEGRADED: Reason.DETECTORS_DISAGREE}


def _result(state=GuidanceState.OK, decision=None, received_ns=1_000_000_000, image=True):
    img = ImageVolume(np.zeros((1, 8, 8), np.uint8), np.eye(4)) if image else None
    reasons = (StateReason(_WHY[state], "why"),) if state in _WHY else ()
    return FrameResult(seq=1, t_s=0.0, received_ns=received_ns, state=state,
                       state_reasons=reasons, decision=decision, image=img)


def test_view_model_danger_names_structure_and_distance():
    ws = [SafetyWarning(0, WarningLevel.CAUTION, "plan", 3.1, "3.1 mm off the plan"),
          SafetyWarning(0, WarningLevel.DANGER, "spinal_cord", 0.8,
                        "spinal_cord: 0.8 mm, within the 3.5 mm margin")]
    d = _decision(ws, clearances=(Clearance("spinal_cord", 0.8, 3.5),
                                  Clearance("aorta", 9.0, 3.5)))
    r = _result(decision=d)
    vm = build_view_model(r, r, r.received_ns + 100_000_000, 0.5)
    assert not vm.stale and vm.level == WarningLevel.DANGER and vm.title == "DANGER"
    assert "spinal_cord" in vm.text and "0.8 mm" in vm.text
    assert vm.more == ("CAUTION: 3.1 mm off the plan",)
    assert vm.metrics[0].value == 12.0 and vm.metrics[0].unit == "mm"
    assert vm.metrics[3].label == "margin widened by"
    assert vm.metrics[3].value == pytest.approx(d.widening.total_mm)
    assert [m.label for m in vm.metrics[4:]] == ["spinal_cord", "aorta"]  # closest first
    assert vm.metrics[4].level == WarningLevel.DANGER
    assert vm.latency_ms == pytest.approx(100.0)


def test_view_model_stale_by_age_blanks_numbers():
    r = _result(decision=_decision())
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


def test_view_model_pose_updates_are_current_without_an_image():
    """Navigation from poses alone: no frame, yet the newest pose's result is current
    (and turns STALE by its own age)."""
    r = FrameResult(seq=3, t_s=1.0, received_ns=2_000_000_000, state=GuidanceState.OK,
                    kind="pose", decision=_decision())
    vm = build_view_model(r, None, r.received_ns + 50_000_000, 0.5)
    assert not vm.stale and vm.metrics[0].value == 12.0
    assert build_view_model(r, None, r.received_ns + 900_000_000, 0.5).stale
