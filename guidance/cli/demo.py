"""``guidance demo``: simulator and live loop in one process over loopback."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from pathlib import Path

from guidance.cli.common import positive_float, print_summary, start_gui_or_fail
from guidance.cli.main import UsageError
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
    p.add_argument("--start-s", type=float, default=None,
                   help="simulation time of the first frame (default: so that the needle "
                   "reaches the target three quarters of the way through the demo)")
    p.add_argument("--gui", action="store_true",
                   help="show the live view (PyQt5) while the demo runs")
    p.add_argument("--screenshot", type=Path, metavar="FILE",
                   help="with --gui: draw offscreen and save a PNG of the live view at the "
                        "end of the stream")
    p.add_argument("--sound", action="store_true", help="with --gui: beep on DANGER")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start_gui_or_fail(args, require_png=True)  # before anything starts
    print(f"demo: preparing the {args.modality} simulator (real CT, seed {args.seed}) ...",
          flush=True)
    scanner = make_scanner_or_fail(args.modality, args.size, args.seed)
    session = LiveSession(listen=0, out_dir=args.out, png_every_s=max(args.seconds / 12, 0.5))
    entry, target = scanner.entry_lps, scanner.target_lps  # type: ignore[attr-defined]
    session.pipeline.set_plan(entry, target)
    planned = None
    if args.modality == "fluoro":  # the fluoroscopy scene is the real CT: plan on it
        from guidance.cli.demo_planning import prepare_plan

        print("demo: planning on the real CT (structures, distance fields) ...", flush=True)
        planned = prepare_plan(entry, target, args.out)
        session.pipeline.safety.live_checker = planned[2]
    session.start()
    client = IgtlClient("127.0.0.1", session.port).start()
    client.wait_connected(5.0)
    stop = threading.Event()
    print(f"demo: streaming {args.seconds:.0f} s at {args.fps:.0f} fps ...", flush=True)
    start_s = args.start_s
    if start_s is None:
        path = getattr(scanner, "path", None)
        speed = getattr(getattr(path, "needle", None), "speed_mm_s", None)
        reach_s = path.plan_length_mm / speed if path is not None and speed else 0.0
        start_s = max(0.0, reach_s - 0.75 * args.seconds)
    last: list[object] = [None]  # the newest simulated frame (ground truth)

    def stream() -> int:
        return stream_scanner(scanner, lambda m: client.send(m), args.fps, args.seconds, stop,
                              on_frame=lambda f: last.__setitem__(0, f), start_s=start_s)

    if args.gui:
        n = _stream_with_gui(stream, session, stop, args)
    else:
        n = stream()
    stop.wait(0.3)
    client.stop()
    summary = session.stop({"modality": args.modality, "frames_sent": n})
    print_summary(summary, f"guidance demo ({args.modality})")
    if planned is not None and last[0] is not None:
        from guidance.cli.demo_planning import verify_final_needle

        print("demo: control CT with the final needle -> verification ...", flush=True)
        tip = last[0].truth.tip_lps  # type: ignore[attr-defined]
        ver = verify_final_needle(planned[0], planned[1], tip, args.out / "verification",
                                  args.seed)
        t2t = ver.get("tip_to_target_mm")
        t2t_s = f"{t2t:.1f} mm" if isinstance(t2t, float) else "-"
        print(f"verification: {ver['verdict']} (tip to target {t2t_s}); report "
              f"{args.out / 'verification' / 'report.html'}")
    print(f"output: {args.out}/summary.json and {len(summary.get('pngs', []))} PNGs")
    return 0


def _stream_with_gui(stream: Callable[[], int], session: LiveSession, stop: threading.Event,
                     args: argparse.Namespace) -> int:
    """Stream on a worker thread while the live view runs on this (the main) thread.
    With ``--screenshot`` the view is grabbed when the stream ends; without, the window
    stays open (showing STALE once the stream has ended) until it is closed."""
    from guidance.gui.app import GuiUnavailable
    from guidance.gui.live_app import run_live_gui

    sent = [0]
    finished = threading.Event()

    def worker() -> None:
        try:
            sent[0] = stream()
        finally:
            finished.set()

    t = threading.Thread(target=worker, name="demo-stream", daemon=True)
    t.start()
    try:
        path = run_live_gui(session, screenshot=args.screenshot, finished=finished,
                            sound=args.sound, out_dir=args.out)
    except (GuiUnavailable, OSError) as e:
        stop.set()
        t.join(10.0)
        raise UsageError(str(e)) from e
    finally:
        stop.set()  # window closed early: end the stream
        t.join(30.0)
    if path:
        print(f"screenshot: {path}", flush=True)
    return sent[0]
