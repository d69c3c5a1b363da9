"""``guidance calibrate``: JSON round trips, exit status 2 on bad input, live capture."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import guidance.cli.main as cli_main
import guidance.workflows.pose_capture as pose_capture
from calibration import project
from calibration.accuracy import simulate_pivot_poses
from guidance.io.calibration_file import load_calibration
from trackers.pose import TrackedPose

TIP = np.array([3.0, -2.0, -160.0])
PIVOT = np.array([120.0, -40.0, -1400.0])


@pytest.fixture(autouse=True)
def only_calibrate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other command modules are written in parallel; test this one alone."""
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["guidance.cli.calibrate"])


def _write(path: Path, doc: object) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def test_pivot_round_trip_with_plot(tmp_path: Path, rng: np.random.Generator) -> None:
    poses = simulate_pivot_poses(rng, 60, TIP, PIVOT, noise_rms_mm=0.25)
    src = _write(tmp_path / "poses.json", {"poses": poses.tolist()})
    out, png = tmp_path / "calib.json", tmp_path / "pivot.png"
    argv = [
        "calibrate",
        "pivot",
        "--input",
        src,
        "--out",
        str(out),
        "--tool",
        "Needle",
        "--plot",
        str(png),
    ]
    assert cli_main.main(argv) == 0
    doc = json.loads(out.read_text())
    assert np.linalg.norm(np.array(doc["tip_offset_mm"]) - TIP) < 0.3
    assert np.linalg.norm(np.array(doc["pivot_point_mm"]) - PIVOT) < 0.5
    assert 0.15 < doc["rms_mm"] < 0.35
    calib = load_calibration(out)
    assert calib.kind == "pivot"
    np.testing.assert_allclose(calib.transform("NeedleTipToNeedle")[:3, 3], doc["tip_offset_mm"])
    import hashlib

    assert calib.provenance.input_sha256 == hashlib.sha256(Path(src).read_bytes()).hexdigest()
    assert calib.provenance.software_version.startswith("guidance ")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_register_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    moving = rng.uniform(-50, 50, (6, 3))
    rot = Rotation.random(random_state=rng).as_matrix()
    fixed = moving @ rot.T + [10.0, 20.0, 30.0]
    src = _write(
        tmp_path / "pairs.json",
        {
            "fixed_mm": fixed.tolist(),
            "moving_mm": moving.tolist(),
            "targets_mm": [[0, 0, 0], [80, 0, 0]],
            "fle_mm": 0.5,
        },
    )
    out = tmp_path / "reg.json"
    png = tmp_path / "reg.png"
    argv = [
        "calibrate",
        "register",
        "--input",
        src,
        "--out",
        str(out),
        "--name",
        "CTToTracker",
        "--plot",
        str(png),
    ]
    assert cli_main.main(argv) == 0
    doc = json.loads(out.read_text())
    np.testing.assert_allclose(np.array(doc["moving_to_fixed"])[:3, :3], rot, atol=1e-9)
    assert doc["fre_mm"] < 1e-9
    assert len(doc["expected_tre_mm"]) == 2
    assert doc["expected_tre_mm"][1] > doc["expected_tre_mm"][0] > 0
    calib = load_calibration(out)
    np.testing.assert_allclose(calib.expected_tre_mm, doc["expected_tre_mm"])
    assert png.exists()


def test_temporal_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ta, tb = np.arange(0, 20, 1 / 60), np.arange(0, 20, 1 / 25)

    def motion(t: np.ndarray) -> np.ndarray:
        return 6 * np.sin(2 * np.pi * 0.4 * t) + 3 * np.sin(2 * np.pi * 1.1 * t)

    src = _write(
        tmp_path / "streams.json",
        {
            "a": {"t_s": ta.tolist(), "x": motion(ta).tolist()},
            "b": {"t_s": tb.tolist(), "x": motion(tb - 0.12).tolist()},
        },
    )
    assert cli_main.main(["calibrate", "temporal", "--input", src]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["lag_s"] == pytest.approx(0.12, abs=0.005)


def test_carm_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("x", 90, degrees=True).as_matrix()
    pose[:3, 3] = [0.0, 0.0, 600.0]
    proj = np.array([[3000.0, 0, 512], [0, 3000.0, 512], [0, 0, 1]]) @ pose[:3]
    pts = rng.uniform(-50, 50, (10, 3))
    src = _write(
        tmp_path / "pts.json", {"points_mm": pts.tolist(), "pixels": project(proj, pts).tolist()}
    )
    out = tmp_path / "carm.json"
    assert cli_main.main(["calibrate", "carm", "--input", src, "--out", str(out)]) == 0
    calib = load_calibration(out)
    assert calib.projection is not None
    np.testing.assert_allclose(calib.projection, proj / np.linalg.norm(proj[2, :3]), atol=1e-6)
    assert calib.values["reprojection_rms_px"] < 1e-6
    np.testing.assert_allclose(calib.transform("PhantomToCamera"), pose, atol=1e-6)


def test_spin_and_probe_round_trips(tmp_path: Path, rng: np.random.Generator) -> None:
    angles = np.radians(np.linspace(-90, 90, 20))
    rot = Rotation.from_rotvec(np.outer(angles, [0.0, 0.0, 1.0])).as_matrix()
    poses = np.tile(np.eye(4), (20, 1, 1))
    poses[:, :3, :3] = rot
    src = _write(tmp_path / "spin.json", {"poses": poses.tolist(), "tip_offset_mm": [0, 0, -5]})
    out = tmp_path / "spin_out.json"
    assert cli_main.main(["calibrate", "spin", "--input", src, "--out", str(out)]) == 0
    np.testing.assert_allclose(load_calibration(out).values["axis_tool"], [0, 0, -1], atol=1e-9)

    n = 10
    uv = rng.uniform(0, 400, (n, 2))
    image_mm = np.column_stack([uv * 0.2, np.zeros(n)])
    probe = np.tile(np.eye(4), (n, 1, 1))
    probe[:, :3, 3] = rng.uniform(-100, 100, (n, 3))
    tips = image_mm + probe[:, :3, 3]  # image_to_probe = identity
    src = _write(
        tmp_path / "probe.json",
        {
            "probe_to_tracker": probe.tolist(),
            "stylus_tip_tracker_mm": tips.tolist(),
            "pixels": uv.tolist(),
            "pixel_spacing_mm": [0.2, 0.2],
        },
    )
    out = tmp_path / "probe_out.json"
    assert cli_main.main(["calibrate", "probe", "--input", src, "--out", str(out)]) == 0
    np.testing.assert_allclose(
        load_calibration(out).transform("ImageToProbe"), np.eye(4), atol=1e-9
    )


@pytest.mark.parametrize(
    ("kind", "doc", "message"),
    [
        ("pivot", "{not json", "invalid JSON at line 1 column 2"),
        ("pivot", {"pose": []}, "unknown key 'pose'"),
        ("pivot", {}, "missing key 'poses'"),
        ("pivot", {"poses": [[1, 2], [3, 4]]}, r"key 'poses': expected shape \(N, 4, 4\)"),
        ("pivot", {"poses": [np.eye(4).tolist()] * 20}, "angular range 0.00 deg"),
        (
            "register",
            {"fixed_mm": [[0, 0, 0]] * 3, "moving_mm": "x"},
            "key 'moving_mm': must be an array of numbers",
        ),
        (
            "register",
            {
                "fixed_mm": [[0, 0, 0], [1, 1, 1], [2, 2, 2]],
                "moving_mm": [[0, 0, 0], [1, 1, 1], [2, 2, 2]],
            },
            "collinear",
        ),
        (
            "register",
            {
                "fixed_mm": [[0, 0, 0], [1, 0, 0], [0, 1, 0]],
                "moving_mm": [[0, 0, 0], [1, 0, 0], [0, 1, 0]],
                "fle_mm": "1",
            },
            "key 'fle_mm': must be a finite number",
        ),
        (
            "temporal",
            {"a": {"t_s": [0, 1]}, "b": {"t_s": [0, 1], "x": [0, 1]}},
            "missing key 'a.x'",
        ),
        ("carm", {"points_mm": [[0, 0, 0]] * 8, "pixels": [[0, 0]] * 8}, "coplanar"),
        (
            "carm",
            {"points_mm": [[0, 0, 0]] * 3, "pixels": [[0, 0]] * 3},
            "at least 6 points, got 3",
        ),
    ],
)
def test_bad_input_exits_2_with_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, doc: object, message: str
) -> None:
    path = tmp_path / "in.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    assert cli_main.main(["calibrate", kind, "--input", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("guidance calibrate: error:")
    assert len(err.splitlines()) == 1
    import re

    assert re.search(message, err), err


def test_missing_input_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.json"
    assert cli_main.main(["calibrate", "register", "--input", str(missing)]) == 2
    assert f"{missing}: cannot read" in capsys.readouterr().err


def test_live_capture_from_fake_source(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    poses = simulate_pivot_poses(rng, 80, TIP, PIVOT, noise_rms_mm=0.1)
    calls: list[tuple[str, int, str, float]] = []

    def fake(host: str, port: int, device: str, seconds: float) -> Iterator[TrackedPose]:
        calls.append((host, port, device, seconds))
        for i, m in enumerate(poses):
            yield TrackedPose("OtherToTracker", np.eye(4), i * 0.02, i * 20_000_000)
            yield TrackedPose(device, m, i * 0.02, i * 20_000_000 + 1)
            if i == 5:
                yield TrackedPose(device, np.eye(4), i * 0.02, i * 20_000_000 + 2)

    monkeypatch.setattr(pose_capture, "POSE_SOURCE", fake)
    out, saved = tmp_path / "live.json", tmp_path / "captured.json"
    argv = [
        "calibrate",
        "pivot",
        "--from",
        "localhost:18944",
        "--tool",
        "Stylus",
        "--seconds",
        "1.0",
        "--out",
        str(out),
        "--save-poses",
        str(saved),
    ]
    assert cli_main.main(argv) == 0
    assert calls == [("localhost", 18944, "StylusToTracker", 1.0)]
    calib = load_calibration(out)
    # 1.0 s at 50 Hz: the poses received in [0, 1) s.
    assert calib.values["n_poses"] == 50
    assert len(json.loads(saved.read_text())["poses"]) == 50
    assert calib.provenance.input_source == "igtl://localhost:18944/StylusToTracker"
    np.testing.assert_allclose(calib.values["tip_offset_mm"], TIP, atol=0.3)


def test_live_capture_bad_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.main(["calibrate", "pivot", "--from", "nohostport", "--seconds", "1"]) == 2
    assert "--from must be HOST:PORT, got 'nohostport'" in capsys.readouterr().err


def test_accuracy_command_prints_and_writes_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "acc.json"
    assert cli_main.main(["calibrate", "accuracy", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("pivot", "registration", "temporal", "carm"):
        assert f"PASS {name}" in text
    report = json.loads(out.read_text())
    assert [f["name"] for f in report["figures"]] == ["pivot", "registration", "temporal", "carm"]
    assert all(f["passed"] for f in report["figures"])


def test_register_without_targets_reports_the_tre_at_the_centroid(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    moving = rng.uniform(-60, 60, (5, 3))
    rot = Rotation.from_euler("z", 25, degrees=True).as_matrix()
    fixed = moving @ rot.T + [5.0, -8.0, 12.0] + rng.normal(0, 0.3, (5, 3))
    src = _write(tmp_path / "pairs.json", {"fixed_mm": fixed.tolist(),
                                           "moving_mm": moving.tolist()})
    out = tmp_path / "reg.json"
    argv = ["calibrate", "register", "--input", src, "--out", str(out), "--name", "ReferenceToCT"]
    assert cli_main.main(argv) == 0
    assert "expected TRE at the fiducials' centroid" in capsys.readouterr().out
    calib = load_calibration(out)
    np.testing.assert_allclose(calib.values["targets_mm"], [fixed.mean(axis=0)])
    np.testing.assert_allclose(calib.values["fiducials_mm"], fixed)
    fle = calib.values["fle_mm"]
    # At the centroid eq. 46 reduces to FLE / sqrt(N).
    assert calib.values["expected_tre_mm"][0] == pytest.approx(fle / np.sqrt(5))
    assert calib.transforms.keys() == {"ReferenceToCT"}


def test_pivot_tip_frame_points_z_from_the_marker_to_the_tip(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    poses = simulate_pivot_poses(rng, 40, TIP, PIVOT, noise_rms_mm=0.0)
    src = _write(tmp_path / "poses.json", {"poses": poses.tolist()})
    out = tmp_path / "pivot.json"
    argv = ["calibrate", "pivot", "--input", src, "--out", str(out), "--tool", "Needle"]
    assert cli_main.main(argv) == 0
    m = load_calibration(out).transform("NeedleTipToNeedle")
    np.testing.assert_allclose(m[:3, 3], TIP, atol=1e-6)
    np.testing.assert_allclose(m[:3, 2], TIP / np.linalg.norm(TIP), atol=1e-6)
    np.testing.assert_allclose(m[:3, :3].T @ m[:3, :3], np.eye(3), atol=1e-12)
    assert np.linalg.det(m[:3, :3]) == pytest.approx(1.0)


def test_spin_with_pivot_holds_the_whole_tip_frame(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    # A marker whose origin is 20 mm off the shaft: the shaft is not along the tip offset.
    axis = np.array([0.0, 0.0, -1.0])
    tip = np.array([20.0, 0.0, -150.0])
    pivots = simulate_pivot_poses(rng, 40, tip, PIVOT, noise_rms_mm=0.1)
    pivot_src = _write(tmp_path / "poses.json", {"poses": pivots.tolist()})
    pivot_out = tmp_path / "pivot.json"
    assert cli_main.main(["calibrate", "pivot", "--input", pivot_src, "--out", str(pivot_out),
                          "--tool", "Needle"]) == 0
    angles = np.radians(np.linspace(-80, 80, 20))
    spins = np.tile(np.eye(4), (20, 1, 1))
    spins[:, :3, :3] = Rotation.from_rotvec(np.outer(angles, axis)).as_matrix()
    # Rotating about the shaft line x = 20, y = 0 of the tool frame.
    spins[:, :3, 3] = np.array([20.0, 0, 0]) - spins[:, :3, :3] @ np.array([20.0, 0, 0])
    spin_src = _write(tmp_path / "spin.json", {"poses": spins.tolist()})
    out = tmp_path / "spin_out.json"
    assert cli_main.main(["calibrate", "spin", "--input", spin_src, "--pivot", str(pivot_out),
                          "--tool", "Needle", "--out", str(out)]) == 0
    calib = load_calibration(out)
    m = calib.transform("NeedleTipToNeedle")
    np.testing.assert_allclose(m[:3, 2], axis, atol=1e-6)
    pivot = load_calibration(pivot_out)
    np.testing.assert_allclose(m[:3, 3], pivot.values["tip_offset_mm"])
    assert calib.values["tip_rms_mm"] == pytest.approx(pivot.values["rms_mm"])
    # A pivot file of another tool, or another kind of file, is refused by name.
    assert cli_main.main(["calibrate", "spin", "--input", spin_src, "--pivot", str(pivot_out),
                          "--tool", "Stylus"]) == 2
    assert "not StylusTipToStylus" in capsys.readouterr().err
    assert cli_main.main(["calibrate", "spin", "--input", spin_src, "--pivot", str(out),
                          "--tool", "Needle"]) == 2
    assert "a 'spin' calibration, not a pivot" in capsys.readouterr().err
