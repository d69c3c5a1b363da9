"""``guidance replay``: send a recording again, with its original timing."""

from __future__ import annotations

import argparse
import itertools
import logging
import socket
import threading
import time
from pathlib import Path

from guidance.cli.common import host_port, path_arg
from guidance.cli.main import UsageError
from guidance.io.recording import RecordingError, read_recording

__all__ = ["register", "replay"]

log = logging.getLogger(__name__)


def _speed(text: str) -> float:
    if text == "max":
        return float("inf")
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"speed must be a number or 'max', got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"speed must be > 0, got {text}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="send a recording to an OpenIGTLink server",
                       description="Send every recorded message, byte for byte, with the "
                       "original timing scaled by --speed (max: as fast as possible).")
    p.add_argument("file", type=path_arg("input_file", Path),
                   help="recording to send (from guidance run --record)")
    p.add_argument("--to", type=host_port, required=True, metavar="HOST:PORT",
                   help="OpenIGTLink server to send to (e.g. guidance run --listen PORT)")
    p.add_argument("--speed", type=_speed, default=1.0,
                   help="playback speed: 1 = the original timing, 2 = twice as fast, 0.5, "
                        "... or max (no waiting) (default: %(default)s)")
    p.set_defaults(func=run)


def replay(path: Path, host: str, port: int, speed: float,
           stop: threading.Event | None = None, connect_timeout_s: float = 10.0,
           drain_timeout_s: float = 10.0) -> int:
    """Send the recording; returns the number of messages sent.

    Every message is sent (no latest-value dropping: a replay must reproduce the
    recording). Raises RecordingError for a bad file and OSError when the server
    cannot be reached within ``connect_timeout_s``.
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


def run(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise UsageError(f"no such recording: {args.file}")
    try:
        n = replay(args.file, args.to[0], args.to[1], args.speed)
    except RecordingError as e:
        raise UsageError(str(e)) from e
    except OSError as e:
        raise UsageError(f"cannot reach {args.to[0]}:{args.to[1]}: {e}") from e
    print(f"replayed {n} messages from {args.file}")
    return 0
