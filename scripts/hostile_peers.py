"""Measure `guidance run` under hostile peers (issue "hostile input and faults").

Starts `guidance run --listen` as its own process and, while a well-behaved client
streams frames and checks a reply to each, measures from /proc/PID/status:

1. 8 connections each declaring a 200 MiB IMAGE body and trickling 1 KiB/s: RSS growth.
2. a 1 byte/s sender: seconds until the server closes it.
3. 300 idle connections: threads of the process, and whether the good client is served.

Writes JSON (``--json``) and prints one line per measurement. Run from the repository
root: ``python scripts/hostile_peers.py --json hostile.json``.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyigtl

from guidance.io.igtl import IgtlClient


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(val.split()[0])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GoodClient:
    """Sends a frame every 0.1 s and counts replies carrying its timestamp."""

    def __init__(self, port: int) -> None:
        self.client = IgtlClient("127.0.0.1", port).start()
        if not self.client.wait_connected(20):
            raise SystemExit("the good client could not connect")
        self.sent = self.answered = 0
        self.worst_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        rng = np.random.default_rng(0)
        seq = 0
        while not self._stop.wait(0.1):
            ts = 1000.0 + self.sent
            msg = pyigtl.ImageMessage(rng.integers(0, 255, (1, 128, 128), dtype=np.uint8),
                                      device_name="Image_Reference", timestamp=ts)
            msg.header_version = 2
            msg.metadata = {"Modality": "US"}
            t0 = time.monotonic()
            self.client.send(msg)
            self.sent += 1
            while True:
                reply = self.client.slots.wait_newer("GuidanceWarning", seq, 10.0)
                if reply is None:
                    break
                seq = reply.seq
                if abs(reply.timestamp_s - ts) < 1e-6:
                    self.answered += 1
                    self.worst_s = max(self.worst_s, time.monotonic() - t0)
                    break

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(15)
        self.client.stop()
        return {"frames_sent": self.sent, "replies": self.answered,
                "worst_reply_s": round(self.worst_s, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the measurements here")
    ap.add_argument("--trickle-s", type=float, default=20.0,
                    help="seconds the 8 declared bodies trickle (default 20)")
    args = ap.parse_args()
    port = free_port()
    out_dir = Path("hostile-out")
    run = subprocess.Popen([sys.executable, "-m", "guidance.cli.main", "run", "--listen",
                            str(port), "--modality", "us", "--out", str(out_dir)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run.stdout is not None
    run.stdout.readline()
    good = GoodClient(port)
    result: dict[str, object] = {}
    try:
        threading.Event().wait(2.0)  # the model loaded and warm
        base = proc_status(run.pid)
        result["baseline"] = base

        # 1. Eight declared 200 MiB bodies, trickling 1 KiB/s.
        socks = []
        for k in range(8):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(struct.pack(">H12s20sIIQQ", 1, b"IMAGE", f"Big{k}".encode(), 0, 0,
                                  200 << 20, 0))
            socks.append(s)
        peak = 0
        closed_at: float | None = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.trickle_s:
            for s in socks:
                try:
                    s.send(b"\0" * 1024)
                except OSError:
                    closed_at = closed_at or time.monotonic() - t0
            peak = max(peak, proc_status(run.pid)["VmRSS"])
            threading.Event().wait(1.0)
        for s in socks:
            s.close()
        result["declared_200MiB_x8"] = {
            "rss_growth_mb": round((peak - base["VmRSS"]) / 1024, 1),
            "closed_after_s": None if closed_at is None else round(closed_at, 1)}
        print(f"8 x 200 MiB declared, 1 KiB/s: RSS grew {(peak - base['VmRSS']) / 1024:.1f} MB"
              f" (peak), connections closed after {closed_at} s")

        # 2. A 1 byte/s sender.
        s = socket.create_connection(("127.0.0.1", port))
        raw = pyigtl.StringMessage("x" * 100, device_name="Slow").pack()
        t0 = time.monotonic()
        dropped = None
        s.settimeout(0.2)
        for b in raw:  # one byte, then a second of reading (the server's broadcasts)
            next_byte = time.monotonic() + 1.0
            try:
                s.send(bytes([b]))
                while time.monotonic() < next_byte and dropped is None:
                    try:
                        if s.recv(65536) == b"":
                            dropped = time.monotonic() - t0
                    except TimeoutError:
                        pass
            except OSError:
                dropped = time.monotonic() - t0
            if dropped is not None or time.monotonic() - t0 > 90:
                break
        s.close()
        result["one_byte_per_s_dropped_after_s"] = None if dropped is None else round(dropped, 1)
        print(f"1 byte/s sender dropped after {dropped:.1f} s" if dropped else
              "1 byte/s sender NOT dropped within 90 s")

        # 3. 300 idle connections.
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
        threading.Event().wait(2.0)
        st = proc_status(run.pid)
        result["idle_300"] = {"threads": st["Threads"], "alive": run.poll() is None}
        print(f"300 idle connections: {st['Threads']} threads, process alive: "
              f"{run.poll() is None}")
        for s in idle:
            s.close()
    finally:
        result["good_client"] = good.stop()
        run.send_signal(2)
        _o, err = run.communicate(timeout=60)
    result["run_exit"] = run.returncode
    result["summary_written"] = (out_dir / "summary.json").exists()
    result["traceback_in_stderr"] = "Traceback" in err
    print(f"good client: {result['good_client']}; run exit {run.returncode}, summary.json "
          f"written: {result['summary_written']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
