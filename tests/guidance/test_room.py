"""``guidance run`` in a (simulated) procedure room, fed as a room feeds it: the tracker
sends the needle marker's pose 160 mm from the tip on its own connection, the patient
reference is registered to the planning CT with a 25 deg rotation, frames lag 80 ms
behind their timestamps, and the calibration files are made by ``guidance calibrate``
from the room's raw data. Ground truth: the simulated needle."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from guidance.navigation.setup import load_room
from guidance.pipeline.config import IngestConfig, PipelineConfig, config_from_dict
from guidance.pipeline.frame import FrameResult
from guidance.pipeline.overlay import LEVEL_COLOURS
from guidance.planning.plan import Plan
from guidance.records import GuidanceState, WarningLevel
from guidance.session import LiveSession
from guidance.sim.room import RoomParams, SimulatedRoom, plan_path, stream_room
from tests.guidance.room_helpers import (
    Received3D,
    angle_deg,
    calibration_files,
    connect,
    real_ct_or_skip,
)

SPEED_MM_S = 10.0


def _disc_approach() -> tuple[np.ndarray, np.ndarray]:
    from guidance.sim.anatomy import disc_approach
    from guidance.sim.params import FluoroParams

    fp = FluoroParams()
    a = disc_approach(fp.disc_levels[0], fp.disc_levels[1], fp.approach_left, fp.approach_deg,
                      fp.target_posterior_mm, fp.target_lateral_mm)
    return a.entry_lps, a.target_lps


def _collect(session: LiveSession) -> list[FrameResult]:
    """Every result of the session's pipeline (in-process ground-truth access)."""
    results: list[FrameResult] = []
    original = session.pipeline.on_result

    def on_result(result: FrameResult, rgb: np.ndarray) -> None:
        results.append(result)
        if original is not None:
            original(result, rgb)

    session.pipeline.on_result = on_result
    return results


def _stream(room: SimulatedRoom, session: LiveSession, seconds: float, start_s: float,
            images: bool, slicer: Received3D) -> None:
    tracker = connect(session.port, slicer)
    scanner = connect(session.port) if images else None
    stop = threading.Event()
    stream_room(room, tracker.send, scanner.send if scanner else None, 15.0, seconds, stop,
                start_s=start_s)
    # Wait (on a condition, not a fixed sleep) until the last updates went out.
    deadline = time.monotonic() + 5.0
    n = -1
    while time.monotonic() < deadline and n != len(slicer.messages):
        n = len(slicer.messages)
        stop.wait(0.3)
    tracker.stop()
    if scanner is not None:
        scanner.stop()


@pytest.fixture(scope="module")
def nav_room(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulatedRoom, list[Path]]:
    """Navigation without images on the real CT: needle at 10 mm/s along the disc
    approach, marker 160 mm from the tip, registration 25 deg, 80 ms image lag."""
    real_ct_or_skip()
    entry, target = _disc_approach()
    room = SimulatedRoom(plan_path(entry, target, SPEED_MM_S), RoomParams(), seed=3)
    files = calibration_files(room, tmp_path_factory.mktemp("room"),
                              ("pivot", "fiducials", "temporal"))
    return room, files


def test_tracked_tip_in_the_planning_ct_matches_the_truth(nav_room, tmp_path) -> None:
    room, files = nav_room
    assert room.params.tip_length_mm >= 150 and room.params.reference_rotation_deg == 25.0
    session = LiveSession(listen=0, room=load_room(files), out_dir=tmp_path / "run")
    results = _collect(session)
    session.start()
    slicer = Received3D()
    _stream(room, session, 3.0, 1.0, images=False, slicer=slicer)
    summary = session.stop()
    tips = slicer.tips_lps()
    assert len(tips) >= 0.8 * 3.0 * room.params.pose_hz  # one update per needle pose
    errors, angles = [], []
    for ts, tip, axis in tips:
        true_tip, true_axis = room.truth_at_timestamp(ts)
        errors.append(float(np.linalg.norm(tip - true_tip)))
        angles.append(angle_deg(axis, true_axis))
    assert np.median(errors) <= 1.0, np.median(errors)
    assert np.percentile(errors, 95) <= 2.0, np.percentile(errors, 95)
    assert max(angles) <= 2.0, max(angles)
    # The marker is 160 mm from the tip: had it been reported as the tip, the test fails.
    marker = room.marker_to_reference(room.sim_time(tips[0][0]), None)
    marker_ct = (room.reference_to_ct @ marker)[:3, 3]
    assert np.linalg.norm(marker_ct - room.truth_at_timestamp(tips[0][0])[0]) > 150
    # Every update was a pose update, with its latency measured like a frame's.
    assert summary["pose_updates"] >= len(tips) and summary["frames_processed"] == 0
    assert summary["latency_ms"]["p50"] > 0
    # No plan given: the tip is sent, and the state says there is no safety check.
    poses = [r for r in results if r.kind == "pose"]
    assert poses and all(r.state == GuidanceState.NO_GUIDANCE for r in poses)
    assert all(r.state_reasons[0].reason.code == "no_plan" for r in poses)


def test_without_the_pivot_file_no_guidance_names_the_missing_transform(nav_room,
                                                                        tmp_path) -> None:
    room, files = nav_room
    no_pivot = [f for f in files if not f.name.startswith("pivot")]
    session = LiveSession(listen=0, room=load_room(no_pivot))
    results = _collect(session)
    session.start()
    slicer = Received3D()
    _stream(room, session, 1.5, 1.0, images=False, slicer=slicer)
    session.stop()
    assert slicer.tips_lps() == []  # no tip sent: a marker is never reported as a tip
    assert results and all(r.state == GuidanceState.NO_GUIDANCE for r in results
                           if r.kind == "pose")
    r = next(r for r in results if r.kind == "pose")
    assert r.state_reasons[0].reason.code == "missing_transform"
    assert "missing NeedleTipToNeedle" in r.reasons[0]
    assert "guidance calibrate pivot --tool Needle" in r.reasons[0]
    # Once the tracker stops, STALE ("no needle pose for ..."): leave those out.
    strings = [m.message.string for m in slicer.of("GuidanceWarning")
               if m.message_type == "STRING" and not m.message.string.startswith("STALE")]
    assert len(strings) >= 60
    assert all(s.startswith("NO_GUIDANCE") and "NeedleTipToNeedle" in s for s in strings)
    status = [m.message for m in slicer.of("GuidanceWarning") if m.message_type == "STATUS"
              and m.message.code != 7]
    assert len(status) >= 60 and all(s.code == 16 for s in status)


def test_frames_use_the_pose_at_the_time_they_show(tmp_path) -> None:
    """Fluoroscopy frames 80 ms late: with the temporal calibration the tracked needle is
    taken at the frame's time minus the lag; without it the tip is 0.8 mm ahead (10 mm/s),
    and the C-arm calibration places the plan where it projects."""
    real_ct_or_skip()
    from guidance.sim import make_scanner

    scanner = make_scanner("fluoro", size=256, seed=1)
    scanner.path = plan_path(scanner.entry_lps, scanner.target_lps, SPEED_MM_S)
    room = SimulatedRoom(scanner.path, RoomParams(), seed=1, scanner=scanner)
    files = calibration_files(room, tmp_path / "room",
                              ("pivot", "fiducials", "temporal", "carm"))
    medians = {}
    for with_lag in (True, False):
        use = [f for f in files if with_lag or not f.name.startswith("temporal")]
        session = LiveSession(listen=0, room=load_room(use))
        results = _collect(session)
        session.start()
        _stream(room, session, 2.0, 2.0, images=True, slicer=Received3D())
        session.stop()
        frames = [r for r in results if r.kind == "frame" and r.needle is not None
                  and r.needle.has_3d]
        assert len(frames) >= 20
        errors = [np.linalg.norm(r.needle.tip_lps
                                 - room.truth_at_timestamp(r.timestamp_s, image=True)[0])
                  for r in frames]
        medians[with_lag] = float(np.median(errors))
        if with_lag:
            r = frames[-1]
            assert r.at_s == pytest.approx(r.timestamp_s - load_room(use).lag_s)
            # The plan's target projects where the simulator's C-arm puts it.
            assert r.placement is not None and r.placement.is_projection
            ij, _ = r.placement.project(scanner.target_lps[None])
            truth_ij = scanner.geometry.project_points(scanner.target_lps[None])
            assert np.linalg.norm(ij - truth_ij) < 2.0  # pixels (0.59 mm at 256 px)
    assert medians[True] <= 1.0, medians
    assert medians[False] > medians[True] + 0.4, medians  # 80 ms x 10 mm/s = 0.8 mm


def test_without_a_carm_calibration_the_overlay_says_it_is_not_registered(tmp_path) -> None:
    real_ct_or_skip()
    from guidance.sim import make_scanner

    scanner = make_scanner("fluoro", size=256, seed=2)
    room = SimulatedRoom(scanner.path, RoomParams(), seed=2, scanner=scanner)
    files = calibration_files(room, tmp_path / "room", ("pivot", "fiducials", "temporal"))
    session = LiveSession(listen=0, room=load_room(files))
    results = _collect(session)
    session.start()
    _stream(room, session, 1.0, 10.0, images=True, slicer=Received3D())
    session.stop()
    frames = [r for r in results if r.kind == "frame"]
    assert frames
    for r in frames:
        assert r.placement is None
        assert any("overlay not registered" in m and "calibrate carm" in m for m in r.reasons)
    # A notice, not a change of state: the tracked needle is still guidance (here
    # NO_GUIDANCE only because no plan is loaded).
    for r in frames:
        notice = [x for x in r.state_reasons if x.reason.code == "overlay_not_registered"]
        assert notice and notice[0].state == GuidanceState.OK
        assert {x.reason.code for x in r.state_reasons} <= {"overlay_not_registered",
                                                             "no_plan", "detectors_disagree",
                                                             "no_needle"}
    assert any(r.needle is not None and r.needle.has_3d for r in frames)


def test_needle_steered_towards_the_aorta_warns_danger_before_the_margin(tmp_path) -> None:
    """From the plan's entry towards the aorta: DANGER naming the aorta over OpenIGTLink
    (STRING and STATUS) and in the overlay while the true tip is still at least the
    aorta's margin away."""
    real_ct_or_skip()
    from guidance.data import load_real_labels, structure_names
    from guidance.scenarios.planning import prepare_plan

    entry, target = _disc_approach()
    plan, structures = prepare_plan(entry, target, tmp_path)
    labels = load_real_labels()
    aorta_id = {v: k for k, v in structure_names().items()}["aorta"]
    k, j, i = np.nonzero(labels.voxels == aorta_id)
    pts = labels.ijk_to_lps_points(np.stack([i, j, k], 1))
    aorta = pts[np.abs(pts[:, 2] - plan.target_lps[2]) < 5].mean(axis=0)
    room = SimulatedRoom(plan_path(plan.entry_lps, aorta, SPEED_MM_S), RoomParams(), seed=4)
    files = calibration_files(room, tmp_path / "room", ("pivot", "fiducials"))
    session = LiveSession(listen=0, room=load_room(files))
    session.pipeline.set_plan(plan, structures)
    results = _collect(session)
    session.start()
    slicer = Received3D()
    _stream(room, session, 5.5, 6.0, images=False, slicer=slicer)  # 65 -> 120 mm deep
    session.stop()
    danger = [r for r in results if r.decision is not None
              and r.decision.level == WarningLevel.DANGER and r.decision.structure == "aorta"]
    assert danger, [r.decision.text() for r in results if r.decision is not None][-3:]
    first = danger[0]
    aorta_sdf = structures.get("aorta")
    true_tip = room.truth_at_timestamp(first.at_s)[0]
    ijk = structures.to_grid_ijk(true_tip[None])
    true_clearance = float(aorta_sdf.sdf.sample_ijk(ijk)[0])
    assert true_clearance >= aorta_sdf.margin_mm, true_clearance
    assert "aorta" in first.decision.text() and "margin" in first.decision.text()
    # Over OpenIGTLink: the STRING names the aorta, the STATUS says DANGER (code 2).
    strings = [m for m in slicer.of("GuidanceWarning") if m.message_type == "STRING"]
    assert any(s.message.string.startswith("DANGER") and "aorta" in s.message.string
               for s in strings)
    assert any(m.message.code == 2 and m.message.subcode == int(WarningLevel.DANGER)
               for m in slicer.of("GuidanceWarning") if m.message_type == "STATUS")
    # In the overlay: the banner is DANGER red and says aorta.
    rgb = session.pipeline.overlay.compose(first)
    assert tuple(rgb[2, 2]) == LEVEL_COLOURS[WarningLevel.DANGER]
    # And the margin used is the aorta's plus the declared widening, shown in the STRING.
    assert first.decision.margin_mm == pytest.approx(
        aorta_sdf.margin_mm + first.decision.widening.total_mm)
    notes = " ".join(first.decision.widening.notes)
    assert "NeedleTipToNeedle RMS" in notes and "ReferenceToCT expected TRE" in notes


def test_a_pose_older_than_its_limit_makes_the_frame_stale(nav_room) -> None:
    """The tracker stops while frames keep coming: the frames are STALE, naming the pose."""
    room, files = nav_room
    config = config_from_dict({"ingest": {"modality": "us"}, "segment": {"model": "none"},
                               "navigation": {"stale_limits_s": {"NeedleToReference": 0.1}}})
    session = LiveSession(listen=0, room=load_room(files), config=config)
    results = _collect(session)
    session.start()
    tracker = connect(session.port)
    room.clock(1.0)
    now = time.time()
    rng = np.random.default_rng(0)
    for msg in room.pose_messages(1.0, now, rng):
        tracker.send(msg)
    from guidance.geometry import ImageVolume
    from guidance.io.messages import image_message_from_volume

    img = np.zeros((1, 64, 64), np.uint8)
    stop = threading.Event()
    stop.wait(0.3)  # the pose is now older than its 0.1 s limit
    tracker.send(image_message_from_volume(ImageVolume(img, np.eye(4)), "Image_Reference",
                                           now + 0.3, "lps"))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(r.kind == "frame" for r in results):
        stop.wait(0.05)
    tracker.stop()
    session.stop()
    frame = next(r for r in results if r.kind == "frame")
    assert frame.state == GuidanceState.STALE
    assert any("NeedleToReference" in m and "limit 0.10 s" in m for m in frame.reasons)


def test_pipeline_config_keeps_modality_out_of_pixels() -> None:
    assert PipelineConfig().ingest.modality == ""
    assert IngestConfig(modality="ct").modality == "ct"


def test_ultrasound_frames_are_placed_and_checked_against_the_tracked_needle(tmp_path) -> None:
    """Ultrasound: each frame placed through Image -> Probe -> Reference -> CT; the needle
    seen in the image agrees with the tracked one. A probe calibration 6 mm off makes the
    frames DEGRADED, with both tips in the reason."""
    import json

    from guidance.sim import make_scanner

    scanner = make_scanner("us", size=256, seed=0)
    room = SimulatedRoom(scanner.path, RoomParams(), seed=0, scanner=scanner)
    files = calibration_files(room, tmp_path / "room",
                              ("pivot", "fiducials", "temporal", "probe"))
    probe = next(f for f in files if f.name.startswith("probe"))
    doc = json.loads(probe.read_text())
    doc["transforms"]["ImageToProbe"][0][3] += 6.0
    doc["image_to_probe"][0][3] += 6.0
    wrong = tmp_path / "probe-wrong.json"
    wrong.write_text(json.dumps(doc))
    speed = scanner.path.needle.speed_mm_s
    start = max(0.0, scanner.path.plan_length_mm / speed - 3.0)
    outcome = {}
    for name, use in (("right", files), ("wrong", [f for f in files if f != probe] + [wrong])):
        config = config_from_dict({"segment": {"model": "none"}})
        session = LiveSession(listen=0, room=load_room(use), config=config)
        session.pipeline.set_plan(Plan(scanner.entry_lps, scanner.target_lps))
        results = _collect(session)
        session.start()
        _stream(room, session, 2.0, start, images=True, slicer=Received3D())
        session.stop()
        outcome[name] = [r for r in results if r.kind == "frame"
                         and "tracker_image_tip_mm" in r.metrics]
    right, wrong_frames = outcome["right"], outcome["wrong"]
    assert len(right) >= 10 and len(wrong_frames) >= 10
    assert all(r.placement is not None and r.placement.path == ("Image", "Probe", "Reference",
                                                                "CT") for r in right)
    assert np.median([r.metrics["tracker_image_tip_mm"] for r in right]) < 1.5
    assert not any(x.reason.code == "tracker_image_disagree" for r in right
                   for x in r.state_reasons)
    degraded = [r for r in wrong_frames if r.state == GuidanceState.DEGRADED]
    assert len(degraded) >= 0.8 * len(wrong_frames)
    why = next(x.message for x in degraded[0].state_reasons
               if x.reason.code == "tracker_image_disagree")
    assert "image and tracker disagree" in why and "image tip" in why and "tracked tip" in why


def test_navigation_from_poses_draws_the_planning_ct_along_the_needle(tmp_path) -> None:
    """No image stream: the pose updates' picture is the planning CT resliced through the
    needle, the tip where the placement puts it, the plan's structures as labels."""
    real_ct_or_skip()
    from scipy import ndimage

    from guidance.data import load_real_ct
    from guidance.scenarios.planning import prepare_plan

    entry, target = _disc_approach()
    plan, structures = prepare_plan(entry, target, tmp_path)
    room = SimulatedRoom(plan_path(plan.entry_lps, plan.target_lps, SPEED_MM_S),
                         RoomParams(), seed=5)
    files = calibration_files(room, tmp_path / "room", ("pivot", "fiducials"))
    session = LiveSession(listen=0, room=load_room(files), out_dir=tmp_path / "run")
    session.pipeline.set_plan(plan, structures)
    ct = load_real_ct()
    session.pipeline.set_navigation_ct(ct)
    results = _collect(session)
    session.start()
    _stream(room, session, 1.5, 4.0, images=False, slicer=Received3D())
    summary = session.stop()
    pictures = [r for r in results if r.kind == "pose" and r.image is not None]
    poses = [r for r in results if r.kind == "pose"]
    # At most POSE_OVERLAY_HZ pictures, every pose an update.
    assert 10 <= len(pictures) <= 0.5 * len(poses)
    r = pictures[-1]
    assert r.placement is not None and r.needle is not None
    np.testing.assert_allclose(r.placement.pixel_to_ct(r.needle.tip_ij[None])[0],
                               r.needle.tip_lps, atol=1e-6)
    # The picture is the CT: the HU at the tip's pixel is the CT's there.
    col, row = np.round(r.needle.tip_ij).astype(int)
    tip_vox = ct.lps_to_ijk_points(r.placement.pixel_to_ct([[col, row]]))[0]
    want = ndimage.map_coordinates(ct.voxels.astype(np.float32), tip_vox[::-1, None], order=1)
    assert abs(float(r.image.voxels[0, row, col]) - float(want[0])) <= 1.0
    assert r.label_names[0] == "background" and len(r.label_names) > 5
    assert r.labels is not None and r.labels.max() > 0  # structures near the needle
    assert summary["pngs"]  # the headless picture is written for pose updates too
