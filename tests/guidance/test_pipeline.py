"""Pipeline stages with fake inputs, STALE handling, config validation, end to end."""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pyigtl
import pytest

from guidance.geometry import ImageVolume
from guidance.io.messages import image_message_from_volume
from guidance.io.slots import LatestSlots
from guidance.pipeline.config import ConfigError, PipelineConfig, SafetyConfig, config_from_dict
from guidance.pipeline.loop import Pipeline
from guidance.pipeline.plan_check import Hysteresis, PlanCheck
from guidance.records import GuidanceState, WarningLevel

#: These tests exercise the loop's machinery on painted frames with the classical
#: detector; the model path is tested in test_segment_stage.py.
CLASSICAL = config_from_dict({"segment": {"model": "none"}})


def classical(**sections):
    return config_from_dict({"segment": {"model": "none"}, **sections})


def frame_msg(seed=0, with_needle=True, size=256, ts=None):
    img = np.random.default_rng(seed).rayleigh(30, (size, size)).clip(0, 255).astype(np.uint8)
    if with_needle:
        cv2.line(img, (10, 20), (150, 130), 230, 2)
    vol = ImageVolume(img[None], np.diag([0.2, 0.2, 1.0, 1.0]))
    return image_message_from_volume(vol, "Image_Reference", ts or time.time(), "lps")


def put(slots, msg):
    slots.put(msg.device_name, msg.message_type, msg, msg.timestamp, time.monotonic_ns(), "test")


def collect(pipe: Pipeline, n: int, timeout_s: float = 10.0):
    got = []
    ev = threading.Event()

    def on_result(result, rgb):
        got.append((result, rgb.copy()))
        if len(got) >= n:
            ev.set()

    pipe.on_result = on_result
    return got, ev


def test_hysteresis_does_not_flicker():
    h = Hysteresis([(3.0, WarningLevel.CAUTION), (5.0, WarningLevel.DANGER)], margin=0.5)
    seq = [2.9, 3.0, 2.8, 2.6, 2.4, 5.1, 4.8, 4.4, 1.0]
    assert [h.update(v).name for v in seq] == [
        "NONE",
        "CAUTION",
        "CAUTION",
        "CAUTION",
        "NONE",
        "DANGER",
        "DANGER",
        "CAUTION",
        "NONE",
    ]


def test_plan_check_geometry():
    pc = PlanCheck([0, 0, 0], [0, 0, 100], SafetyConfig(uncertainty_mm=0.0))
    dev = pc.check(np.array([4.0, 0, 50]), np.array([0, 0, 1.0]), 1.0)
    assert dev.lateral_offset_mm == pytest.approx(4.0)
    assert dev.depth_mm == pytest.approx(50.0) and dev.angle_deg == pytest.approx(0.0)
    assert dev.level == WarningLevel.CAUTION
    assert any("4.0 mm off" in w.message for w in dev.warnings)
    dev = pc.check(np.array([0, 0, 103.0]), np.array([0, 0, 1.0]), 2.0)
    assert dev.level == WarningLevel.DANGER and dev.overshoot_mm == pytest.approx(3.0)
    with pytest.raises(ValueError, match="apart"):
        PlanCheck([0, 0, 0], [0, 0, 0.5], SafetyConfig())


def test_margins_widened_by_speed_and_uncertainty():
    cfg = SafetyConfig(uncertainty_mm=1.0, latency_s=0.1)
    slow = PlanCheck([0, 0, 0], [0, 0, 100], cfg).check(
        np.array([1.5, 0, 40]), np.array([0, 0, 1.0]), 0, 0
    )
    fast = PlanCheck([0, 0, 0], [0, 0, 100], cfg).check(
        np.array([1.5, 0, 40]), np.array([0, 0, 1.0]), 0, 10
    )
    assert slow.level == WarningLevel.NONE and fast.level == WarningLevel.CAUTION


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"safety": {"caution_offset_mm": -2}}, "caution_offset_mm must be a number > 0, got -2"),
        ({"safety": {"caution_ofset_mm": 2}}, "unknown key safety.caution_ofset_mm"),
        ({"safty": {}}, "unknown section 'safty'"),
        ({"safety": {"danger_offset_mm": "5"}}, "must be float"),
        ({"segment": {"polarity": "grey"}}, "polarity"),
        ({"safety": {"danger_offset_mm": 2.0}}, "larger than caution"),
        ({"preprocess": {"work_size": True}}, "must be int"),
        ([], "expected an object"),
    ],
)
def test_config_errors_name_the_key(data, reason):
    with pytest.raises(ConfigError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        config_from_dict(data)


def test_config_ok_and_ints_for_floats():
    cfg = config_from_dict({"safety": {"caution_offset_mm": 2}, "ingest": {"image_device": "X"}})
    assert cfg.safety.caution_offset_mm == 2 and cfg.ingest.image_device == "X"


def test_detects_needle_sends_results_and_overlay():
    slots = LatestSlots()
    sent = []
    pipe = Pipeline(
        slots, CLASSICAL,
        send=lambda m, cb: (sent.append(m), cb and cb(time.monotonic_ns()), 1)[2]
    )
    got, ev = collect(pipe, 1)
    pipe.set_plan([10 * 0.2, 20 * 0.2, 0], [150 * 0.2, 130 * 0.2, 0])
    pipe.start()
    put(slots, frame_msg())
    assert ev.wait(10)
    pipe.stop()
    res, rgb = got[0]
    assert res.needle is not None and res.needle.in_image
    np.testing.assert_allclose(res.needle.tip_ij, [150, 130], atol=4)
    assert res.needle.has_3d  # in-plane frame: LPS from the IMAGE matrix
    np.testing.assert_allclose(res.needle.tip_lps[:2], [30, 26], atol=1.0)
    assert res.state == GuidanceState.OK, res.reasons
    types = {(m.message_type, m.device_name) for m in sent}
    assert {
        ("IMAGE", "NeedleLabel"),
        ("TRANSFORM", "NeedleTipToRAS"),
        ("STRING", "GuidanceWarning"),
        ("STATUS", "GuidanceWarning"),
        ("POINT", "Plan"),
    } <= types
    label = next(m for m in sent if m.message_type == "IMAGE")
    assert label.image.dtype == np.uint8 and label.image.shape == (1, 256, 256)
    assert label.image[0, 75, 80] == 1  # on the needle
    assert rgb.shape == (256, 256, 3)
    for name in ("preprocess", "segment", "needle", "safety", "overlay", "end_to_end"):
        assert pipe.stats.values(name).size == 1, name


def test_stale_when_frames_stop():
    slots = LatestSlots()
    pipe = Pipeline(slots, config=classical(ingest={"stale_after_s": 0.2}))
    states = []
    ev = threading.Event()

    def on_result(r, rgb):
        states.append((r.state, rgb.copy()))
        if r.state == GuidanceState.STALE:
            ev.set()

    pipe.on_result = on_result
    pipe.start()
    put(slots, frame_msg())
    assert ev.wait(5)
    pipe.stop()
    assert states[0][0] != GuidanceState.STALE
    stale_rgb = states[-1][1]
    # The STALE banner is grey, never the green "OK".
    assert tuple(stale_rgb[2, stale_rgb.shape[1] // 2]) == (128, 128, 128)


def test_old_frame_is_stale_not_ok():
    slots = LatestSlots()
    pipe = Pipeline(slots, config=classical(ingest={"stale_after_s": 0.3}))
    got, ev = collect(pipe, 1)
    pipe.start()
    msg = frame_msg()
    slots.put(msg.device_name, "IMAGE", msg, 0.0, time.monotonic_ns() - int(2e9), "test")
    assert ev.wait(5)
    pipe.stop()
    assert got[0][0].state == GuidanceState.STALE
    assert "old when processed" in got[0][0].reasons[0]


def test_stale_needle_pose_reported():
    slots = LatestSlots()
    pipe = Pipeline(slots, CLASSICAL, frame_kind="projection")
    got, ev = collect(pipe, 1)
    pipe.start()
    m = np.eye(4)
    slots.put(
        "NeedleToReference",
        "TRANSFORM",
        pyigtl.TransformMessage(m, device_name="NeedleToReference"),
        0.0,
        time.monotonic_ns() - int(1e9),
        "test",
    )
    put(slots, frame_msg())
    assert ev.wait(5)
    pipe.stop()
    r = got[0][0]
    assert r.state == GuidanceState.STALE and any("NeedleToReference" in x for x in r.reasons)


def test_no_needle_means_no_guidance():
    slots = LatestSlots()
    pipe = Pipeline(slots, CLASSICAL)
    got, ev = collect(pipe, 1)
    pipe.start()
    put(slots, frame_msg(with_needle=False))
    assert ev.wait(5)
    pipe.stop()
    assert got[0][0].state == GuidanceState.NO_GUIDANCE and got[0][0].needle is None


def test_slow_pipeline_skips_to_newest_frame():
    slots = LatestSlots()
    pipe = Pipeline(slots, CLASSICAL)
    orig = pipe.segment.process

    def slow(item):
        threading.Event().wait(0.05)
        orig(item)

    pipe.segment.process = slow  # type: ignore[method-assign]
    got, ev = collect(pipe, 3)
    pipe.start()
    for k in range(40):
        put(slots, frame_msg(seed=k))
        threading.Event().wait(0.005)
    ev.wait(5)
    threading.Event().wait(0.3)
    pipe.stop()
    assert pipe.frames_dropped > 10  # skipped, not queued
    assert pipe.frames_processed < 40
    assert got[-1][0].seq == 40 or pipe.frames_processed + pipe.frames_dropped == 40


def test_a_failing_stage_does_not_stop_the_loop():
    slots = LatestSlots()
    pipe = Pipeline(slots, CLASSICAL)
    calls = {"n": 0}
    orig = pipe.preprocess.process

    def flaky(item):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        orig(item)

    pipe.preprocess.process = flaky  # type: ignore[method-assign]
    got, ev = collect(pipe, 2)
    pipe.start()
    put(slots, frame_msg(seed=1))
    deadline = time.monotonic() + 5
    while len(got) < 1 and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    put(slots, frame_msg(seed=2))
    assert ev.wait(5)
    pipe.stop()
    assert got[0][0].state == GuidanceState.NO_GUIDANCE and "boom" in got[0][0].reasons[0]
    assert got[1][0].needle is not None  # the next frame is processed normally
    assert got[1][0].reasons == ("no plan loaded: no safety check",)


def test_load_config_file_errors(tmp_path):
    from guidance.pipeline.config import load_config

    p = tmp_path / "c.json"
    p.write_text("{bad json")
    with pytest.raises(ConfigError, match=r"c\.json: invalid JSON"):
        load_config(p)
    p.write_text(json.dumps({"safety": {"margin": 1}}))
    with pytest.raises(ConfigError, match=r"unknown key safety\.margin"):
        load_config(p)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.json")
    assert PipelineConfig().safety.danger_offset_mm > PipelineConfig().safety.caution_offset_mm


def test_identity_and_non_rigid_needle_poses_are_not_trusted():
    """A tracker's identity matrix ("out of view") and a non-rigid matrix are not used
    as the needle, however fresh."""
    for matrix, reason in ((np.eye(4), "reported invalid"), (np.diag([2.0, 1, 1, 1]), None)):
        slots = LatestSlots()
        pipe = Pipeline(slots, CLASSICAL, frame_kind="projection")
        got, ev = collect(pipe, 1)
        pipe.start()
        msg = pyigtl.TransformMessage(matrix, device_name="NeedleToReference")
        slots.put("NeedleToReference", "TRANSFORM", msg, 0.0, time.monotonic_ns(), "test")
        put(slots, frame_msg())
        assert ev.wait(5)
        pipe.stop()
        r = got[0][0]
        assert r.needle is None or not r.needle.has_3d  # no 3D needle from that pose
        if reason:
            assert any(reason in x for x in r.reasons), r.reasons
        else:
            assert pipe.tools.rejected == 1
