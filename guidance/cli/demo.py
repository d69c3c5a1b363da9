"""``guidance demo``: simulator and live loop in one process over loopback."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guidance.cli.common import path_arg, positive_float, print_summary, start_gui_or_fail
from guidance.cli.main import UsageError
from guidance.cli.session import LiveSession
from guidance.cli.simulate import make_scanner_or_fail
from guidance.io.igtl import IgtlClient

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="simulated procedure on the real CT, end to end",
                       description="Start the simulated scanner and the live loop over "
                       "loopback OpenIGTLink; write annotated PNGs and summary.json.")
    p.add_argument("--seconds", type=positive_float, default=12.0)
    p.add_argument("--modality", choices=("us", "fluoro"), default="fluoro")
    p.add_argument("--out", type=path_arg("output_dir", Path), default=Path("demo-out"),
                   metavar="DIR")
    p.add_argument("--fps", type=positive_float, default=15.0)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-s", type=float, default=None,
                   help="simulation time of the first frame (default: so that the needle "
                   "reaches the target three quarters of the way through the demo)")
    p.add_argument("--gui", action="store_true",
                   help="show the live view (PyQt5) while the demo runs")
    p.add_argument("--screenshot", type=path_arg("output_file", Path), metavar="FILE",
                   help="with --gui: draw offscreen and save a PNG of the live view at the "
                        "end of the stream")
    p.add_argument("--sound", action="store_true", help="with --gui: beep on DANGER")
    p.set_defaults(func=run)


def calibrate_room(room: Any, room_dir: Path) -> list[Path]:
    """The room's calibrations as a user makes them: the simulated raw inputs written,
    then ``guidance calibrate`` on each (the same command line, in this process).

    Returns:
        The calibration files for ``--calibration``.
    """
    from guidance.cli.main import main as guidance_main

    inputs = room.write_inputs(room_dir)
    jobs = [("pivot", ["--tool", "Needle"]), ("fiducials", ["--name", "ReferenceToCT"]),
            ("temporal", []), ("probe", []), ("carm", ["--name", "ReferenceToCArm"])]
    kinds = {"fiducials": "register"}
    files = []
    for name, extra in jobs:
        if name not in inputs:
            continue
        out = room_dir / f"{name}-calibration.json"
        argv = ["calibrate", kinds.get(name, name), "--input", str(inputs[name]), "--out",
                str(out), *extra]
        if guidance_main(argv) != 0:
            raise UsageError(f"demo: `guidance {' '.join(argv)}` failed")
        files.append(out)
    return files


def run(args: argparse.Namespace) -> int:
    from guidance.cli.run import load_room_or_fail
    from guidance.sim.room import RoomParams, SimulatedRoom, stream_room

    start_gui_or_fail(args, require_png=True)  # before anything starts
    print(f"demo: preparing the {args.modality} simulator (real CT, seed {args.seed}) ...",
          flush=True)
    scanner = make_scanner_or_fail(args.modality, args.size, args.seed)
    room = SimulatedRoom(scanner.path, RoomParams(), args.seed, scanner)
    print("demo: the room's calibrations (simulated pivot, fiducials, temporal, "
          f"{'C-arm' if args.modality == 'fluoro' else 'probe'} data) ...", flush=True)
    setup = load_room_or_fail(calibrate_room(room, args.out / "room"))
    session = LiveSession(listen=0, out_dir=args.out, png_every_s=max(args.seconds / 12, 0.5),
                          room=setup)
    entry, target = scanner.entry_lps, scanner.target_lps
    planned = None
    if args.modality == "fluoro":  # the fluoroscopy scene is the real CT: plan on it
        from guidance.cli.demo_planning import prepare_plan
        from guidance.planning.plan import PlanError

        print("demo: planning on the real CT (structures, distance fields) ...", flush=True)
        try:
            planned = prepare_plan(entry, target, args.out)
        except PlanError as e:
            raise UsageError(str(e)) from e
        session.pipeline.set_plan(*planned)
    else:  # the ultrasound scene is synthetic: a plan, no planning-CT structures
        from guidance.planning.plan import Plan

        session.pipeline.set_plan(Plan(entry, target, "simulated ultrasound target"))
    session.start()
    tracker = IgtlClient("127.0.0.1", session.port).start()
    scanner_link = IgtlClient("127.0.0.1", session.port).start()
    tracker.wait_connected(5.0)
    scanner_link.wait_connected(5.0)
    stop = threading.Event()
    print(f"demo: streaming {args.seconds:.0f} s: needle marker poses at "
          f"{room.params.pose_hz:g} Hz and frames at {args.fps:.0f} fps on two connections "
          "...", flush=True)
    start_s = args.start_s
    if start_s is None:
        speed = scanner.path.needle.speed_mm_s
        reach_s = scanner.path.plan_length_mm / speed if speed else 0.0
        start_s = max(0.0, reach_s - 0.75 * args.seconds)
    last: list[Any] = [None]  # the newest simulated frame (ground truth)

    def stream() -> int:
        return stream_room(room, tracker.send, scanner_link.send, args.fps, args.seconds,
                           stop, start_s=start_s,
                           on_frame=lambda f, _ts: last.__setitem__(0, f))[1]

    if args.gui:
        n = _stream_with_gui(stream, session, stop, args)
    else:
        n = stream()
    stop.wait(0.3)
    tracker.stop()
    scanner_link.stop()
    summary = session.stop({"modality": args.modality, "frames_sent": n})
    print_summary(summary, f"guidance demo ({args.modality})")
    if planned is not None and last[0] is not None:
        from guidance.cli.demo_planning import verify_final_needle

        print("demo: control CT with the final needle -> verification ...", flush=True)
        tip = last[0].truth.tip_lps
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
