"""``guidance replay``: send a recording again, with its original timing
(:mod:`guidance.scenarios.replay`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from guidance.cli.common import host_port, path_arg

__all__ = ["register"]


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


def run(args: argparse.Namespace) -> int:
    from guidance.scenarios.replay import replay_recording

    n = replay_recording(args.file, args.to[0], args.to[1], args.speed)
    print(f"replayed {n} messages from {args.file}")
    return 0
