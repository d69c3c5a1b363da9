"""``guidance demo``: simulator and live loop in one process over loopback."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from guidance.cli.common import positive_float, print_summary
from guidance.cli.session import LiveSession
from guidance.cli.simulate import make_scanner_or_fail
from guidance.io.igtl import IgtlClient
from guidance.io.sim_source import stream_scanner

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="simulated procedure on the real CT, end to end",
                       description="Start the simulated scanner and the live loop over "
                       "loopback OpenIGTLink; write annotated PNGs and summary.json.")
    p.add_argument("--seconds", type=positive_float, default=12.0)
    p.add_argument("--modality", choices=("us", "fluoro"), default="fluoro")
    p.add_argument("--out", type=Path, default=Path("demo-out"), metavar="DIR")
    p.add_argument("--fps", type=positive_float, default=15.0)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-s", type=float, default=5.0,
                   help="simulation time of the first frame (default 5 s: needle at the skin)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(f"demo: preparing the {args.modality} simulator (real CT, seed {args.seed}) ...",
          flush=True)
    scanner = make_scanner_or_fail(args.modality, args.size, args.seed)
    session = LiveSession(listen=0, out_dir=args.out, png_every_s=max(args.seconds / 12, 0.5))
    session.pipeline.set_plan(scanner.entry_lps, scanner.target_lps)  # type: ignore[attr-defined]
    session.start()
    client = IgtlClient("127.0.0.1", session.port).start()
    client.wait_connected(5.0)
    stop = threading.Event()
    print(f"demo: streaming {args.seconds:.0f} s at {args.fps:.0f} fps ...", flush=True)
    n = stream_scanner(scanner, lambda m: client.send(m), args.fps, args.seconds, stop,
                       start_s=args.start_s)
    stop.wait(0.3)
    client.stop()
    summary = session.stop({"modality": args.modality, "frames_sent": n})
    print_summary(summary, f"guidance demo ({args.modality})")
    print(f"output: {args.out}/summary.json and {len(summary.get('pngs', []))} PNGs")
    return 0
