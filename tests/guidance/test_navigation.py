"""The room's calibrations as graph edges (refusals named), the declared uncertainties,
and bad poses from the wire: refused, counted, named; the loop keeps serving."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import guidance.cli.main as cli_main
from calibration.registration import expected_tre
from guidance.io.calibration_file import CalibrationFileError, Provenance, make_document
from guidance.io.messages import PositionMessage
from guidance.io.slots import LatestSlots, Received
from guidance.navigation import Navigator, RoomSetupError, load_room, static_room
from guidance.safety import SafetyConfig

PROV = Provenance("2026-01-01T00:00:00+00:00", "ab" * 32, "in.json", "guidance 0.1.0", "x")


def _rigid(angle_deg: float = 0.0, t: tuple[float, float, float] = (0.0, 0.0, 0.0)
           ) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("z", angle_deg, degrees=True).as_matrix()
    m[:3, 3] = t
    return m


def _write(path: Path, kind: str, values: dict, transforms: dict) -> Path:
    path.write_text(json.dumps(make_document(kind, values, transforms, PROV)))
    return path


def _pivot(path: Path, tip=(0.0, 0.0, 150.0), rms: float = 0.3, tool: str = "Needle") -> Path:
    from calibration import tip_frame

    return _write(path, "pivot", {
        "tip_offset_mm": np.array(tip), "pivot_point_mm": np.zeros(3), "rms_mm": rms,
        "residuals_mm": np.array([rms]), "angular_range_deg": 40.0,
        "tip_offset_std_mm": np.full(3, 0.1), "condition_number": 10.0, "n_poses": 50,
        "n_inliers": 50}, {f"{tool}TipTo{tool}": tip_frame(np.array(tip))})


def _register(path: Path, name: str = "ReferenceToCT", fiducials: bool = True) -> Path:
    fid = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100], [60, 60, 60.0]])
    values = {"moving_to_fixed": _rigid(25, (1, 2, 3)), "fre_mm": 0.4,
              "residuals_mm": np.full(5, 0.4), "fle_mm": 0.5, "fle_estimated": False,
              "targets_mm": fid.mean(axis=0, keepdims=True),
              "expected_tre_mm": expected_tre(fid, fid.mean(axis=0, keepdims=True), 0.5)}
    if fiducials:
        values["fiducials_mm"] = fid
    return _write(path, "register", values, {name: _rigid(25, (1, 2, 3))})


def _temporal(path: Path, lag: float = 0.08) -> Path:
    return _write(path, "temporal", {"lag_s": lag, "peak_correlation": 0.99, "step_s": 0.001,
                                     "std_a": 5.0, "std_b": 5.0}, {})


def _spin(path: Path, transforms: dict, tip_rms: float | None = None) -> Path:
    values = {"axis_tool": np.array([0.0, 0.0, 1.0]), "axis_point_tool_mm": np.zeros(3),
              "spin_range_deg": 160.0, "wobble_rms_deg": 0.1, "line_rms_mm": 0.1,
              "n_poses": 20}
    if tip_rms is not None:
        values["tip_rms_mm"] = tip_rms
    return _write(path, "spin", values, transforms)


def test_calibration_files_become_static_edges_with_their_uncertainties(tmp_path) -> None:
    room = load_room([_pivot(tmp_path / "p.json"), _register(tmp_path / "r.json"),
                      _temporal(tmp_path / "t.json")])
    assert set(room.static) == {"NeedleTipToNeedle", "ReferenceToCT"}
    assert room.lag_s == pytest.approx(0.08)
    assert room.uncertainties["NeedleTipToNeedle"].sigma_mm == pytest.approx(0.3)
    nav = Navigator(room)
    assert nav.graph.query("NeedleTipToNeedle").edges[0].source.endswith("p.json")
    # No marker pose yet: the tip is not known, and the missing link is named.
    tip = nav.tracked_tip(None)
    assert tip is not None and not tip.ok and np.all(np.isnan(tip.tip_ct))
    assert tip.problem is not None and tip.problem.reason.code == "missing_transform"
    assert "missing NeedleToReference or NeedleToTracker" in tip.problem.message


def test_declared_uncertainties_widen_the_margin_tre_at_the_target(tmp_path) -> None:
    room = load_room([_pivot(tmp_path / "p.json", rms=0.3), _register(tmp_path / "r.json")])
    nav = Navigator(room)
    nav.graph.update("NeedleToReference", _rigid(10, (5, 5, 5)))
    tip = nav.tracked_tip(None)
    assert tip is not None and tip.ok
    assert [e.name for e in tip.edges] == ["NeedleTipToNeedle", "NeedleToReference",
                                          "ReferenceToCT"]
    cfg = SafetyConfig()
    target = np.array([250.0, 0.0, 0.0])  # far from the fiducials: a larger TRE
    w = nav.widening(tip.edges, target, 0.2, 0.05, 10.0, cfg)
    fid = np.asarray(room.uncertainties["ReferenceToCT"].fiducials_mm)
    assert w.registration_mm == pytest.approx(expected_tre(fid, target[None], 0.5)[0])
    assert w.registration_mm > room.uncertainties["ReferenceToCT"].sigma_mm  # not centroid
    assert w.calibration_mm == pytest.approx(0.3)
    assert w.latency_s == pytest.approx(0.05 + cfg.display_latency_s)
    assert w.total_mm == pytest.approx(2.0 * math.sqrt(0.2 ** 2 + 0.3 ** 2
                                                       + w.registration_mm ** 2)
                                       + w.latency_s * 10.0)
    assert any("at the target" in n for n in w.notes)
    # A file without fiducials: the file's own target TRE, and the note says so.
    old = load_room([_pivot(tmp_path / "p2.json"), _register(tmp_path / "r2.json",
                                                            fiducials=False)])
    nav2 = Navigator(old)
    nav2.graph.update("NeedleToReference", _rigid(10, (5, 5, 5)))
    w2 = nav2.widening(nav2.tracked_tip(None).edges, target, 0.2, 0.0, 0.0, cfg)
    assert any("no fiducials_mm" in n for n in w2.notes)
    # Nothing declared (a room in code): the configuration's values, said so.
    nav3 = Navigator(static_room({"NeedleTipToNeedle": np.eye(4), "ReferenceToCT": np.eye(4)},
                                 "test"))
    nav3.graph.update("NeedleToReference", _rigid(10, (5, 5, 5)))
    w3 = nav3.widening(nav3.tracked_tip(None).edges, target, math.nan, 0.0, 0.0, cfg)
    assert w3.calibration_mm == cfg.calibration_sigma_mm
    assert w3.registration_mm == cfg.registration_tre_mm
    assert w3.tracking_mm == cfg.tracking_sigma_mm
    assert sum("configuration default" in n for n in w3.notes) == 3


def test_a_spin_file_replaces_the_pivot_tip_frame_when_the_tips_agree(tmp_path) -> None:
    from calibration import tip_frame

    pivot = _pivot(tmp_path / "p.json", tip=(20.0, 0.0, 150.0), rms=0.25)
    spun = tip_frame(np.array([20.0, 0.0, 150.0]), np.array([0.0, 0.0, 1.0]))
    room = load_room([pivot, _spin(tmp_path / "s.json", {"NeedleTipToNeedle": spun})])
    np.testing.assert_allclose(room.static["NeedleTipToNeedle"][0][:3, 2], [0, 0, 1])
    assert room.uncertainties["NeedleTipToNeedle"].sigma_mm == pytest.approx(0.25)
    far = tip_frame(np.array([25.0, 0.0, 150.0]), np.array([0.0, 0.0, 1.0]))
    with pytest.raises(RoomSetupError, match=r"disagrees with .*p\.json \(tips 5\.00 mm apart"):
        load_room([pivot, _spin(tmp_path / "s2.json", {"NeedleTipToNeedle": far})])


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (lambda d: [_pivot(d / "a.json"), _pivot(d / "b.json")],
         r"NeedleTipToNeedle is given by .*a\.json too"),
        (lambda d: [_register(d / "a.json", name="MovingToFixed")],
         "re-run it with --name ReferenceToCT"),
        (lambda d: [_temporal(d / "a.json"), _temporal(d / "b.json")],
         "a second temporal calibration"),
        (lambda d: [_temporal(d / "a.json", lag=1.5)], r"lag 1\.500 s is beyond"),
        (lambda d: [_spin(d / "a.json", {})], "holds no transform"),
    ],
)
def test_calibration_files_that_cannot_be_used_together_are_refused(tmp_path, files,
                                                                    message) -> None:
    with pytest.raises(RoomSetupError, match=message):
        load_room(files(tmp_path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"format": "guidance.plan/1", "entry_lps_mm": [0, 0, 0]}', "key 'format': must be"),
        ("[1, 2]", "must be a JSON object"),
        ("{nope", "invalid JSON at line 1"),
    ],
)
def test_run_refuses_a_file_that_is_not_a_calibration(tmp_path, capsys, content,
                                                      message) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text(content)
    argv = ["run", "--listen", "47999", "--seconds", "0.1", "--calibration", str(bad)]
    assert cli_main.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "plan.json" in err and err.count("\n") == 1


def test_run_refuses_calibrations_that_contradict_each_other(tmp_path, capsys) -> None:
    a, b = _pivot(tmp_path / "a.json"), _pivot(tmp_path / "b.json")
    argv = ["run", "--listen", "47999", "--seconds", "0.1", "--calibration", str(a),
            "--calibration", str(b)]
    assert cli_main.main(argv) == 2
    assert "NeedleTipToNeedle is given by" in capsys.readouterr().err


def test_calibration_file_errors_are_calibration_file_errors(tmp_path) -> None:
    with pytest.raises(CalibrationFileError, match="cannot read"):
        load_room([tmp_path / "missing.json"])


def _received(name: str, message_type: str, message: object, ts: float = 0.0) -> Received:
    return Received(1, name, message_type, message, ts, time.monotonic_ns(), "test")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "matrix", "reason"),
    [
        ("NeedleToReference", np.diag([2.0, 1.0, 1.0, 1.0]), "not rigid"),
        ("NeedleToReference", np.full((4, 4), np.nan), "NaN"),
        ("needle-to-reference", np.eye(4), "must look like 'FromToTo'"),
        ("StylusToToolToTracker", _rigid(5), "ambiguous"),
        ("NeedleToReference", np.diag([1.0, 1.0, -1.0, 1.0]), "determinant -1"),
    ],
)
def test_bad_poses_from_the_wire_are_refused_named_and_counted(name, matrix, reason) -> None:
    import pyigtl

    nav = Navigator(static_room({"NeedleTipToNeedle": np.eye(4), "ReferenceToCT": np.eye(4)},
                                "test"))
    msg = pyigtl.TransformMessage(np.eye(4), device_name="x")
    msg.matrix = matrix
    nav.on_message(_received(name, "TRANSFORM", msg))
    assert nav.tools.rejected == 1 and reason in nav.tools.last_rejection
    assert name[:20] in nav.tools.last_rejection
    assert len(nav.tools.rejections) == 1
    # A good pose afterwards is taken, and the tip is there.
    good = pyigtl.TransformMessage(_rigid(3, (1, 2, 3)), device_name="NeedleToReference")
    nav.on_message(_received("NeedleToReference", "TRANSFORM", good))
    tip = nav.tracked_tip(None)
    assert tip is not None and tip.ok


def test_position_without_orientation_is_not_a_pose_and_with_it_is() -> None:
    nav = Navigator()
    nav.on_message(_received("NeedleTipToReference", "POSITION",
                             PositionMessage(position=[1.0, 2.0, 3.0])))
    assert nav.tools.rejected == 0  # a full POSITION (placeholder quaternion) is a pose
    p = PositionMessage(position=[1.0, 2.0, 3.0])
    p.has_orientation = False
    nav.on_message(_received("NeedleTipToReference", "POSITION", p))
    assert nav.tools.rejected == 1 and "without orientation" in nav.tools.last_rejection
    q = Rotation.from_euler("x", 30, degrees=True).as_quat()  # (x, y, z, w) as on the wire
    nav.on_message(_received("ProbeToReference", "POSITION",
                             PositionMessage(position=[4.0, 5.0, 6.0], quaternion=q)))
    m = nav.graph.query("ProbeToReference").matrix
    np.testing.assert_allclose(m[:3, :3], Rotation.from_quat(q).as_matrix(), atol=1e-9)
    np.testing.assert_allclose(m[:3, 3], [4.0, 5.0, 6.0])


def test_the_receive_loop_keeps_serving_a_good_tracker_after_a_bad_one() -> None:
    """Two trackers on one session: one sends garbage poses, the other good ones; the
    good tracker's needle is still tracked, the garbage is counted by reason."""
    import pyigtl

    from guidance.io.igtl import IgtlClient
    from guidance.session import LiveSession

    room = static_room({"NeedleTipToNeedle": np.eye(4), "ReferenceToCT": np.eye(4)}, "test")
    session = LiveSession(listen=0, room=room).start()
    try:
        bad = IgtlClient("127.0.0.1", session.port).start()
        good = IgtlClient("127.0.0.1", session.port).start()
        assert bad.wait_connected(5) and good.wait_connected(5)
        tips = LatestSlots()
        good.slots.add_listener(lambda it: tips.put(it.device_name, it.message_type,
                                                    it.message, it.timestamp_s,
                                                    it.received_ns, it.peer))
        for k in range(10):
            bad.send(pyigtl.TransformMessage(np.diag([3.0, 1, 1, 1]),
                                             device_name=f"Needle{k}ToReference"))
        seq = 0
        got = None
        for k in range(30):
            good.send(pyigtl.TransformMessage(_rigid(k, (k, 0.0, 0.0)), timestamp=time.time(),
                                              device_name="NeedleToReference"))
            got = tips.wait_newer("NeedleTipToRAS", seq, 1.0) or got
            if got is not None:
                seq = got.seq
        assert got is not None
        nav = session.pipeline.navigator
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and nav.tools.rejected < 10:
            tips.wait_newer("never", 0, 0.05)
        assert nav.tools.rejected == 10
        assert all("not rigid" in k for k in nav.tools.rejections)
    finally:
        bad.stop()
        good.stop()
        session.stop()


def test_a_frame_whose_spacing_is_not_the_probe_calibrations_is_degraded(tmp_path) -> None:
    from guidance.geometry import ImageVolume

    probe = _write(tmp_path / "probe.json", "probe", {
        "image_to_probe": _rigid(0, (-20.0, 1.0, 0.0)), "pixel_spacing_mm": np.array([0.2, 0.2]),
        "rms_mm": 0.4, "in_plane_rms_mm": 0.3, "out_of_plane_rms_mm": 0.2,
        "residuals_mm": np.full(6, 0.4)}, {"ImageToProbe": _rigid(0, (-20.0, 1.0, 0.0))})
    nav = Navigator(load_room([probe, _register(tmp_path / "r.json")]))
    nav.graph.update("ProbeToReference", _rigid(20, (10, 20, 30)))
    same = ImageVolume(np.zeros((1, 64, 64), np.uint8), np.diag([0.2, 0.2, 1.0, 1.0]))
    placement, problem, edges = nav.place("Image", same, False, None)
    assert placement is not None and problem is None
    assert [e.name for e in edges] == ["ImageToProbe", "ProbeToReference", "ReferenceToCT"]
    deeper = ImageVolume(np.zeros((1, 64, 64), np.uint8), np.diag([0.25, 0.25, 1.0, 1.0]))
    placement, problem, _ = nav.place("Image", deeper, False, None)
    assert placement is not None and problem is not None
    assert problem.reason.code == "spacing_not_calibrated" and "0.250 x 0.250 mm" in problem.message
    # Without the probe calibration the frame is not placed, and the link is named.
    nav2 = Navigator(load_room([_register(tmp_path / "r2.json")]))
    nav2.graph.update("ProbeToReference", _rigid(20, (10, 20, 30)))
    placement, problem, _ = nav2.place("Image", same, False, None)
    assert placement is None and problem is not None
    assert "missing ImageToProbe" in problem.message and "calibrate probe" in problem.message


def test_run_refuses_a_plan_whose_anatomy_cannot_be_checked(tmp_path, capsys) -> None:
    """`run --plan` rebuilds the plan's structures from its recorded, hash-checked files;
    a plan that records none (an older one) or whose labels changed is refused."""
    from guidance.planning.plan import Plan

    old = tmp_path / "old-plan.json"
    Plan(np.zeros(3), np.array([0.0, 0.0, 50.0]), "0,0,50").save(old)
    argv = ["run", "--listen", "47997", "--seconds", "0.1", "--plan", str(old)]
    assert cli_main.main(argv) == 2
    err = capsys.readouterr().err
    assert "records no anatomy" in err and "old-plan.json" in err
    assert cli_main.main(["run", "--listen", "47997", "--plan", str(tmp_path / "none.json")]) == 2
    assert "none.json: cannot read: no such file" in capsys.readouterr().err
