"""Pipeline machinery with fake inputs: outputs, STALE handling, latest value wins,
failures, modality, config validation."""

from __future__ import annotations

import json
import re
import threading
import time

import cv2
import numpy as np
import pytest

from guidance.geometry import ImageVolume
from guidance.io.messages import image_message_from_volume
from guidance.io.slots import LatestSlots
from guidance.navigation.setup import static_room
from guidance.pipeline.config import ConfigError, PipelineConfig, config_from_dict
from guidance.pipeline.loop import Pipeline, modality_of
from guidance.pipeline.outputs import status_code
from guidance.planning.plan import Plan
from guidance.records import GuidanceState, WarningLevel

#: These tests exercise the loop's machinery on painted ultrasound-like frames with the
#: classical detector; the model path is tested in test_segment_stage.py, the room (poses,
#: calibrations) in test_room.py.
CLASSICAL = config_from_dict({"segment": {"model": "none"}, "ingest": {"modality": "us"}})
#: The frames are sent in the Reference frame, taken here as the planning CT.
REFERENCE_IS_CT = static_room({"ReferenceToCT": np.eye(4)}, "test: reference = CT")


def classical(**sections):
    ingest = {"modality": "us", **sections.pop("ingest", {})}
    return config_from_dict({"segment": {"model": "none"}, "ingest": ingest, **sections})


def pipeline(slots, config=CLASSICAL, **kw):
    return Pipeline(slots, config, room=kw.pop("room", REFERENCE_IS_CT), **kw)


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


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"safety": {"caution_extra_mm": -2}},
         "config: safety.caution_extra_mm: expected a number in [0, 50] mm, got -2"),
        ({"safety": {"caution_extra": 2}}, "safety.caution_extra: unknown key (allowed: "),
        ({"safty": {}}, "config: safty: unknown key (allowed: image_anatomy, ingest"),
        ({"safety": {"danger_ahead_mm": "5"}}, "danger_ahead_mm: expected a number in [0, 100] "
                                               "mm, got '5'"),
        ({"segment": {"polarity": "grey"}},
         "segment.polarity: expected one of 'bright', 'dark', got 'grey'"),
        ({"safety": {"lateral_caution_mm": 1.0}},
         "safety.lateral_caution_mm: must be >= lateral_info_mm (2 mm), got 1.0"),
        ({"preprocess": {"work_size": True}},
         "preprocess.work_size: expected an integer in [32, 4096] px, got True (a boolean)"),
        ({"ingest": {"modality": "mri"}}, "ingest.modality: expected one of '', 'us'"),
        ({"ingest": {"needle_pose": "NeedleToReference"}}, "ingest.needle_pose: unknown key"),
        ({"navigation": {"time_base": "gps"}},
         "navigation.time_base: expected one of 'sender', 'receive', got 'gps'"),
        ({"navigation": {"stale_limits_s": {"needle": 0.1}}},
         "navigation.stale_limits_s.needle: transform name must look like 'FromToTo'"),
        ({"navigation": {"stale_limits_s": {"NeedleToReference": 0}}},
         "navigation.stale_limits_s.NeedleToReference: expected a number in (0, 10] s, got 0"),
        ({"navigation": {"image_frame": "image"}}, "navigation.image_frame: expected a frame name"),
        ([], "config: expected an object"),
    ],
)
def test_config_errors_name_the_key(data, reason):
    with pytest.raises(ConfigError, match=re.escape(reason)):
        config_from_dict(data)


def test_config_ok_and_ints_for_floats():
    cfg = config_from_dict({"safety": {"caution_extra_mm": 2}, "ingest": {"image_device": "X"},
                            "navigation": {"stale_limits_s": {"NeedleToReference": 0.1}}})
    assert cfg.safety.caution_extra_mm == 2 and cfg.ingest.image_device == "X"
    assert cfg.navigation.stale_limits_s == {"NeedleToReference": 0.1}


def test_detects_needle_sends_results_and_overlay():
    slots = LatestSlots()
    sent = []
    pipe = pipeline(
        slots, send=lambda m, cb: (sent.append(m), cb and cb(time.monotonic_ns()), 1)[2]
    )
    got, ev = collect(pipe, 1)
    pipe.set_plan(Plan([10 * 0.2, 20 * 0.2, 0], [150 * 0.2, 130 * 0.2, 0]))
    pipe.start()
    put(slots, frame_msg())
    assert ev.wait(10)
    pipe.stop()
    res, rgb = got[0]
    assert res.needle is not None and res.needle.in_image
    np.testing.assert_allclose(res.needle.tip_ij, [150, 130], atol=4)
    assert res.needle.has_3d  # in-plane frame placed through ReferenceToCT
    np.testing.assert_allclose(res.needle.tip_lps[:2], [30, 26], atol=1.0)
    assert res.state == GuidanceState.OK, res.reasons
    # A plan without structures: the decision says the anatomy is not checked.
    assert res.decision is not None and res.decision.reason.value == "anatomy_not_checked"
    string = next(m for m in sent if m.message_type == "STRING")
    assert string.string == res.decision.text() and string.string.startswith("CAUTION")
    status = next(m for m in sent if m.message_type == "STATUS")
    assert status.code == 1 and status.subcode == int(WarningLevel.CAUTION)
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
    pipe = pipeline(slots, classical(ingest={"stale_after_s": 0.2}))
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
    pipe = pipeline(slots, classical(ingest={"stale_after_s": 0.3}))
    got, ev = collect(pipe, 1)
    pipe.start()
    msg = frame_msg()
    slots.put(msg.device_name, "IMAGE", msg, 0.0, time.monotonic_ns() - int(2e9), "test")
    assert ev.wait(5)
    pipe.stop()
    assert got[0][0].state == GuidanceState.STALE
    assert "old when processed" in got[0][0].reasons[0]


def test_no_needle_means_no_guidance():
    slots = LatestSlots()
    pipe = pipeline(slots)
    got, ev = collect(pipe, 1)
    pipe.start()
    put(slots, frame_msg(with_needle=False))
    assert ev.wait(5)
    pipe.stop()
    assert got[0][0].state == GuidanceState.NO_GUIDANCE and got[0][0].needle is None


def test_slow_pipeline_skips_to_newest_frame():
    slots = LatestSlots()
    pipe = pipeline(slots)
    orig = pipe.segment.process

    def slow(item):
        threading.Event().wait(0.05)
        orig(item)

    pipe.segment.process = slow  # type: ignore[method-assign]
    frames: list[int] = []
    newest = threading.Event()

    def on_result(result, rgb):
        if result.kind == "frame":
            frames.append(result.seq)
            if result.seq == 40:
                newest.set()

    pipe.on_result = on_result
    pipe.start()
    for k in range(40):
        put(slots, frame_msg(seed=k))
        threading.Event().wait(0.005)  # the scanner's frame interval, not a wait for a result
    assert newest.wait(10), f"the newest frame (40) was never processed: {frames}"
    pipe.stop()  # joins the thread: the counters are final
    assert frames[-1] == 40  # the last frame processed is the newest one
    assert frames == sorted(frames)  # never an older frame after a newer one
    assert pipe.frames_dropped > 10  # skipped, not queued
    assert pipe.frames_processed < 40
    # Every frame was either processed or replaced in its slot before processing.
    assert pipe.frames_processed + pipe.frames_dropped == 40


def test_a_failing_stage_does_not_stop_the_loop():
    slots = LatestSlots()
    pipe = pipeline(slots)
    calls = {"n": 0}
    orig = pipe.preprocess.process

    def flaky(item):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        orig(item)

    pipe.preprocess.process = flaky  # type: ignore[method-assign]
    got, ev = collect(pipe, 2)
    first = threading.Event()
    collected = pipe.on_result
    assert collected is not None

    def on_result(result, rgb):
        collected(result, rgb)
        first.set()

    pipe.on_result = on_result
    pipe.start()
    put(slots, frame_msg(seed=1))
    assert first.wait(5)  # the failed frame's result is out before the next frame
    put(slots, frame_msg(seed=2))
    assert ev.wait(5)
    pipe.stop()
    assert got[0][0].state == GuidanceState.NO_GUIDANCE and "boom" in got[0][0].reasons[0]
    assert got[1][0].needle is not None  # the next frame is processed normally
    assert got[1][0].reasons == ("no plan loaded (--plan plan.json): no safety check",)


def test_load_config_file_errors(tmp_path):
    from guidance.pipeline.config import load_config

    p = tmp_path / "c.json"
    p.write_text("{bad json")
    with pytest.raises(ConfigError, match=r"c\.json: invalid JSON"):
        load_config(p)
    p.write_text(json.dumps({"safety": {"margin": 1}}))
    with pytest.raises(ConfigError, match=r"c\.json: safety\.margin: unknown key \(allowed: "):
        load_config(p)
    with pytest.raises(ConfigError, match=r"missing\.json: cannot read: no such config file"):
        load_config(tmp_path / "missing.json")
    assert PipelineConfig().safety.lateral_caution_mm > PipelineConfig().safety.lateral_info_mm


def test_modality_from_configuration_or_metadata_never_from_pixels():
    assert modality_of("fluoro", {"Modality": "US"}) == ("fluoro", "")
    assert modality_of("", {"Modality": "US"}) == ("us", "")
    assert modality_of("", {"modality": "rf"}) == ("fluoro", "")
    assert modality_of("", {"Modality": "CT"}) == ("ct", "")
    m, why = modality_of("", {"Modality": "MR"})
    assert m == "" and "unknown modality 'MR'" in why
    m, why = modality_of("", {})
    assert m == "" and "--modality" in why
    # A uint16 frame without metadata is refused, not guessed to be fluoroscopy.
    slots = LatestSlots()
    sent = []
    pipe = pipeline(slots, config_from_dict({"segment": {"model": "none"}}),
                    send=lambda m, cb: (sent.append(m), 1)[1])
    got, ev = collect(pipe, 1)
    pipe.start()
    img = (np.random.default_rng(0).random((64, 64)) * 60000).astype(np.uint16)
    msg = image_message_from_volume(ImageVolume(img[None], np.eye(4)), "Image_Reference",
                                    time.time(), "lps")
    put(slots, msg)
    assert ev.wait(5)
    pipe.stop()
    r = got[0][0]
    assert r.state == GuidanceState.NO_GUIDANCE and "refused" in r.reasons[0]
    assert r.state_reasons[0].reason.code == "modality_unknown"
    status = next(m for m in sent if m.message_type == "STATUS")
    assert status.code == 16
    # With IGTLv3 metadata the same frame is taken as what it says.
    slots = LatestSlots()
    pipe = pipeline(slots, config_from_dict({"segment": {"model": "none"}}))
    got, ev = collect(pipe, 1)
    pipe.start()
    msg.header_version = 2
    msg.metadata = {"Modality": "US"}
    put(slots, msg)
    assert ev.wait(5)
    pipe.stop()
    assert got[0][0].modality == "us"


def test_status_codes_from_state_and_level():
    assert status_code(GuidanceState.OK, WarningLevel.DANGER) == 2
    assert status_code(GuidanceState.DEGRADED, WarningLevel.DANGER) == 2
    assert status_code(GuidanceState.STALE, WarningLevel.DANGER) == 7
    assert status_code(GuidanceState.OK, WarningLevel.CAUTION) == 1
    assert status_code(GuidanceState.NO_GUIDANCE, WarningLevel.NONE) == 16
    # a US nerve/vessel DANGER on a current frame without 3D guidance is still DANGER
    assert status_code(GuidanceState.NO_GUIDANCE, WarningLevel.DANGER) == 2
    assert status_code(GuidanceState.DEGRADED, WarningLevel.INFO) == 13


def test_a_frame_in_an_unknown_frame_is_not_placed_and_says_which_transform_lacks():
    """IMAGE device ``Image_Scanner``: its matrix maps to frame Scanner, which nothing joins
    to the planning CT: segmented, not placed, no 3D needle, the missing link named."""
    slots = LatestSlots()
    sent = []
    pipe = pipeline(slots, send=lambda m, cb: (sent.append(m), 1)[1])
    got, ev = collect(pipe, 1)
    pipe.start()
    msg = frame_msg()
    msg.device_name = "Image_Scanner"
    put(slots, msg)
    assert ev.wait(5)
    pipe.stop()
    r = got[0][0]
    assert r.needle is not None and r.needle.in_image and not r.needle.has_3d
    assert r.placement is None
    codes = [x.reason.code for x in r.state_reasons]
    assert "frame_not_placed" in codes and "no_3d_needle" in codes
    assert any("missing ScannerToCT" in m for m in r.reasons)
    assert r.state == GuidanceState.NO_GUIDANCE
    label = next(m for m in sent if m.message_type == "IMAGE")
    # Not placed: the label map goes back on the frame's own geometry.
    np.testing.assert_allclose(label.ijk_to_world_matrix[:3, :3], np.diag([-0.2, -0.2, 1.0]))


def test_frames_that_stop_are_stale_even_while_other_poses_stream():
    """A probe pose at 100 Hz leads to no update (no tracked needle): it must not keep
    the STALE report away when the frames stop."""
    slots = LatestSlots()
    pipe = pipeline(slots, classical(ingest={"stale_after_s": 0.2}))
    stale = threading.Event()

    def on_result(r, rgb):
        if r.state == GuidanceState.STALE and "no frame" in r.reasons[0]:
            stale.set()

    pipe.on_result = on_result
    pipe.start()
    put(slots, frame_msg())
    m = np.eye(4)
    m[0, 3] = 5.0
    deadline = time.monotonic() + 3.0
    import pyigtl

    t0 = time.monotonic()
    while not stale.is_set() and time.monotonic() < deadline:
        put(slots, pyigtl.TransformMessage(m, timestamp=time.time(),
                                           device_name="ProbeToReference"))
        stale.wait(0.01)
    waited = time.monotonic() - t0
    pipe.stop()
    assert stale.is_set()
    assert waited < 1.0  # 0.2 s limit: STALE while the poses still stream
    assert pipe.navigator.graph.has("ProbeToReference")  # the poses were taken
