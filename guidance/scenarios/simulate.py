"""The simulator: a simulated scanner, a whole simulated room (``tracked``), or the
control slabs of a CT-guided procedure, streamed over OpenIGTLink to a running
``guidance run`` (served on a port, or sent to one).

Without ``tracked``: frames (IMAGE ``Image_Reference``) and the simulator's tool poses
(``NeedleTipToReference``: the tip itself) in the planning CT's frame. With ``tracked``:
the room of :mod:`guidance.sim.room` (the needle marker's poses at the tracker's rate, a
patient reference that is not the CT, frames that lag behind their timestamps, each
stream on its own connection) and, with ``write_inputs``, the raw inputs of ``guidance
calibrate``. With modality ``ct``: one 3D IMAGE per step along a plan
(:mod:`guidance.sim.ct_procedure`).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guidance.io.igtl import IgtlClient, IgtlServer
from guidance.scenarios.errors import Say, ScenarioError, say_nothing
from guidance.scenarios.simulators import make_scanner, script_us

__all__ = ["InstallSignals", "SimulateOptions", "make_room", "simulate"]

#: Installs the process's stop signals (SIGINT, SIGTERM set the event) around the room's
#: stream and returns what restores the previous handlers (the CLI's ``StopSignals``).
InstallSignals = Callable[[threading.Event], Callable[[], object]]


@dataclass(frozen=True)
class SimulateOptions:
    """The options of ``guidance simulate`` (see its ``--help``): the modality and its
    frames (``fps`` Hz, ``size`` pixels, ``seed``, ``seconds`` or None until stopped),
    the ultrasound story (``scenario``, ``target_px`` U,V pixels), the CT slabs
    (``ct_*``: steps, interval s, slices, thickness mm, patient motion mm toward +L),
    where to send (``listen`` port on ``bind``, or ``connect`` (host, port)), and the
    room (``tracked``, ``write_inputs`` folder, ``plan`` file, ``speed_mm_s``, ``lag_s``,
    ``pose_hz``, ``tip_length_mm``, ``marker_lateral_mm``, ``relative_to``, ``start_s``)."""

    modality: str = "us"
    fps: float = 15.0
    size: int = 256
    seed: int = 0
    seconds: float | None = None
    scenario: str | None = None
    target_px: tuple[float, float] | None = None
    ct_steps: int = 6
    ct_interval_s: float = 2.0
    ct_slices: int = 5
    ct_thickness_mm: float = 3.0
    ct_motion_mm: float = 0.0
    listen: int | None = None
    connect: tuple[str, int] | None = None
    bind: str = "127.0.0.1"
    tracked: bool = False
    write_inputs: Path | None = None
    plan: str | None = None
    speed_mm_s: float = 10.0
    lag_s: float = 0.08
    pose_hz: float = 60.0
    tip_length_mm: float = 160.0
    marker_lateral_mm: float = 0.0
    relative_to: str = "Reference"
    start_s: float = 0.0


def simulate(opts: SimulateOptions, say: Say = say_nothing,
             install_signals: InstallSignals | None = None) -> None:
    """Stream what ``opts`` asks for until ``opts.seconds`` have passed, the story or
    the scans end, or Ctrl-C; with ``tracked`` and ``write_inputs`` only, write the
    calibration inputs and return.

    Args:
        opts: the options.
        say: progress lines.
        install_signals: installed around the room's stream (``tracked``), None: none.

    Raises:
        ScenarioError: an option that does not fit the others, a simulator that cannot
            be built, calibration inputs that cannot be written.
        guidance.planning.plan.PlanError: ``plan`` cannot be read, or no plan on the
            real CT (``ct`` without ``plan``).
    """
    if opts.modality == "ct" and not opts.tracked:
        _stream_ct(opts, say)
    elif opts.tracked:
        _stream_room(opts, say, install_signals)
    else:
        _stream_scanner(opts, say)


def _linger(say: Say) -> None:
    """Let the last messages leave before the connections close."""
    try:
        threading.Event().wait(0.2)
    except KeyboardInterrupt:
        say("\ninterrupted")


def _stream_scanner(opts: SimulateOptions, say: Say) -> None:
    from guidance.io.sim_source import stream_scanner

    if opts.listen is None and opts.connect is None:
        raise ScenarioError("give --listen PORT or --connect HOST:PORT")
    if opts.modality == "none" or opts.write_inputs or opts.plan:
        raise ScenarioError("--modality none, --write-inputs and --plan need --tracked")
    scanner = make_scanner(opts.modality, opts.size, opts.seed)
    story = script_us(scanner, opts.scenario, opts.target_px)
    stop = threading.Event()
    what = f"simulate: {opts.modality} {opts.size}px at {opts.fps} fps"
    if opts.listen is not None:
        server = IgtlServer(opts.listen, host=opts.bind).start()
        send, closer = server.send, server.stop
        say(f"{what}, listening on {opts.bind}:{server.port}")
    else:
        assert opts.connect is not None
        client = IgtlClient(*opts.connect).start()
        send, closer = client.send, client.stop
        say(f"{what} to {opts.connect[0]}:{opts.connect[1]}")
    if story:
        say(f"simulate: {story}")
    t = threading.Thread(target=stream_scanner,
                         args=(scanner, send, opts.fps, opts.seconds, stop), daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(0.5)
    except KeyboardInterrupt:
        pass
    stop.set()
    t.join(2.0)
    _linger(say)
    closer()


def make_room(opts: SimulateOptions, say: Say = say_nothing) -> Any:
    """The simulated room of ``tracked`` (:class:`~guidance.sim.room.SimulatedRoom`: its
    scanner, the needle's path along ``opts.plan``, the scanner's own or the real CT's
    disc approach, the room parameters).

    Raises:
        ScenarioError: bad room parameters, a plan with ultrasound, no simulated path.
        guidance.planning.plan.PlanError: the plan cannot be read.
    """
    from guidance.sim.room import RoomParams, SimulatedRoom, plan_path

    try:
        params = RoomParams(tip_length_mm=opts.tip_length_mm,
                            marker_lateral_mm=opts.marker_lateral_mm, image_lag_s=opts.lag_s,
                            pose_hz=opts.pose_hz, relative_to=opts.relative_to)
    except ValueError as e:
        raise ScenarioError(str(e)) from e
    scanner = None if opts.modality == "none" else make_scanner(
        opts.modality, opts.size, opts.seed)
    story = script_us(scanner, opts.scenario, opts.target_px)
    if story:
        say(f"simulate: {story}")
    if opts.plan is not None:
        if opts.modality == "us":
            raise ScenarioError("--plan with --modality us: the ultrasound scene is "
                                "synthetic, not the planning CT; use --modality none or fluoro")
        from guidance.planning.plan import Plan

        plan = Plan.load(opts.plan)
        path = plan_path(plan.entry_lps, plan.target_lps, opts.speed_mm_s, seed=opts.seed)
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
            raise ScenarioError(f"cannot plan the simulated needle on the real CT: {e}") from e
        path = plan_path(a.entry_lps, a.target_lps, opts.speed_mm_s, seed=opts.seed)
    return SimulatedRoom(path, params, opts.seed, scanner)


def _stream_room(opts: SimulateOptions, say: Say,
                 install_signals: InstallSignals | None) -> None:
    from guidance.sim.room import stream_room

    room = make_room(opts, say)
    if opts.write_inputs is not None:
        try:
            written = room.write_inputs(opts.write_inputs)
        except OSError as e:
            raise ScenarioError(f"--write-inputs {opts.write_inputs}: {e}") from e
        say("simulate: calibration inputs " + ", ".join(str(p) for p in written.values()))
        if opts.listen is None and opts.connect is None:
            return  # the inputs only
    elif opts.listen is None and opts.connect is None:
        raise ScenarioError("give --listen PORT or --connect HOST:PORT (or --write-inputs DIR)")
    stop = threading.Event()
    closers = []
    if opts.listen is not None:
        server = IgtlServer(opts.listen, host=opts.bind).start()
        send_pose = send_image = server.send
        closers.append(server.stop)
        where = f"listening on {opts.bind}:{server.port}"
    else:  # the tracker and the scanner: two connections, as in a room
        assert opts.connect is not None
        tracker = IgtlClient(*opts.connect).start()
        scanner = IgtlClient(*opts.connect).start()
        send_pose, send_image = tracker.send, scanner.send
        closers += [tracker.stop, scanner.stop]
        where = f"to {opts.connect[0]}:{opts.connect[1]} (tracker and scanner connections)"
    p = room.params
    frames = "no frames" if room.scanner is None else \
        f"{opts.modality} {opts.size}px at {opts.fps} fps, {p.image_lag_s * 1e3:.0f} ms late"
    say(f"simulate --tracked: needle marker {p.tip_length_mm:.0f} mm from the tip at "
        f"{p.pose_hz:g} Hz ({p.relative_to} frame), {frames}; {where}")
    restore = install_signals(stop) if install_signals is not None else None
    try:
        stream_room(room, send_pose, send_image if room.scanner is not None else None,
                    opts.fps, opts.seconds, stop, start_s=opts.start_s)
    finally:
        if restore is not None:
            restore()
        stop.set()
        _linger(say)
        for close in closers:
            close()


def _stream_ct(opts: SimulateOptions, say: Say) -> None:
    from guidance.data import RealDataMissing, load_real_ct
    from guidance.planning.plan import Plan
    from guidance.sim.ct_procedure import motion_translation, stream_control_scans
    from guidance.sim.ct_slab import control_scan_series

    if opts.listen is None and opts.connect is None:
        raise ScenarioError("give --listen PORT or --connect HOST:PORT")
    if opts.scenario not in (None, "safe", "drift"):
        raise ScenarioError(f"--scenario {opts.scenario}: --modality ct plays safe or drift")
    if opts.ct_steps < 1 or not 1 <= opts.ct_slices <= 64 or not opts.ct_interval_s >= 0:
        raise ScenarioError("--ct-steps >= 1, --ct-slices 1..64 and --ct-interval-s >= 0")
    if opts.plan is not None:
        plan = Plan.load(opts.plan)
    else:
        from guidance.scenarios.planning import plan_demo

        plan = plan_demo(Path(tempfile.mkdtemp(prefix="guidance-ct-plan-")))[0]
    try:
        ct = load_real_ct()
    except RealDataMissing as e:
        raise ScenarioError(f"cannot build the ct simulator: {e}") from e
    motion = motion_translation(opts.ct_motion_mm) if opts.ct_motion_mm else None
    scans = control_scan_series(ct, plan.entry_lps, plan.target_lps, steps=opts.ct_steps,
                                n_slices=opts.ct_slices, thickness_mm=opts.ct_thickness_mm,
                                deviation_deg=8.0 if opts.scenario == "drift" else 0.0,
                                motion=motion, seed=opts.seed)
    if opts.listen is not None:
        server = IgtlServer(opts.listen, host=opts.bind).start()
        send, closer, where = server.send, server.stop, f"listening on {opts.bind}:{server.port}"
    else:
        assert opts.connect is not None
        client = IgtlClient(*opts.connect).start()
        send, closer, where = client.send, client.stop, f"to {opts.connect[0]}:{opts.connect[1]}"
    say(f"simulate: ct {opts.ct_steps} control scans of {opts.ct_slices} x "
        f"{opts.ct_thickness_mm:g} mm every {opts.ct_interval_s:g} s, {where}")

    def said(n: int, slab: object, truth: Any) -> None:
        t = truth.tip_ct_lps
        say(f"simulate: scan {n + 1}/{opts.ct_steps} sent: tip ({t[0]:.1f}, {t[1]:.1f}, "
            f"{t[2]:.1f}) mm, tip in slab {truth.tip_in_slab}")

    stop = threading.Event()
    try:
        stream_control_scans(scans, send, opts.ct_interval_s, stop, said)
    except KeyboardInterrupt:
        pass
    finally:
        stop.wait(0.3)  # let the last message leave
        closer()
