"""Frame sender for ``guidance bench`` (run as ``python -m guidance.cli.bench_sender``).

A separate process, so that the receiver under test has the interpreter to itself. It
listens on a loopback port, and once a client connects streams pre-rendered frames
(IMAGE + TRANSFORM) at a fixed rate. Each message's OpenIGTLink timestamp is the
sender's ``time.monotonic()`` just before the message is packed and queued: on one
machine the monotonic clock is shared between processes, so the receiver can measure
transport latency from it. Whatever the receiver sends back is read and discarded.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import numpy as np
import pyigtl

from guidance.geometry import ImageVolume
from guidance.io.igtl import IgtlServer
from guidance.io.messages import image_message_from_volume


def frames(size: int, n: int, seed: int) -> list[ImageVolume]:
    """Pre-render ``n`` 16-bit fluoroscopy frames (the simulator on the real CT), or
    synthetic frames with a dark needle line when the real data is missing."""
    try:
        from guidance.sim import make_scanner

        sc = make_scanner("fluoro", size=size, seed=seed)
        return [sc.frame(i, i / 15.0).image for i in range(n)]  # type: ignore[attr-defined]
    except Exception as e:  # pragma: no cover - fallback when the data package is absent
        print(f"bench_sender: simulator unavailable ({e}); synthetic frames", file=sys.stderr)
        import cv2

        rng = np.random.default_rng(seed)
        out = []
        m = np.diag([0.5, 0.5, 1.0, 1.0])
        for i in range(n):
            img = rng.normal(30000, 2000, (size, size)).astype(np.uint16)
            cv2.line(img, (size // 8, size // 8), (size // 3 + 4 * i, size // 2), 5000, 3)
            out.append(ImageVolume(img[None], m))
        return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    imgs = frames(args.size, args.frames, args.seed)
    pose = np.eye(4)
    server = IgtlServer(0).start()
    print(f"READY {server.port}", flush=True)
    # Wait (event-driven) for the first client.
    while not server.connections():
        time.sleep(0.01)  # start-up only, not on the measured path
    period = 1.0 / args.fps
    stop = threading.Event()
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < args.seconds and server.connections():
        vol = imgs[n % len(imgs)]
        ts = time.monotonic()
        server.send(image_message_from_volume(vol, "Image_Reference", ts, "lps"))
        pose[0, 3] = n * 0.1
        server.send(pyigtl.TransformMessage(pose, timestamp=ts, device_name="NeedleToReference"))
        n += 1
        delay = t0 + n * period - time.monotonic()
        if delay > 0:
            stop.wait(delay)
    print(f"SENT {n}", flush=True)
    time.sleep(0.2)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
