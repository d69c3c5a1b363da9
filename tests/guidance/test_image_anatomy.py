"""Ultrasound: the nerves and vessels the model sees drive the warnings. Scripted
sequences with ground truth (a needle tip moving in a model-grid scene of one nerve and
one vessel), then the whole loop with a scripted segmenter: the decision, the state, the
STRING and STATUS sent, and the overlay."""

from __future__ import annotations

import math
import time

import cv2
import numpy as np
import pytest

from guidance.records import SafetyReason, WarningLevel
from guidance.safety.image_anatomy import ImageAnatomyCheck, ImageAnatomyConfig

SP = 0.2  # model-grid spacing, mm per pixel
NERVE = (150, 128, 20)  # centre column, row, radius (px): 4 mm radius
VESSEL = (150, 60, 15)


def scene(nerve=True, vessel=True, noise_vessel_at=None, p=0.95, speck=False):
    """(probs (4, 256, 256), labels) of a model's output."""
    labels = np.zeros((256, 256), np.uint8)
    if nerve:
        cv2.circle(labels, NERVE[:2], NERVE[2], 2, -1)
    if vessel:
        cv2.circle(labels, VESSEL[:2], VESSEL[2], 3, -1)
    if noise_vessel_at is not None:
        cv2.circle(labels, noise_vessel_at, 6, 3, -1)
    if speck:
        cv2.circle(labels, (30, 200), 1, 2, -1)
    probs = np.zeros((4, 256, 256), np.float32)
    for c in range(4):
        probs[c][labels == c] = p if c else 1.0
    probs[0][labels != 0] = 1.0 - p
    return probs, labels


def tip_at_nerve_distance(d_mm: float) -> np.ndarray:
    """A tip on the nerve's left, ``d_mm`` from its edge (negative: inside)."""
    cx, cy, r = NERVE
    return np.array([cx - r - d_mm / SP, float(cy)])


def run(check, tips, scenes=None, axis=(1.0, 0.0), dt=1 / 15):
    out = []
    for k, tip in enumerate(tips):
        probs, labels = scenes[k] if scenes is not None else scene()
        out.append(check.check(probs, labels, SP, np.asarray(tip, float),
                               np.asarray(axis, float), lambda p: np.asarray(p, float),
                               k * dt))
    return out


def level(res, name):
    return max((w.level for w in res.findings if w.structure == name),
               default=WarningLevel.NONE)


def test_approach_a_nerve_caution_then_danger_on_contact_then_cleared_on_withdrawal():
    check = ImageAnatomyCheck()
    path = [5.0, 4.0, 3.0, 1.5, 1.2, 0.8, 0.3, 0.1, 0.0, 0.0, 1.5, 3.5, 3.5, 3.5, 3.5, 3.5]
    res = run(check, [tip_at_nerve_distance(d) for d in path], axis=(0.0, 1.0))
    levels = [level(r, "nerve (US)") for r in res]
    N, C, D = WarningLevel.NONE, WarningLevel.CAUTION, WarningLevel.DANGER
    # CAUTION on the 2nd frame within 2 mm (1 frame late); DANGER on the 2nd frame within
    # 0.5 mm; withdrawn, down to the highest level of 3 clear frames (CAUTION: 1.5 mm was
    # among them), then to NONE after 3 more.
    assert levels == [N, N, N, N, C, C, C, D, D, D, D, D, C, C, C, N], levels
    danger = next(r for r in res if level(r, "nerve (US)") == D)
    w = next(w for w in danger.findings if w.structure == "nerve (US)")
    assert w.reason == SafetyReason.INTRANEURAL_RISK and "intraneural risk" in w.message
    assert w.distance_mm == pytest.approx(0.1, abs=SP)
    assert res[0].clearances[0].structure == "nerve (US)"
    assert res[0].clearances[0].clearance_mm == pytest.approx(5.0, abs=SP)


def test_tip_entering_a_vessel_is_danger_within_three_frames():
    check = ImageAnatomyCheck()
    cx, cy, r = VESSEL
    xs = [cx - r - 20, cx - r - 10, cx - r + 3, cx - r + 6, cx - r + 9, cx]
    res = run(check, [(x, cy) for x in xs], axis=(1.0, 0.0))
    levels = [level(r_, "vessel (US)") for r_ in res]
    first_inside = 2
    first_danger = levels.index(WarningLevel.DANGER)
    assert first_danger - first_inside <= 3 - 1  # on the 2nd frame inside: 1 frame late
    w = next(w for w in res[first_danger].findings if w.structure == "vessel (US)")
    assert w.reason == SafetyReason.INTRAVASCULAR_RISK and "intravascular risk" in w.message
    assert w.distance_mm < 0


def test_a_vessel_on_the_path_ahead_is_caution_with_its_depth():
    check = ImageAnatomyCheck()
    cx, cy, r = VESSEL
    tip = (cx - r - 25.0, float(cy))  # 5 mm before the vessel, pointing at it
    res = run(check, [tip, tip], axis=(1.0, 0.0))
    assert level(res[1], "vessel (US)") == WarningLevel.CAUTION
    w = next(w for w in res[1].findings if w.structure == "vessel (US)")
    assert w.reason == SafetyReason.BREACH_AHEAD and "on the path ahead" in w.message
    assert res[1].breach_structure == "vessel (US)"
    assert res[1].depth_to_breach_mm == pytest.approx(5.0, abs=0.5)
    away = run(ImageAnatomyCheck(), [tip, tip], axis=(-1.0, 0.0))  # pointing away
    assert level(away[1], "vessel (US)") == WarningLevel.NONE


def test_isolated_noisy_frames_flip_nothing():
    check = ImageAnatomyCheck()
    tip = tip_at_nerve_distance(5.0)
    noisy = scene(noise_vessel_at=(int(tip[0]), int(tip[1])))  # a vessel under the tip
    scenes = [scene(), noisy, scene(), noisy, scene(), scene()]
    res = run(check, [tip] * 6, scenes)
    assert [level(r, "vessel (US)") for r in res] == [WarningLevel.NONE] * 6
    # ... and one clean frame during a DANGER does not clear it.
    check = ImageAnatomyCheck()
    inside, far = tip_at_nerve_distance(-1.0), tip_at_nerve_distance(6.0)
    res = run(check, [inside, inside, far, inside, inside], axis=(0.0, 1.0))
    assert [level(r, "nerve (US)") for r in res][1:] == [WarningLevel.DANGER] * 4


def test_unsure_and_tiny_components_are_ignored():
    check = ImageAnatomyCheck()
    tip = tip_at_nerve_distance(-1.0)
    unsure = scene(p=0.4)
    res = run(check, [tip] * 3, [unsure] * 3)
    assert all(level(r, "nerve (US)") == WarningLevel.NONE for r in res)
    speck = scene(nerve=False, vessel=False, speck=True)
    found = check.structures(*speck, SP, np.array([30.0, 200.0]), np.array([1.0, 0.0]),
                             lambda p: p)
    assert found == []


def test_a_gap_in_the_frames_restarts_the_count():
    check = ImageAnatomyCheck()
    tip = tip_at_nerve_distance(-1.0)
    probs, labels = scene()
    r1 = check.check(probs, labels, SP, tip, np.array([0.0, 1.0]), lambda p: p, 0.0)
    r2 = check.check(probs, labels, SP, tip, np.array([0.0, 1.0]), lambda p: p, 2.0)
    assert level(r1, "nerve (US)") == level(r2, "nerve (US)") == WarningLevel.NONE


@pytest.mark.parametrize("bad", [{"rise_frames": 4}, {"rise_frames": 0},
                                 {"nerve_contact_mm": 3.0}, {"min_probability": 0.0},
                                 {"look_ahead_mm": -1.0}])
def test_config_refuses_bad_values(bad):
    with pytest.raises(ValueError, match="image_anatomy"):
        ImageAnatomyConfig(**bad)


# -- the whole loop ------------------------------------------------------------------


class SceneSegmenter:
    """A scripted US model: the scene's nerve and vessel, and a needle from the top left
    to ``tip`` (model grid = frame / 2, spacing 0.2 mm per model pixel)."""

    def __init__(self) -> None:
        from models.card import ModelCard

        self.card = ModelCard(
            name="scripted-us", modality="us", version="0",
            labels=("background", "needle", "nerve", "vessel"), input_shape=(256, 256),
            pixel_spacing_mm=0.2, spacing_range_mm=(0.1, 0.3),
            normalisation={"method": "zscore"}, architecture={}, onnx_file="x.onnx",
            onnx_sha256="0" * 64, opset=17, needle_rule={})
        self.degraded = False
        self.degraded_reason = None
        self.tip = (60, 128)

    focus_px = 0  # ultrasound: always the whole frame

    def segment(self, plane, spacing_mm, focus_ij=None):
        assert focus_ij is None
        from models.preprocess import GridMap
        from models.segmenter import Segmentation

        probs, labels = scene()
        cv2.line(labels, (10, 128), self.tip, 1, 2)
        probs[1] = (labels == 1).astype(np.float32)
        grid = GridMap(plane.shape[:2], (256, 256), plane.shape[0] / 256, spacing_mm *
                       plane.shape[0] / 256)
        return Segmentation(labels, probs, grid, "scripted", 1.0, 1.0, True,
                            np.zeros((256, 256), np.float32))


@pytest.mark.parametrize("unregistered_tracker", [False, True])
def test_the_loop_sends_the_us_anatomy_decision_and_draws_it(unregistered_tracker):
    """Also when a tracked needle has no path to the planning CT yet (NO_GUIDANCE for the
    3D guidance): the nerve's DANGER is still decided and sent (STATUS 2)."""
    import threading

    import pyigtl

    from guidance.geometry import ImageVolume
    from guidance.io.messages import image_message_from_volume
    from guidance.io.slots import LatestSlots
    from guidance.pipeline.config import config_from_dict
    from guidance.pipeline.loop import Pipeline
    from guidance.records import GuidanceState

    slots = LatestSlots()
    sent = []
    config = config_from_dict({"ingest": {"modality": "us"},
                               "segment": {"crosscheck": False}})
    pipe = Pipeline(slots, config, send=lambda m, cb: (sent.append(m), 1)[1])
    seg = SceneSegmenter()
    pipe.segment.segmenters["us"] = seg
    pipe.set_image_target_px(2 * 125.0, 2 * 128.0)  # frame pixels: beside the nerve
    results = []
    ev = threading.Event()

    def on_result(result, rgb):
        results.append((result, None if rgb is None else rgb.copy()))
        ev.set()

    pipe.on_result = on_result
    pipe.start()
    try:
        if unregistered_tracker:  # a tracked needle, no ReferenceToCT: MISSING_TRANSFORM
            pose = pyigtl.TransformMessage(np.eye(4), device_name="NeedleTipToReference")
            slots.put(pose.device_name, pose.message_type, pose, time.time(),
                      time.monotonic_ns(), "test")
        img = np.random.default_rng(0).rayleigh(30, (512, 512)).clip(0, 255).astype(np.uint8)
        vol = ImageVolume(img[None], np.diag([0.1, 0.1, 1.0, 1.0]))  # 0.2 mm model grid
        for k, tip_x in enumerate([60, 60, 136, 136, 136]):  # far; then ~1 mm inside
            seg.tip = (tip_x, 128)
            msg = image_message_from_volume(vol, "Image_Reference", 100.0 + k, "lps")
            ev.clear()
            slots.put(msg.device_name, msg.message_type, msg, msg.timestamp,
                      time.monotonic_ns(), "test")
            assert ev.wait(10)
    finally:
        pipe.stop()
    frames = [r for r, _ in results if r.kind == "frame"]
    first, last = frames[0], frames[-1]
    codes = {r.reason.code for r in first.state_reasons}
    assert "image_anatomy_only" in codes and "no_plan" not in codes  # no room: not placed
    if unregistered_tracker:
        assert first.state == GuidanceState.NO_GUIDANCE and "missing_transform" in codes
    else:
        assert first.state == GuidanceState.OK
    assert first.decision.level == WarningLevel.NONE
    assert first.decision.tip_to_target_mm == pytest.approx((125 - 60) * 0.2, abs=0.5)
    assert last.decision.level == WarningLevel.DANGER
    assert last.decision.structure == "nerve (US)"
    assert last.decision.reason == SafetyReason.INTRANEURAL_RISK
    of_last = [m for m in sent if abs(m.timestamp - 104.0) < 1e-6]  # the last frame's
    string = next(m.string for m in of_last if m.message_type == "STRING")
    assert string.startswith("DANGER: nerve (US): tip inside a nerve")
    status = next(m for m in of_last if m.message_type == "STATUS")
    assert status.code == 2 and status.subcode == int(WarningLevel.DANGER)
    assert any(s.kind == "nerve" and s.tip_mm < 0 for s in last.image_structures)
    rgb = next(img for r, img in results if r is last)
    assert rgb is not None and rgb.shape[:2] == (512, 512)
    # the nerve's outline in its class colour, its distance written beside it
    from guidance.pipeline.overlay import label_colour

    nerve = np.array(label_colour(2, "nerve"), np.uint8)
    assert int(np.all(rgb == nerve, axis=2).sum()) > 50
    assert not math.isnan(last.decision.tip_to_target_mm)


def test_bench_modality_us_times_the_anatomy_check(tmp_path, capsys):
    """`guidance bench --modality us`: the anatomy check per frame, with the segment
    stage in the same run, as percentiles in JSON and a histogram PNG."""
    import json

    from guidance.cli.main import main

    out = tmp_path / "anatomy.json"
    assert main(["bench", "--modality", "us", "--size", "256", "--frames", "30",
                 "--json", str(out)]) == 0
    assert "anatomy check" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["frames_timed"] > 0 and data["backend"]
    for key in ("anatomy_ms", "segment_ms"):
        p = data[key]
        assert 0 < p["p50"] <= p["p95"] <= p["p99"] <= p["max"]
    assert data["target_p99_ms"] == 2.0 and isinstance(data["meets_target"], bool)
    assert out.with_suffix(".png").stat().st_size > 1000
    assert main(["bench", "--modality", "fluoro", "--json", str(out)]) == 2
