"""Recording is lossless; replay reproduces it; a cut-short recording stays readable."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pyigtl
import pytest

from guidance.cli.main import main
from guidance.io.igtl import IgtlServer
from guidance.io.messages import HEADER_SIZE
from guidance.io.recording import Recorder, RecordingError, read_recording
from guidance.scenarios.replay import replay


def _messages(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        out.append(
            pyigtl.ImageMessage(
                rng.integers(0, 255, (1, 16, 16), dtype=np.uint8),
                device_name="Image",
                timestamp=100.0 + i,
            ).pack()
        )
        m = np.eye(4)
        m[:3, 3] = [i, 2 * i, 3.5]
        out.append(
            pyigtl.TransformMessage(m, device_name="NeedleToReference", timestamp=100.0 + i).pack()
        )
    return out


def _record(path, raws, gap_s=0.02):
    import socket

    srv = IgtlServer(0).start()
    rec = Recorder(path)
    srv.raw_listeners.append(rec.on_raw)
    s = socket.create_connection(("127.0.0.1", srv.port))
    ev = threading.Event()
    for r in raws:
        s.sendall(r)
        ev.wait(gap_s)
    deadline = time.monotonic() + 10
    while rec.written + (rec._q.qsize()) < len(raws) and time.monotonic() < deadline:
        ev.wait(0.01)
    s.close()
    srv.stop()
    rec.close()
    return rec


def test_recording_is_lossless_and_ordered(tmp_path):
    raws = _messages(10)
    rec = _record(tmp_path / "a.igtlrec", raws)
    assert rec.written == len(raws) and rec.dropped == 0
    got = list(read_recording(tmp_path / "a.igtlrec"))
    assert [g.raw for g in got] == raws
    times = [g.received_ns for g in got]
    assert times == sorted(times)


def test_replay_reproduces_the_recording(tmp_path):
    raws = _messages(8)
    _record(tmp_path / "orig.igtlrec", raws, gap_s=0.03)
    # Replay into a second recording server, at original speed.
    srv = IgtlServer(0).start()
    rec2 = Recorder(tmp_path / "again.igtlrec")
    srv.raw_listeners.append(rec2.on_raw)
    n = replay(tmp_path / "orig.igtlrec", "127.0.0.1", srv.port, speed=1.0)
    assert n == len(raws)
    deadline = time.monotonic() + 10
    while rec2.written < n and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    srv.stop()
    rec2.close()
    a = list(read_recording(tmp_path / "orig.igtlrec"))
    b = list(read_recording(tmp_path / "again.igtlrec"))
    assert [x.raw for x in b] == [x.raw for x in a]
    # Timing: the replayed inter-arrival times follow the original ones.
    da = np.diff([x.received_ns for x in a]) / 1e6
    db = np.diff([x.received_ns for x in b]) / 1e6
    assert abs(da.sum() - db.sum()) < 0.25 * da.sum() + 20


def test_replay_max_speed_is_fast(tmp_path):
    raws = _messages(5)
    _record(tmp_path / "o.igtlrec", raws, gap_s=0.1)
    srv = IgtlServer(0).start()
    t0 = time.monotonic()
    assert replay(tmp_path / "o.igtlrec", "127.0.0.1", srv.port, speed=float("inf")) == 10
    assert time.monotonic() - t0 < 0.5  # original spans ~1 s
    srv.stop()


def test_truncated_recording_readable_to_last_complete_message(tmp_path):
    raws = _messages(4)
    _record(tmp_path / "t.igtlrec", raws)
    data = (tmp_path / "t.igtlrec").read_bytes()
    for cut in (len(data) - 1, len(data) - len(raws[-1]) + HEADER_SIZE // 2, len(data) - 5):
        p = tmp_path / f"cut{cut}.igtlrec"
        p.write_bytes(data[:cut])
        got = list(read_recording(p))
        assert [g.raw for g in got] == raws[: len(got)]
        assert len(got) == len(raws) - 1


def test_killed_recorder_leaves_readable_file(tmp_path):
    """A process killed mid-stream: everything written before the kill reads back."""
    import subprocess
    import sys

    path = tmp_path / "killed.igtlrec"
    code = f"""
import numpy as np, pyigtl, threading
from guidance.io.recording import Recorder
rec = Recorder({str(path)!r})
i = 0
while True:
    raw = pyigtl.ImageMessage(np.full((1, 64, 64), i % 256, np.uint8), device_name='I').pack()
    rec.on_raw(raw[:58], memoryview(raw[58:]), i, 'peer')
    i += 1
    if i == 50:
        print('GO', flush=True)
    threading.Event().wait(0.001)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "GO"
    os.kill(proc.pid, 9)
    proc.wait()
    got = list(read_recording(path))
    assert len(got) >= 40
    for k, g in enumerate(got):
        assert g.header.message_type == "IMAGE" and g.raw[-1] == k % 256


@pytest.mark.parametrize(
    "content", [b"", b"not a recording at all", b"GIGTLREC\x00\x09" + b"\0" * 20]
)
def test_bad_recording_files_rejected(tmp_path, content):
    p = tmp_path / "bad.igtlrec"
    p.write_bytes(content)
    with pytest.raises(RecordingError, match=r"bad\.igtlrec"):
        list(read_recording(p))


def test_replay_cli_errors_exit_2(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "missing.igtlrec"), "--to", "127.0.0.1:1"]) == 2
    assert "missing.igtlrec: cannot read: no such file" in capsys.readouterr().err
    p = tmp_path / "junk.igtlrec"
    p.write_bytes(b"junk" * 10)
    assert main(["replay", str(p), "--to", "127.0.0.1:9"]) == 2
    with pytest.raises(SystemExit) as e:
        main(["replay", str(p), "--to", "127.0.0.1:9", "--speed", "fast"])
    assert e.value.code == 2
