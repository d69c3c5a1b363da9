"""``guidance simulate``: a simulated scanner, or a whole simulated room (``--tracked``).

Without ``--tracked``: frames (IMAGE ``Image_Reference``) and the simulator's tool poses
(``NeedleTipToReference``: the tip itself) in the planning CT's frame; ``guidance run``
then needs a ``ReferenceToCT`` (identity) to use them. With ``--tracked``: the room of
:mod:`guidance.sim.room` -- a tracker sending the needle *marker's* pose
(``NeedleToReference``, 150+ mm from the tip, with jitter) at its own rate, a patient
reference that is not the CT (registration needed), frames that lag behind their
timestamps, each stream on its own connection -- and, with ``--write-inputs DIR``, the
raw inputs of ``guidance calibrate`` (pivot, spin, fiducials, temporal; probe or C-arm).

Ultrasound (``--modality us``) plays an in-plane nerve block at a real block's pace
(:mod:`guidance.sim.us_scenario`, ``--scenario``): the needle enters the image about half
a second in and advances at 1-3 mm/s with pauses toward a target beside the nerve (or
``--target-px U,V``), then is held there.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

from guidance.cli.common import (
    StopSignals,
    host_port,
    path_arg,
    pixel_point,
    port_number,
    positive_float,
    wait_or_interrupt,
)
from guidance.cli.main import UsageError
from guidance.io.igtl import IgtlClient, IgtlServer
from guidance.io.sim_source import stream_scanner
from guidance.records import MODALITIES

__all__ = ["make_room_or_fail", "make_scanner_or_fail", "register", "script_us_or_fail"]


def register(sub: argparse._SubParsersAction) -> None:
    from guidance.sim.scenario import SCENARIOS

    p = sub.add_parser("simulate", help="stream a simulated scanner, or a simulated room",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", choices=(*MODALITIES, "none"), default="us",
                   help="frames to stream (none: tracked poses only, with --tracked; ct: "
                   "control slabs of a CT-guided procedure, one per step)")
    p.add_argument("--fps", type=positive_float, default=15.0,
                   help="frames per second streamed (Hz)")
    p.add_argument("--size", type=int, default=256, help="frame size in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the simulated scene (the same seed, the same frames)")
    p.add_argument("--seconds", type=positive_float, help="stop after this long (default: Ctrl-C)")
    p.add_argument("--scenario", choices=SCENARIOS,
                   help="--modality us: the needle's story at a real block's pace (default "
                   "safe): safe reaches the target beside the nerve; drift turns toward the "
                   "nerve (the vessel beyond it on the path ahead), is withdrawn and "
                   "redirected; breach ends with the tip inside the nerve")
    p.add_argument("--target-px", type=pixel_point, metavar="U,V",
                   help="--modality us: the target as a pixel of the frames (U column, V row; "
                   "default: beside the nerve)")
    ct = p.add_argument_group("--modality ct: control scans (slabs) along a plan")
    ct.add_argument("--ct-steps", type=int, default=6, help="control scans (default 6)")
    ct.add_argument("--ct-interval-s", type=float, default=2.0,
                    help="seconds between scans (default 2.0)")
    ct.add_argument("--ct-slices", type=int, default=5, help="slices per slab (default 5)")
    ct.add_argument("--ct-thickness-mm", type=positive_float, default=3.0,
                    help="slice thickness = spacing, mm (default 3)")
    ct.add_argument("--ct-motion-mm", type=float, default=0.0,
                    help="patient translation toward +L from the 3rd scan on, mm (default 0)")
    dst = p.add_mutually_exclusive_group()
    dst.add_argument("--listen", type=port_number, metavar="PORT",
                     help="serve OpenIGTLink on this TCP port (the guidance connects)")
    dst.add_argument("--connect", type=host_port, metavar="HOST:PORT",
                     help="connect to a listening guidance (guidance run --listen PORT)")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR",
                   help="address --listen binds to (loopback unless given)")
    room = p.add_argument_group("--tracked: a simulated procedure room")
    room.add_argument("--tracked", action="store_true",
                      help="stream the room: marker poses, reference != CT, lagging frames")
    room.add_argument("--write-inputs", type=path_arg("output_dir", Path), metavar="DIR",
                      help="write the calibration inputs (pivot.json, spin.json, "
                           "fiducials.json, temporal.json; probe.json or carm.json) first")
    room.add_argument("--plan", type=path_arg("input_file"), metavar="FILE",
                      help="the needle follows this plan.json (modality none or fluoro)")
    room.add_argument("--speed-mm-s", type=positive_float, default=10.0,
                      help="needle speed with --plan or --modality none (default 10)")
    room.add_argument("--lag-s", type=float, default=0.08,
                      help="frames show the room this long before their timestamp (0.08)")
    room.add_argument("--pose-hz", type=positive_float, default=60.0,
                      help="tracker rate, Hz (default 60)")
    room.add_argument("--tip-length-mm", type=positive_float, default=160.0,
                      help="needle marker to tip, mm (default 160)")
    room.add_argument("--marker-lateral-mm", type=float, default=0.0,
                      help="marker origin off the shaft's line, mm (needs a spin calibration)")
    room.add_argument("--relative-to", choices=("Reference", "Tracker"), default="Reference",
                      help="poses as NeedleToReference (PLUS) or NeedleToTracker + "
                           "ReferenceToTracker")
    room.add_argument("--start-s", type=float, default=0.0,
                      help="simulation time of the first pose (default 0)")
    p.set_defaults(func=run)


def make_scanner_or_fail(modality: str, size: int, seed: int) -> Any:
    """Build the scanner, turning bad parameters into a usage error."""
    if not 32 <= size <= 2048:
        raise UsageError(f"--size must be 32..2048, got {size}")
    from guidance.sim import make_scanner

    try:
        return make_scanner(modality, size=size, seed=seed)
    except (ValueError, TypeError, RuntimeError) as e:  # RuntimeError: RealDataMissing
        raise UsageError(f"cannot build the {modality} simulator: {e}") from e


def make_room_or_fail(args: argparse.Namespace) -> Any:
    """The simulated room of ``--tracked`` (scanner, needle path, room parameters)."""
    from guidance.sim.room import RoomParams, SimulatedRoom, plan_path

    try:
        params = RoomParams(tip_length_mm=args.tip_length_mm,
                            marker_lateral_mm=args.marker_lateral_mm, image_lag_s=args.lag_s,
                            pose_hz=args.pose_hz, relative_to=args.relative_to)
    except ValueError as e:
        raise UsageError(str(e)) from e
    scanner = None if args.modality == "none" else make_scanner_or_fail(
        args.modality, args.size, args.seed)
    story = script_us_or_fail(scanner, args)
    if story:
        print(f"simulate: {story}", flush=True)
    if args.plan is not None:
        if args.modality == "us":
            raise UsageError("--plan with --modality us: the ultrasound scene is synthetic, "
                             "not the planning CT; use --modality none or fluoro")
        from guidance.planning.plan import Plan, PlanError

        try:
            plan = Plan.load(args.plan)
        except PlanError as e:
            raise UsageError(str(e)) from e
        path = plan_path(plan.entry_lps, plan.target_lps, args.speed_mm_s, seed=args.seed)
        if scanner is not None:  # the fluoroscopy needle follows the plan too
            scanner.path, scanner.entry_lps, scanner.target_lps = (
                path, path.entry_lps, path.target_lps)
    elif scanner is not None:
        path = scanner.path
    else:
        from guidance.sim.anatomy import disc_approach
        from guidance.sim.params import FluoroParams

        fp = FluoroParams()
        try:
            a = disc_approach(fp.disc_levels[0], fp.disc_levels[1], fp.approach_left,
                              fp.approach_deg, fp.target_posterior_mm, fp.target_lateral_mm)
        except (ValueError, RuntimeError) as e:
            raise UsageError(f"cannot plan the simulated needle on the real CT: {e}") from e
        path = plan_path(a.entry_lps, a.target_lps, args.speed_mm_s, seed=args.seed)
    return SimulatedRoom(path, params, args.seed, scanner)


def script_us_or_fail(scanner: Any, args: argparse.Namespace) -> str:
    """Script the ultrasound needle (``--scenario``, ``--target-px``); returns the story's
    one-line description ('' for other modalities, where both options are refused)."""
    if getattr(scanner, "modality", None) != "us":
        if args.scenario is not None or args.target_px is not None:
            raise UsageError("--scenario and --target-px are for --modality us (the CT "
                             "plan's scenarios: guidance demo --scenario)")
        return ""
    from guidance.sim.us_scenario import us_story

    try:
        target = None if args.target_px is None else scanner.px_to_probe_mm(*args.target_px)
        story = us_story(scanner, args.scenario or "safe", target_xy_mm=target)
    except ValueError as e:
        raise UsageError(f"--target-px: {e}" if args.target_px is not None else str(e)) from e
    u, v = story.target_px
    return (f"{story.scenario}: {story.description}; target pixel ({u:.0f}, {v:.0f}); the "
            f"last move ends at {story.end_s - 2.0:.1f} s, then the needle is held")


def run(args: argparse.Namespace) -> int:
    if args.modality == "ct" and not args.tracked:
        from guidance.cli.simulate_ct import run_ct

        return run_ct(args)
    if args.tracked:
        return _run_room(args)
    if args.listen is None and args.connect is None:
        raise UsageError("give --listen PORT or --connect HOST:PORT")
    if args.modality == "none" or args.write_inputs or args.plan:
        raise UsageError("--modality none, --write-inputs and --plan need --tracked")
    scanner = make_scanner_or_fail(args.modality, args.size, args.seed)
    story = script_us_or_fail(scanner, args)
    stop = threading.Event()
    if args.listen is not None:
        server = IgtlServer(args.listen, host=args.bind).start()
        send = server.send
        print(f"simulate: {args.modality} {args.size}px at {args.fps} fps, listening on "
              f"{args.bind}:{server.port}", flush=True)
        if story:
            print(f"simulate: {story}", flush=True)
        closer = server.stop
    else:
        client = IgtlClient(*args.connect).start()
        send = client.send
        print(f"simulate: {args.modality} {args.size}px at {args.fps} fps to "
              f"{args.connect[0]}:{args.connect[1]}", flush=True)
        if story:
            print(f"simulate: {story}", flush=True)
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


def _run_room(args: argparse.Namespace) -> int:
    from guidance.sim.room import stream_room

    room = make_room_or_fail(args)
    if args.write_inputs is not None:
        try:
            written = room.write_inputs(args.write_inputs)
        except OSError as e:
            raise UsageError(f"--write-inputs {args.write_inputs}: {e}") from e
        print("simulate: calibration inputs " + ", ".join(str(p) for p in written.values()),
              flush=True)
        if args.listen is None and args.connect is None:
            return 0  # the inputs only
    elif args.listen is None and args.connect is None:
        raise UsageError("give --listen PORT or --connect HOST:PORT (or --write-inputs DIR)")
    stop = threading.Event()
    closers = []
    if args.listen is not None:
        server = IgtlServer(args.listen, host=args.bind).start()
        send_pose = send_image = server.send
        closers.append(server.stop)
        where = f"listening on {args.bind}:{server.port}"
    else:  # the tracker and the scanner: two connections, as in a room
        tracker = IgtlClient(*args.connect).start()
        scanner = IgtlClient(*args.connect).start()
        send_pose, send_image = tracker.send, scanner.send
        closers += [tracker.stop, scanner.stop]
        where = f"to {args.connect[0]}:{args.connect[1]} (tracker and scanner connections)"
    p = room.params
    frames = "no frames" if room.scanner is None else \
        f"{args.modality} {args.size}px at {args.fps} fps, {p.image_lag_s * 1e3:.0f} ms late"
    print(f"simulate --tracked: needle marker {p.tip_length_mm:.0f} mm from the tip at "
          f"{p.pose_hz:g} Hz ({p.relative_to} frame), {frames}; {where}", flush=True)
    signals = StopSignals(stop)
    try:
        stream_room(room, send_pose, send_image if room.scanner is not None else None,
                    args.fps, args.seconds, stop, start_s=args.start_s)
    finally:
        signals.restore()
        stop.set()
        wait_or_interrupt(0.2, threading.Event())  # let the last messages leave
        for close in closers:
            close()
    return 0
