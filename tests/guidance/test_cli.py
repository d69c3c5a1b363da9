"""The ``guidance`` command: argument errors, demo output, run + simulate + record."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from guidance.cli.main import main
from guidance.io.recording import read_recording
from tests.peers import read_until_listening


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nonsense"],
        ["run"],
        ["run", "--listen", "99999"],
        ["run", "--listen", "abc"],
        ["run", "--connect", "nohostport"],
        ["run", "--listen", "5000", "--connect", "h:1"],
        ["demo", "--seconds", "-1"],
        ["demo", "--modality", "mri"],
        ["simulate", "--modality", "us", "--fps", "0", "--listen", "5000"],
        ["bench", "--fps", "nan"],
        ["verify", "--plan", "p.json", "--ct", "real", "--out", "v", "--tolerance-mm", "-1"],
    ],
)
def test_wrong_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error" in err and err.strip().count("\n") <= 3


def test_run_with_bad_config_and_plan_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"safety": {"margin_mm": 2}}')
    assert main(["run", "--listen", "5999", "--config", str(cfg), "--seconds", "0.1"]) == 2
    assert "c.json: safety.margin_mm: unknown key (allowed: " in capsys.readouterr().err
    plan = tmp_path / "p.json"
    plan.write_text('{"format": "guidance.plan/1", "entry_lps_mm": [1, 2]}')
    assert main(["run", "--listen", "5999", "--plan", str(plan), "--seconds", "0.1"]) == 2
    assert "entry_lps_mm must be 3 finite numbers" in capsys.readouterr().err


def test_simulate_bad_size_exit_2(capsys):
    assert main(["simulate", "--size", "8", "--listen", "5999", "--seconds", "1"]) == 2
    assert "--size" in capsys.readouterr().err


def test_demo_writes_summary_and_pngs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(["demo", "--seconds", "3", "--modality", "us", "--size", "256", "--out", str(out)])
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    for key in (
        "frames_received",
        "frames_processed",
        "frames_dropped",
        "latency_ms",
        "stages_ms",
        "warnings",
    ):
        assert key in s, key
    assert s["frames_received"] >= 30 and s["frames_processed"] >= 30
    assert set(s["latency_ms"]) >= {"p50", "p95", "p99", "max"}
    assert s["latency_ms"]["p50"] > 0
    for stage in ("preprocess", "segment", "needle", "safety", "overlay"):
        assert set(s["stages_ms"][stage]) == {"p50", "p99"}
    for w in s["warnings"]:
        assert set(w) == {"t_s", "level", "structure", "distance_mm", "message", "reason",
                          "margin_mm"}
    # The room: calibrations made from the simulated raw data and applied.
    assert {"NeedleTipToNeedle", "ReferenceToCT", "ImageToProbe"} <= set(s["transforms"])
    assert len(s["calibrations"]) == 4  # pivot, register, temporal, probe
    pngs = sorted(out.glob("frame_*.png"))
    assert len(pngs) >= 3
    printed = capsys.readouterr().out
    assert "end-to-end latency" in printed


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def test_run_simulate_record_then_replay(tmp_path):
    port = free_port()
    rec = tmp_path / "session.igtlrec"
    out = tmp_path / "run"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "guidance.cli.main",
            "run",
            "--listen",
            str(port),
            "--seconds",
            "6",
            "--out",
            str(out),
            "--record",
            str(rec),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert run.stdout is not None
        said = read_until_listening(run.stdout)
        assert said[0].startswith("priority: ")  # raised, or why not
        sim = subprocess.run(
            [
                sys.executable,
                "-m",
                "guidance.cli.main",
                "simulate",
                "--modality",
                "us",
                "--size",
                "128",
                "--fps",
                "15",
                "--seconds",
                "2",
                "--connect",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sim.returncode == 0, sim.stderr
        _out, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert s["frames_received"] >= 20
    recorded = list(read_recording(rec))
    kinds = {r.header.message_type for r in recorded}
    assert kinds == {"IMAGE", "TRANSFORM"}
    n_images = sum(r.header.message_type == "IMAGE" for r in recorded)
    assert n_images == s["frames_received"]  # every received frame recorded, none lost

    # Replay it into a second run: same number of frames arrive.
    port2 = free_port()
    out2 = tmp_path / "run2"
    run2 = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "guidance.cli.main",
            "run",
            "--listen",
            str(port2),
            "--seconds",
            "5",
            "--out",
            str(out2),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert run2.stdout is not None
        read_until_listening(run2.stdout)
        rp = subprocess.run(
            [
                sys.executable,
                "-m",
                "guidance.cli.main",
                "replay",
                str(rec),
                "--to",
                f"127.0.0.1:{port2}",
                "--speed",
                "max",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert rp.returncode == 0, rp.stderr
        assert f"replayed {len(recorded)} messages" in rp.stdout
        run2.communicate(timeout=60)
    finally:
        run2.kill()
    s2 = json.loads((out2 / "summary.json").read_text())
    assert s2["frames_received"] == n_images


def test_fluoro_demo_plans_checks_and_verifies(tmp_path):
    """On the real CT: plan.json, live structure warnings, verification report."""
    out = tmp_path / "fl"
    assert main(["demo", "--seconds", "4", "--size", "256", "--out", str(out)]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["entry_lps_mm"]) == 3 and len(plan["target_lps_mm"]) == 3
    ver = json.loads((out / "verification" / "verification.json").read_text())
    assert ver["verdict"] in ("PASS", "OFF_TARGET", "VIOLATION")
    assert ver["tip_to_target_mm"] < 5.0  # the simulated needle reached the target
    assert (out / "verification" / "report.html").is_file()
    s = json.loads((out / "summary.json").read_text())
    # The live check against the CT's structures ran: structure names in the warnings.
    assert any(w["structure"] not in ("plan", "target") for w in s["warnings"])


def test_sigterm_stops_run_gracefully_with_summary_and_a_readable_recording(tmp_path):
    """SIGTERM (what a service manager or `kill` sends) ends `guidance run` as Ctrl-C does:
    summary.json written, the recording closed with every message received in it."""
    import signal

    import pyigtl

    from guidance.io.igtl import IgtlClient

    port = free_port()
    rec, out = tmp_path / "session.igtlrec", tmp_path / "run"
    run = subprocess.Popen(
        [sys.executable, "-m", "guidance.cli.main", "run", "--listen", str(port), "--out",
         str(out), "--record", str(rec), "--modality", "us"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert run.stdout is not None
        read_until_listening(run.stdout)
        client = IgtlClient("127.0.0.1", port).start()
        assert client.wait_connected(10.0)
        m = np.eye(4)
        for k in range(20):  # 20 tools (one device each: the client sends latest-per-device)
            m[0, 3] = k + 1
            client.send(pyigtl.TransformMessage(m, device_name=f"Tool{k}ToReference"))
        # Wait (on a condition) until the server has recorded them.
        def recorded_transforms() -> int:
            if not rec.exists():
                return 0
            return sum(r.header.message_type == "TRANSFORM" for r in read_recording(rec))

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and recorded_transforms() < 20:
            threading.Event().wait(0.05)
        client.stop()
        run.send_signal(signal.SIGTERM)
        _out, err = run.communicate(timeout=30)
    finally:
        run.kill()
    assert run.returncode == 0, err
    assert "SIGTERM: stopping" in err
    s = json.loads((out / "summary.json").read_text())
    assert len(s["transforms"]) == 20 and "Tool19ToReference" in s["transforms"]
    # A pose is never "dropped": every one went into the transform graph as it arrived.
    assert s["transport"]["devices"]["Tool7ToReference"] == {
        "type": "TRANSFORM", "received": 1, "into_transform_graph": 1}
    recorded = [r for r in read_recording(rec) if r.header.message_type == "TRANSFORM"]
    assert len(recorded) == 20


def test_a_second_signal_exits_at_once(tmp_path):
    """The first signal asks for a graceful stop; a second one, while that stop hangs,
    exits immediately with 128 + the signal."""
    import signal

    script = tmp_path / "hang.py"
    script.write_text(
        "import threading, sys\n"
        "from guidance.session.signals import StopSignals\n"
        "stop = threading.Event()\n"
        "signals = StopSignals(stop)\n"
        "print('ready', flush=True)\n"
        "stop.wait(30)\n"
        "print('stopping gracefully, but hanging', flush=True)\n"
        "threading.Event().wait(30)\n"
        "sys.exit(0)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert "hanging" in proc.stdout.readline()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT
    assert time.monotonic() - t0 < 5
    err = proc.stderr.read() if proc.stderr else ""
    assert "SIGTERM: stopping" in err and "SIGINT again: exiting now" in err
