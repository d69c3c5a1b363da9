"""A recording (``guidance run --record``) sent again to an OpenIGTLink server, byte for
byte, with its original timing scaled by a speed."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from pathlib import Path

from guidance.io.recording import RecordingError, read_recording
from guidance.scenarios.errors import ScenarioError

__all__ = ["replay", "replay_recording"]


def replay_recording(path: Path, host: str, port: int, speed: float) -> int:
    """:func:`replay` as ``guidance replay`` runs it: the number of messages sent.

    Raises:
        ScenarioError: no such file, a bad recording, or a server that cannot be
            reached (one line naming which).
    """
    if not path.is_file():
        raise ScenarioError(f"no such recording: {path}")
    try:
        return replay(path, host, port, speed)
    except RecordingError as e:
        raise ScenarioError(str(e)) from e
    except OSError as e:
        raise ScenarioError(f"cannot reach {host}:{port}: {e}") from e


def replay(path: Path, host: str, port: int, speed: float,
           stop: threading.Event | None = None, connect_timeout_s: float = 10.0,
           drain_timeout_s: float = 10.0) -> int:
    """Send the recording at ``path`` to ``host:port``; returns the number of messages
    sent.

    Every message is sent (no latest-value dropping: a replay must reproduce the
    recording), each when its recorded arrival time (ns) scaled by ``1 / speed`` has
    passed (``speed`` inf: no waiting); ``stop`` ends the replay early.

    Raises:
        guidance.io.recording.RecordingError: a bad file (before connecting).
        OSError: the server cannot be reached within ``connect_timeout_s`` seconds.
    """
    stop = stop or threading.Event()
    records = read_recording(path)
    first = next(records, None)  # a bad file fails here, before connecting
    if first is None:
        return 0
    records = itertools.chain([first], records)
    deadline = time.monotonic() + connect_timeout_s
    delay = 0.1
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=5.0)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            stop.wait(delay)
            delay = min(delay * 2, 2.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    # Read (and discard) what the server sends back: closing a socket with unread data
    # resets the connection, and the server would lose the messages it has not read yet.
    drain = threading.Thread(target=_drain, args=(sock,), daemon=True)
    drain.start()
    n = 0
    t0_rec: int | None = None
    t0 = time.monotonic()
    try:
        for rec in records:
            if stop.is_set():
                break
            if t0_rec is None:
                t0_rec = rec.received_ns
            if speed != float("inf"):
                due = t0 + (rec.received_ns - t0_rec) * 1e-9 / speed
                wait = due - time.monotonic()
                if wait > 0 and stop.wait(wait):
                    break
            sock.sendall(rec.raw)
            n += 1
        # Half-close: the server reads everything, sees the end and closes its side.
        sock.shutdown(socket.SHUT_WR)
        drain.join(drain_timeout_s)
    finally:
        sock.close()
    return n


def _drain(sock: socket.socket) -> None:
    buf = bytearray(65536)
    try:
        while sock.recv_into(buf):
            pass
    except OSError:
        pass
