"""CT control slabs, the way a scanner feeds them: simulated slabs of the real CT
(:mod:`guidance.sim.ct_slab`) through the whole control-scan path and the live loop --
a needle crossing 4 slices at 20 degrees, the tip beyond the slab, a needle-free slab,
10 mm / 3 degrees of patient motion, flipped and oblique geometry, bad slabs."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pyigtl
import pytest

from guidance.ctscan.processor import ControlScanProcessor
from guidance.ctscan.result import SlabError
from guidance.ctscan.slab import slab_from_message
from guidance.ctscan.timeline import read_timeline
from guidance.io.messages import image_message_from_volume
from guidance.io.slots import LatestSlots
from guidance.pipeline.config import config_from_dict
from guidance.pipeline.frame import Reason
from guidance.pipeline.loop import Pipeline
from guidance.planning.plan import Plan
from guidance.records import GuidanceState, SafetyReason, WarningLevel
from tests.peers import require_real_ct

# A target beside L1-L2 and a posterolateral needle (planning-CT LPS mm), found on the
# real CT by the demo's planner; the tests tilt it out of the axial plane.
TARGET = np.array([-17.0, 167.0, -200.0])


@pytest.fixture(scope="module")
def ct():
    require_real_ct()
    from guidance.data import load_real_ct

    return load_real_ct()


@pytest.fixture(scope="module")
def segmenter():
    from models.segmenter import Segmenter
    from models.shipped import shipped_card

    return Segmenter(shipped_card("ct"), threads=2)


def needle_path(tilt_deg: float, length_mm: float = 60.0, target=TARGET):
    """Entry -> target from the patient's right-posterior skin, tilted ``tilt_deg`` out of
    the axial plane (towards the head)."""
    yaw = math.radians(35.0)
    u = np.array([math.sin(yaw), -math.cos(yaw), 0.0])  # towards left-anterior
    t = math.radians(tilt_deg)
    u = math.cos(t) * u + math.sin(t) * np.array([0.0, 0.0, 1.0])
    return target - length_mm * u, target, u


def processor(segmenter, ct, entry, target):
    p = ControlScanProcessor(segmenter)
    p.set_planning_ct(ct)
    p.set_plan(Plan(entry, target))
    return p


def angle_deg(a, b):
    return math.degrees(math.acos(min(1.0, abs(float(a @ b)))))


def test_needle_crossing_four_slices_at_20_degrees(ct, segmenter):
    from guidance.sim.ct_slab import make_slab

    entry, target, u = needle_path(20.0)
    # 2.5 mm slices; centred 5 mm above the tip: ~4 slices of needle below the centre.
    slab, truth = make_slab(ct, entry, target, n_slices=8, thickness_mm=2.5,
                            centre_lps=target - 9.0 * u)
    res = processor(segmenter, ct, entry, target).process(slab)
    assert truth.tip_in_slab
    assert res.needle.found, res.needle.message
    assert res.needle.tip_in_slab, res.needle.message
    assert res.needle.slices_crossed >= 4
    assert np.linalg.norm(res.tip_ct_lps - truth.tip_ct_lps) <= 1.5
    assert angle_deg(res.axis_ct_lps, truth.axis_ct_lps) <= 2.0
    assert float(res.axis_ct_lps @ u) > 0  # hub -> tip, not the other way


def test_tip_beyond_the_slab_is_said_not_faked(ct, segmenter):
    from guidance.sim.ct_slab import make_slab

    entry, target, u = needle_path(20.0)
    # A thin slab 20 mm short of the tip along the needle: the needle leaves it deeper.
    slab, truth = make_slab(ct, entry, target, n_slices=3, thickness_mm=2.0,
                            centre_lps=target - 20.0 * u)
    res = processor(segmenter, ct, entry, target).process(slab)
    assert not truth.tip_in_slab
    assert res.needle.found
    assert not res.needle.tip_in_slab
    assert "tip beyond the slab" in res.needle.message
    # What is reported is where the needle leaves the slab: short of the true tip.
    short = float((truth.tip_ct_lps - res.tip_ct_lps) @ truth.axis_ct_lps)
    assert short > 10.0


def test_needle_free_slab_reports_no_needle(ct, segmenter):
    from guidance.sim.ct_slab import make_slab

    entry, target, _ = needle_path(10.0)
    slab, _truth = make_slab(ct, entry, target, n_slices=5, thickness_mm=3.0, needle=False)
    res = processor(segmenter, ct, entry, target).process(slab)
    assert not res.needle.found
    assert "no needle" in res.needle.message
    assert not np.any(np.isfinite(res.tip_ct_lps))


def rigid(translation_mm, axis, deg, centre):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = math.radians(deg)
    r = np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = centre - r @ centre + np.asarray(translation_mm, float)
    return m


def test_patient_motion_10mm_3deg_is_found_and_the_tip_is_in_ct_coordinates(ct, segmenter):
    from guidance.sim.ct_slab import make_slab

    entry, target, _ = needle_path(15.0)
    move = rigid([6.0, -6.0, 5.3], [0.3, 0.2, 1.0], 3.0, TARGET)
    slab, truth = make_slab(ct, entry, target, n_slices=6, thickness_mm=3.0,
                            ct_to_scanner=move)
    res = processor(segmenter, ct, entry, target).process(slab)
    assert res.motion is not None and res.motion.ok, res.motion
    # The slab's frame is the scanner's: its tip is ~10 mm from the planning-CT tip...
    assert np.linalg.norm(truth.tip_scanner_lps - truth.tip_ct_lps) > 8.0
    # ...and registration brings the needle back into the planning CT.
    assert np.linalg.norm(res.tip_ct_lps - truth.tip_ct_lps) <= 2.0
    assert res.motion.rotation_deg == pytest.approx(3.0, abs=1.0)
    found = res.motion.slab_to_ct
    np.testing.assert_allclose(found[:3, :3] @ truth.tip_scanner_lps + found[:3, 3],
                               truth.tip_ct_lps, atol=1.5)


@pytest.mark.parametrize(("flip_i", "tilt"), [(True, 0.0), (False, 15.0), (True, -12.0)])
def test_flipped_and_oblique_geometry(ct, segmenter, flip_i, tilt):
    from guidance.sim.ct_slab import make_slab

    entry, target, _ = needle_path(10.0)
    slab, truth = make_slab(ct, entry, target, n_slices=5, thickness_mm=3.0, flip_i=flip_i,
                            gantry_tilt_deg=tilt)
    res = processor(segmenter, ct, entry, target).process(slab)
    assert res.needle.found, res.needle.message
    assert np.linalg.norm(res.tip_ct_lps - truth.tip_ct_lps) <= 2.0
    assert angle_deg(res.axis_ct_lps, truth.axis_ct_lps) <= 3.0


def image_msg(voxels, matrix, metadata=None, name="CT_Reference"):
    msg = pyigtl.ImageMessage(voxels, ijk_to_world_matrix=matrix, device_name=name)
    if metadata:
        msg.metadata = metadata
    return msg


GOOD = np.diag([0.7, 0.7, 3.0, 1.0])


@pytest.mark.parametrize(("voxels", "matrix", "meta", "match"), [
    (np.zeros((1, 64, 64), np.int16), GOOD, None, "at least 2 slices"),
    (np.zeros((65, 32, 32), np.int16), GOOD, None, "at most 64"),
    (np.zeros((5, 64, 64), np.int16), np.diag([0.7, np.nan, 3.0, 1.0]), None, "NaN"),
    (np.zeros((5, 64, 64), np.int16), np.diag([0.7, 0.7, 0.0, 1.0]), None, "spacing"),
    (np.zeros((5, 64, 64), np.int16),
     np.array([[0.7, 0.7, 0, 0], [0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]]), None,
     "spacing|invertible"),
    (np.zeros((5, 64, 64), np.float32), GOOD, None, "voxel type float32"),
    (np.zeros((5, 64, 64), np.uint16), GOOD, None, "RescaleSlope"),
    (np.zeros((5, 64, 64), np.uint16), GOOD, {"RescaleSlope": "0", "RescaleIntercept": "-1024"},
     "slope"),
    (np.zeros((5, 64, 64), np.uint16), GOOD, {"RescaleSlope": "abc"}, "not a number"),
    (np.zeros((5, 64, 64, 3), np.int16), GOOD, None, "one scalar component"),
])
def test_bad_slabs_are_refused_with_what_is_wrong(voxels, matrix, meta, match):
    with pytest.raises(SlabError, match=match):
        slab_from_message(image_msg(voxels, matrix, meta), "CT_Reference")


def test_rescaled_uint16_slab_and_ras_geometry():
    raw = np.full((4, 32, 32), 1024 + 40, np.uint16)
    raw[:, 5, 5] = 1024 + 3000
    m = np.diag([0.7, 0.7, 2.0, 1.0])
    slab = slab_from_message(image_msg(raw, m, {"RescaleSlope": "1", "RescaleIntercept":
                                                "-1024"}))
    assert slab.voxels.dtype == np.int16
    assert slab.voxels[0, 0, 0] == 40 and slab.voxels[0, 5, 5] == 3000
    assert slab.ijk_to_lps[0, 0] == pytest.approx(0.7)  # pyigtl's default frame is LPS
    ras = image_msg(raw, m, {"RescaleSlope": "1", "RescaleIntercept": "-1024"})
    ras.world_coordinate_system = "ras"
    assert slab_from_message(ras).ijk_to_lps[0, 0] == pytest.approx(-0.7)  # +i: R


# -- the live loop ----------------------------------------------------------------------


def run_loop(ct, messages, tmp_path, plan):
    slots = LatestSlots()
    pipe = Pipeline(slots, config_from_dict({"ingest": {"modality": "ct"}}))
    pipe.set_plan(plan)
    pipe.set_navigation_ct(ct)
    pipe.set_timeline(tmp_path / "timeline.jsonl")
    got = []
    ev = threading.Event()

    def on_result(result, rgb):
        if result.kind != "frame":
            return  # STALE reports between scans (scans are seconds apart)
        got.append(result)
        if len(got) >= len(messages):
            ev.set()

    pipe.on_result = on_result
    pipe.start()
    try:
        for msg in messages:
            n = len(got)
            slots.put(msg.device_name, "IMAGE", msg, msg.timestamp, time.monotonic_ns(),
                      "test")
            deadline = time.monotonic() + 30.0
            while len(got) == n and time.monotonic() < deadline:
                ev.wait(0.05)
        assert ev.wait(30.0)
    finally:
        pipe.stop()
    return got, pipe


def test_live_loop_scans_bad_slab_motion_and_timeline(ct, tmp_path):
    from guidance.sim.ct_slab import make_slab

    entry, target, u = needle_path(15.0)
    plan = Plan(entry - 10 * u, target)
    s1, _ = make_slab(ct, entry, target - 15.0 * u, n_slices=5, thickness_mm=3.0)
    move = rigid([4.0, 0.0, 0.0], [0, 0, 1.0], 0.0, TARGET)
    s2, t2 = make_slab(ct, entry, target, n_slices=5, thickness_mm=3.0, ct_to_scanner=move)
    msgs = [image_message_from_volume(s1, "CT_Reference", time.time()),
            image_msg(np.zeros((1, 64, 64), np.int16), GOOD),
            image_message_from_volume(s2, "CT_Reference", time.time())]
    got, _pipe = run_loop(ct, msgs, tmp_path, plan)
    first, bad, second = got
    assert first.ct_scan is not None and first.ct_scan.has_needle
    assert first.decision is not None  # the plan's check on the slab's needle
    assert first.decision.depth_to_target_mm == pytest.approx(15.0, abs=3.0)
    assert first.needle is not None and first.needle.has_3d
    # The bad slab: refused with its reason, the loop goes on.
    assert bad.ct_scan is None
    assert any(r.reason is Reason.SLAB_REFUSED for r in bad.state_reasons)
    assert bad.state == GuidanceState.NO_GUIDANCE
    # The patient moved 4 mm: found, said as a CAUTION of the one decision.
    assert second.ct_scan is not None and second.ct_scan.motion is not None
    assert second.ct_scan.motion.translation_mm == pytest.approx(4.0, abs=1.0)
    assert second.decision is not None and second.decision.level >= WarningLevel.CAUTION
    motion = [w for w in second.decision.findings if w.reason is SafetyReason.PATIENT_MOTION]
    assert motion and "patient moved" in motion[0].message
    assert np.linalg.norm(second.ct_scan.tip_ct_lps - t2.tip_ct_lps) <= 2.0
    # The timeline: one line per processed scan, written as it went.
    lines = read_timeline(tmp_path / "timeline.jsonl")
    assert [ln["scan"] for ln in lines] == [1, 2]
    assert lines[1]["motion"]["translation_mm"] == pytest.approx(4.0, abs=1.0)
    assert lines[0]["depth_to_target_mm"] == pytest.approx(15.0, abs=3.0)
    assert set(lines[0]) >= {"t_s", "tip_ct_lps", "axis_ct_lps", "tip_to_target_mm",
                             "lateral_offset_mm", "clearances", "level"}


def test_timeline_survives_a_torn_last_line(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"scan": 1}\n{"scan": 2}\n{"scan": 3, "ti')
    assert [x["scan"] for x in read_timeline(p)] == [1, 2]
    p.write_text('{"scan": 1}\nnot json\n{"scan": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_timeline(p)


def test_bench_ct_writes_percentiles_and_the_targets(ct, tmp_path):
    import json

    from guidance.cli.main import main

    out = tmp_path / "bench_ct.json"
    assert main(["bench", "--modality", "ct", "--frames", "3", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["slabs"] == 3 and data["slices"] == 5
    assert set(data["latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert data["stages_ms"]["registration"]["p50"] > 0
    assert data["stages_ms"]["segment"]["p50"] > 0
    assert set(data["targets"]) == {"end_to_end_p99_ms", "segment_p99_ms"}
    assert out.with_suffix(".png").stat().st_size > 1000


def test_demo_ct_scans_the_procedure_and_verifies_the_last_scan(ct, tmp_path):
    import json

    from guidance.cli.main import main
    from guidance.ctscan.timeline import read_timeline

    out = tmp_path / "demo"
    assert main(["demo", "--modality", "ct", "--scenario", "drift", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ct_scans"]["processed"] == 6
    assert summary["ct_scans"]["timeline_errors"] == 0
    lines = read_timeline(out / "procedure_timeline.jsonl")
    assert [ln["scan"] for ln in lines] == [1, 2, 3, 4, 5, 6]
    assert all(ln["needle_found"] for ln in lines)
    # The patient moved 3 mm before the third scan: found and warned about.
    assert lines[0]["motion"]["translation_mm"] < 1.0
    assert lines[3]["motion"]["translation_mm"] == pytest.approx(3.0, abs=1.0)
    assert any(w["structure"] == "patient" for w in summary["warnings"])
    assert summary["verification"]["verdict"] in ("PASS", "OFF_TARGET", "VIOLATION")
    assert (out / "verification" / "dicom").is_dir()


def test_every_control_scan_gets_its_png_past_the_rate_and_the_cap(tmp_path):
    from guidance.pipeline.frame import FrameResult
    from guidance.session.outputs import FrameWriter

    w = FrameWriter(tmp_path, every_s=100.0, max_frames=1)
    rgb = np.zeros((8, 8, 3), np.uint8)
    stale = FrameResult(seq=0, t_s=1.0, received_ns=0, state=GuidanceState.STALE, kind="none")
    w.offer(stale, rgb)
    w.offer(stale, rgb)  # too soon, and the cap is reached
    scan = FrameResult(seq=1, t_s=1.1, received_ns=0, state=GuidanceState.OK)
    w.offer(scan, rgb, force=True)  # a control scan: always
    w.close()
    assert len(w.written) == 2


@pytest.mark.parametrize(("ct_stale_s", "expect_stale"), [(0.4, True), (60.0, False)])
def test_a_control_scan_stands_for_its_own_stale_limit(ct, ct_stale_s, expect_stale):
    from guidance.sim.ct_slab import make_slab

    entry, target, _ = needle_path(10.0)
    slab, _ = make_slab(ct, entry, target, n_slices=3, thickness_mm=3.0)
    slots = LatestSlots()
    pipe = Pipeline(slots, config_from_dict({"ingest": {
        "modality": "ct", "stale_after_s": 0.2, "ct_stale_after_s": ct_stale_s}}))
    scanned, stale = threading.Event(), threading.Event()
    times: dict[str, float] = {}

    def on_result(result, rgb):
        if result.kind == "frame":
            times["scan"] = result.t_s
            scanned.set()
        elif result.state == GuidanceState.STALE and scanned.is_set():
            times.setdefault("stale", result.t_s)
            stale.set()

    pipe.on_result = on_result
    pipe.start()
    try:
        msg = image_message_from_volume(slab, "CT_Reference", time.time())
        slots.put(msg.device_name, "IMAGE", msg, msg.timestamp, time.monotonic_ns(), "test")
        assert scanned.wait(30.0)
        # Frames turn stale after 0.2 s; a control scan stands for ct_stale_after_s.
        assert stale.wait(2.0) is expect_stale
    finally:
        pipe.stop()
    if expect_stale:
        assert times["stale"] - times["scan"] >= 0.35
