"""``guidance simulate``: a simulated scanner streaming frames and tool poses."""

from __future__ import annotations

import argparse
import threading

from guidance.cli.common import host_port, port_number, positive_float, wait_or_interrupt
from guidance.cli.main import UsageError
from guidance.io.igtl import IgtlClient, IgtlServer
from guidance.io.sim_source import stream_scanner

__all__ = ["make_scanner_or_fail", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="stream a simulated ultrasound or fluoroscopy scanner",
                       description="Stream simulated frames (IMAGE Image_Reference) and tool "
                       "poses (TRANSFORM NeedleToReference, ...) over OpenIGTLink.")
    p.add_argument("--modality", choices=("us", "fluoro"), default="us")
    p.add_argument("--fps", type=positive_float, default=15.0)
    p.add_argument("--size", type=int, default=256, help="frame size in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seconds", type=positive_float, help="stop after this long (default: Ctrl-C)")
    dst = p.add_mutually_exclusive_group(required=True)
    dst.add_argument("--listen", type=port_number, metavar="PORT")
    dst.add_argument("--connect", type=host_port, metavar="HOST:PORT")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR")
    p.set_defaults(func=run)


def make_scanner_or_fail(modality: str, size: int, seed: int) -> object:
    """Build the scanner, turning bad parameters into a usage error."""
    if not 32 <= size <= 2048:
        raise UsageError(f"--size must be 32..2048, got {size}")
    from guidance.sim import make_scanner

    try:
        return make_scanner(modality, size=size, seed=seed)
    except (ValueError, TypeError, RuntimeError) as e:  # RuntimeError: RealDataMissing
        raise UsageError(f"cannot build the {modality} simulator: {e}") from e


def run(args: argparse.Namespace) -> int:
    scanner = make_scanner_or_fail(args.modality, args.size, args.seed)
    stop = threading.Event()
    if args.listen is not None:
        server = IgtlServer(args.listen, host=args.bind).start()
        send = server.send
        print(f"simulate: {args.modality} {args.size}px at {args.fps} fps, listening on "
              f"{args.bind}:{server.port}", flush=True)
        closer = server.stop
    else:
        client = IgtlClient(*args.connect).start()
        send = client.send
        print(f"simulate: {args.modality} {args.size}px at {args.fps} fps to "
              f"{args.connect[0]}:{args.connect[1]}", flush=True)
        closer = client.stop
    t = threading.Thread(target=stream_scanner,
                         args=(scanner, send, args.fps, args.seconds, stop), daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(0.5)
    except KeyboardInterrupt:
        pass
    stop.set()
    t.join(2.0)
    wait_or_interrupt(0.2, threading.Event())  # let the last messages leave
    closer()
    return 0
