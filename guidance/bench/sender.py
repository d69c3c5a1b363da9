"""Frame sender for ``guidance bench`` (run as ``python -m guidance.bench.sender``).

With ``--tracked`` it is the tracker of ``guidance bench --tracked`` instead: the
simulated room's needle marker poses (``NeedleToReference``, :mod:`guidance.sim.room`) at
``--pose-hz``, each stamped with the sender's room time, no frames.

A separate process, so that the receiver under test has the interpreter to itself. It
listens on a loopback port, and once a client connects streams pre-rendered, pre-packed
frames (TRANSFORM + IMAGE) at a fixed rate with plain ``sendall``. Each message's
OpenIGTLink timestamp is written into its header (the CRC covers only the body) as the
sender's ``time.monotonic()`` just before the bytes go to the kernel: on one machine the
monotonic clock is shared between processes, so the receiver measures the latency the
transport adds, from the first byte handed over to the decoded frame in the consumer's
hands. Whatever the receiver sends back is read and discarded.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pyigtl

from guidance.geometry import ImageVolume
from guidance.io.messages import image_message_from_volume

__all__ = ["frames", "main"]


#: The simulated procedure's times the frames show, s: the needle advancing from 30 to
#: 54 mm inserted (the model sees it from about 25 mm): guidance while a needle is in,
#: which is what the loop is for (frames before it goes in would time a needle search).
FRAMES_T0_S, FRAMES_T1_S = 6.0, 12.0


def frames(size: int, n: int, seed: int) -> list[ImageVolume]:
    """Pre-render ``n`` 16-bit fluoroscopy frames (the simulator on the real CT) evenly
    over :data:`FRAMES_T0_S`..:data:`FRAMES_T1_S`, or synthetic frames with a dark
    needle line when the real data is missing."""
    try:
        from guidance.sim import make_scanner

        sc = make_scanner("fluoro", size=size, seed=seed)
        step = (FRAMES_T1_S - FRAMES_T0_S) / max(n - 1, 1)
        return [sc.frame(i, FRAMES_T0_S + i * step).image for i in range(n)]
    except Exception as e:  # pragma: no cover - fallback when the data package is absent
        print(f"bench sender: simulator unavailable ({e}); synthetic frames", file=sys.stderr)
        import cv2

        rng = np.random.default_rng(seed)
        out = []
        m = np.diag([0.5, 0.5, 1.0, 1.0])
        for i in range(n):
            img = rng.normal(30000, 2000, (size, size)).astype(np.uint16)
            cv2.line(img, (size // 8, size // 8), (size // 3 + 4 * i, size // 2), 5000, 3)
            out.append(ImageVolume(img[None], m))
        return out


def _stamp(raw: bytearray, t_s: float) -> None:
    """Write the OpenIGTLink timestamp (not covered by the CRC) into a packed header."""
    sec = int(t_s)
    struct.pack_into(">II", raw, 34, sec, int((t_s - sec) * 2**32) & 0xFFFFFFFF)


def _drain(sock: socket.socket) -> None:
    buf = bytearray(1 << 16)
    try:
        while sock.recv_into(buf):
            pass
    except OSError:
        pass


def main() -> int:
    """The process: parse its arguments, say ``READY <port>``, serve one receiver, say
    ``SENT <n>``; returns the exit status (0)."""
    ap = argparse.ArgumentParser(prog="python -m guidance.bench.sender")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tracked", action="store_true", help="marker poses of the room only")
    ap.add_argument("--pose-hz", type=float, default=60.0)
    args = ap.parse_args()
    if args.tracked:
        return _tracked(args)
    # Pack every frame once: the measured path starts when the bytes go to the kernel.
    packed = [bytearray(image_message_from_volume(v, "Image_Reference", 0.0, "lps").pack())
              for v in frames(args.size, args.frames, args.seed)]
    pose = np.eye(4)

    def tick(conn: socket.socket, n: int, _t_rel: float) -> None:
        # Forward, then back, then forward...: the needle moves on smoothly (about
        # 0.4 mm a frame at 15 fps), never jumps back to the start.
        k = n % (2 * len(packed) - 2)
        raw = packed[k if k < len(packed) else 2 * len(packed) - 2 - k]
        pose[0, 3] = n * 0.1
        tr = bytearray(pyigtl.TransformMessage(pose, device_name="NeedleToReference").pack())
        ts = time.monotonic()
        _stamp(tr, ts)
        _stamp(raw, ts)
        conn.sendall(tr)
        conn.sendall(raw)

    return _paced(args.seconds, 1.0 / args.fps, tick)


def _paced(seconds: float, period: float,
           tick: Callable[[socket.socket, int, float], None]) -> int:
    """Accept the receiver, call ``tick(conn, n, n * period)`` on a deadline every
    ``period`` for ``seconds``, say SENT <n>, close."""
    srv, conn = _listen()
    stop = threading.Event()
    t0 = time.monotonic()
    n = 0
    try:
        while time.monotonic() - t0 < seconds:
            tick(conn, n, n * period)
            n += 1
            delay = t0 + n * period - time.monotonic()
            if delay > 0:
                stop.wait(delay)
    except OSError as e:
        print(f"bench sender: receiver went away: {e}", file=sys.stderr)
    print(f"SENT {n}", flush=True)
    try:
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    stop.wait(0.2)
    conn.close()
    srv.close()
    return 0


def _listen() -> tuple[socket.socket, socket.socket]:
    """Listen on a loopback port, say READY <port>, accept one receiver (its answers read
    and discarded)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    print(f"READY {srv.getsockname()[1]}", flush=True)
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=_drain, args=(conn,), daemon=True).start()
    return srv, conn


def _tracked(args: argparse.Namespace) -> int:
    """The room's tracker: marker poses at ``--pose-hz`` for ``--seconds``."""
    from guidance.bench.tracked import bench_room

    room = bench_room(args.seed)
    rng = np.random.default_rng([args.seed, 1])
    room.clock(2.0)

    def tick(conn: socket.socket, _n: int, t_rel: float) -> None:
        # A needle going back and forth along the plan: always on its path.
        t_sim = 2.0 + 6.0 * abs(((t_rel / 6.0) % 2.0) - 1.0)
        for msg in room.pose_messages(t_sim, room.wall0 + t_rel, rng):
            conn.sendall(msg.pack())

    return _paced(args.seconds, 1.0 / args.pose_hz, tick)


if __name__ == "__main__":
    sys.exit(main())
