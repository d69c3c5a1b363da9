"""The demo: a simulated procedure streamed through the live loop in one process.

The room (:class:`~guidance.sim.room.SimulatedRoom`) is calibrated as a user does it,
the needle follows the plan on the real CT (fluoroscopy, tracked poses only) or an
in-plane block in a synthetic ultrasound scene, its tracker poses and scanner frames go
over loopback OpenIGTLink into a :class:`~guidance.session.LiveSession`, the safety
timeline is kept, and the final needle is verified (a simulated control CT for the CT
plan, the scene's ground truth for ultrasound). The CT-guided demo is
:mod:`guidance.scenarios.demo_ct`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from guidance.io.igtl import IgtlClient
from guidance.scenarios.errors import Say, ScenarioError, say_nothing
from guidance.scenarios.simulators import calibrate_room, make_scanner
from guidance.scenarios.timeline import SafetyTimeline, rounded_mm
from guidance.session import LiveSession

__all__ = ["DemoOptions", "DemoRun", "run_demo", "us_verification_lines",
           "verification_lines"]

#: What runs on the calling (main) thread while the stream runs on a worker: given the
#: session and an event set when the stream has ended; it returns when it is done.
Foreground = Callable[[LiveSession, threading.Event], None]


@dataclass(frozen=True)
class DemoOptions:
    """The options of ``guidance demo``.

    Attributes:
        scenario: ``safe``, ``drift`` or ``breach`` (:data:`guidance.sim.scenario.SCENARIOS`).
        modality: ``fluoro``, ``us``, ``ct`` or ``none`` (tracked poses only).
        seconds: duration of the streamed procedure, s (None: 12 s; with ``us`` the
            scenario's own length).
        target_px: ``us`` only: the target as a pixel of the frames (U column, V row).
        out: the output folder (created).
        fps: scanner frame rate, Hz.
        size: frame size, pixels per side (32-2048).
        seed: seed of every random choice (noise, jitter, calibration data), >= 0.
    """

    scenario: str = "safe"
    modality: str = "fluoro"
    seconds: float | None = None
    target_px: tuple[float, float] | None = None
    out: Path = Path("demo-out")
    fps: float = 15.0
    size: int = 512
    seed: int = 0


@dataclass(frozen=True)
class DemoRun:
    """What a demo did: the session's summary (``summary.json``), the title of its
    console summary, and the lines to show after it (timeline, verification, outputs)."""

    summary: dict[str, Any]
    title: str
    lines: list[str]


@dataclass(frozen=True)
class _Planned:
    plan: Any
    structures: Any
    target: Any


@dataclass(frozen=True)
class _Story:
    path: Any
    description: str
    end_s: float
    us: Any = None  # the ultrasound story (guidance.sim.us_scenario.UsStory)


def run_demo(opts: DemoOptions, say: Say = say_nothing,
             foreground: Foreground | None = None) -> DemoRun:
    """Run the demo of ``opts`` (any modality but ``ct``: :func:`guidance.scenarios.
    demo_ct.run_ct_demo`): plan, calibrate the room as a user does
    (:func:`~guidance.scenarios.simulators.calibrate_room`, its lines said), stream it
    through a live session, verify the final needle; writes ``opts.out`` (``plan.json``,
    the room's files, ``summary.json``, PNGs, ``verification/``).

    Args:
        opts: the options.
        say: progress lines.
        foreground: run on this thread while the stream runs on a worker (the live
            view); None: the stream runs on this thread.

    Raises:
        ScenarioError: a bad option, a simulator that cannot be built, no drift toward
            a nerve root, a calibration refused. guidance.planning.plan.PlanError: no
            plan on the real CT. guidance.io.calibration_file.CalibrationFileError: a
            calibration file refused.
    """
    from guidance.navigation.setup import load_room
    from guidance.sim.room import RoomParams, SimulatedRoom

    if not 32 <= opts.size <= 2048:
        raise ScenarioError(f"--size must be 32..2048, got {opts.size}")
    if opts.seed < 0:
        raise ScenarioError(f"--seed must be >= 0, got {opts.seed}")
    if opts.target_px is not None and opts.modality != "us":
        raise ScenarioError("--target-px is a point of an ultrasound frame: it needs "
                            "--modality us")
    if opts.seconds is None and opts.modality != "us":
        opts = dataclasses.replace(opts, seconds=12.0)  # the CT plan's scenarios: any length
    what = {"fluoro": "fluoroscopy", "us": "ultrasound", "none": "tracked needle only"}
    say(f"demo: scenario {opts.scenario}, {what[opts.modality]} (seed {opts.seed}) ...")
    scanner = None
    if opts.modality != "none":
        say(f"demo: preparing the {opts.modality} simulator ...")
        scanner = make_scanner(opts.modality, opts.size, opts.seed)
    planned, story = _plan_and_path(opts, scanner, say)
    seconds = opts.seconds if opts.seconds is not None else story.end_s
    room = SimulatedRoom(story.path, RoomParams(), opts.seed, scanner)
    say("demo: the room's calibrations (simulated pivot, fiducials, temporal"
        + {"fluoro": ", C-arm", "us": ", probe", "none": ""}[opts.modality] + " data) ...")
    setup = load_room(calibrate_room(room, opts.out / "room", say))
    session = LiveSession(listen=0, out_dir=opts.out, png_every_s=max(seconds / 12, 0.5),
                          room=setup)
    if planned is not None:
        session.pipeline.set_plan(planned.plan, planned.structures)
        if scanner is None:  # the picture of navigation from poses: the CT resliced
            from guidance.data import load_real_ct

            session.pipeline.set_navigation_ct(load_real_ct())
    else:  # the ultrasound scene is synthetic: its target is a point of the image
        u, v = (float(x) for x in story.us.target_px)
        session.pipeline.set_image_target_px(u, v)
    timeline = SafetyTimeline(session)
    session.start()
    tracker = IgtlClient("127.0.0.1", session.port).start()
    scanner_link = IgtlClient("127.0.0.1", session.port).start() if scanner else None
    tracker.wait_connected(5.0)
    if scanner_link is not None:
        scanner_link.wait_connected(5.0)
    stop = threading.Event()
    frames = (f" and frames at {opts.fps:g} fps" if scanner else "")
    say(f"demo: streaming {seconds:.1f} s: needle marker poses at "
        f"{room.params.pose_hz:g} Hz{frames} ({story.description}) ...")
    for t_s, what_happens in (story.us.events if story.us is not None else ()):
        say(f"  t={t_s:6.2f}s {what_happens}")

    def stream() -> int:
        from guidance.sim.room import stream_room

        poses, n = stream_room(room, tracker.send,
                               scanner_link.send if scanner_link else None, opts.fps,
                               seconds, stop)
        return n if scanner else poses

    n = stream() if foreground is None else _beside(stream, foreground, session, stop)
    stop.wait(0.3)
    tracker.stop()
    if scanner_link is not None:
        scanner_link.stop()
    extra: dict[str, Any] = {"modality": opts.modality, "scenario": opts.scenario,
                             "frames_sent" if scanner else "pose_ticks_sent": n,
                             "timeline": timeline.to_json(), "story": story.description}
    verification: dict[str, Any] | None = None
    tip = room.truth(min(story.end_s, seconds))[0]
    if planned is not None:
        from guidance.scenarios.planning import verify_final_needle

        say("demo: control CT with the final needle -> verification ...")
        verification = verify_final_needle(planned.plan, planned.structures, tip,
                                           opts.out / "verification", opts.seed,
                                           planned.target)
        extra["verification"] = {k: verification.get(k) for k in
                                 ("verdict", "reasons", "tip_to_target_mm")}
    elif story.us is not None:
        from guidance.sim.us_scenario import us_verify

        verification = us_verify(scanner, tip, story.us.target_xy_mm)
        verification["live_tip_to_target_mm"] = rounded_mm(timeline.last_tip_to_target_mm)
        extra["verification"] = verification
        extra["target_px"] = [round(float(x), 1) for x in story.us.target_px]
        extra["story_events"] = [{"t_s": t, "what": w} for t, w in story.us.events]
    summary = session.stop(extra)
    lines = timeline.text().split("\n")
    if story.us is not None and verification is not None:
        lines += us_verification_lines(verification)
    elif verification is not None:
        lines += verification_lines(verification, opts.out / "verification" / "report.html")
    lines.append(f"output: {opts.out}/summary.json and {len(summary.get('pngs', []))} PNGs")
    return DemoRun(summary, f"guidance demo ({opts.modality}, {opts.scenario})", lines)


def _beside(stream: Callable[[], int], foreground: Foreground, session: LiveSession,
            stop: threading.Event) -> int:
    """``stream()`` on a worker thread while ``foreground`` runs on this one; when
    ``foreground`` returns or raises (a window closed early), the stream is stopped."""
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
        foreground(session, finished)
    finally:
        stop.set()
        t.join(30.0)
    return sent[0]


def _plan_and_path(opts: DemoOptions, scanner: Any, say: Say,
                   ) -> tuple[_Planned | None, _Story]:
    """The plan (on the real CT for fluoroscopy and navigation, the scene's own for
    ultrasound) and the needle's scripted motion along it."""
    from guidance.sim.scenario import scenario_path

    if opts.modality == "us":  # an in-plane block toward a point of the image
        from guidance.sim.us_scenario import us_story

        target = (None if opts.target_px is None
                  else scanner.px_to_probe_mm(*opts.target_px))
        try:
            us = us_story(scanner, opts.scenario, opts.seconds, target_xy_mm=target)
        except ValueError as e:
            raise ScenarioError(f"demo: {e}") from e
        u, v = us.target_px
        say(f"target: pixel ({u:.0f}, {v:.0f}) of the {scanner.size}px frames, "
            f"{scanner.nerve.signed_distance_mm(us.target_xy_mm)[0]:.1f} mm from the nerve")
        return None, _Story(us.path, us.description, us.end_s, us)
    from guidance.scenarios.planning import DEMO_TARGET, nerve_root_near_plan, plan_demo

    say(f"demo: planning {DEMO_TARGET} on the real CT (automatic, structures and "
        "distance fields) ...")
    plan, structures, target = plan_demo(opts.out)
    assert opts.seconds is not None  # run_demo sets it (12 s unless given)
    try:
        root, toward, drift_deg = nerve_root_near_plan(plan, structures)
    except ValueError as e:
        raise ScenarioError(f"demo: {e}") from e
    path = scenario_path(plan.entry_lps, plan.target_lps, opts.scenario, opts.seconds,
                         toward, drift_deg=drift_deg)
    if scanner is not None:  # the fluoroscopy needle follows the plan
        scanner.path, scanner.entry_lps, scanner.target_lps = (
            path, path.entry_lps, path.target_lps)
    a = plan.extra.get("angles_deg", {})
    say(f"plan: {target.description}; entry {np.round(plan.entry_lps, 1).tolist()} -> "
        f"target {np.round(plan.target_lps, 1).tolist()} LPS mm, {plan.length_mm:.1f} mm, "
        f"mediolateral {a.get('mediolateral', float('nan')):.0f} deg, craniocaudal "
        f"{a.get('craniocaudal', float('nan')):.0f} deg -> {opts.out / 'plan.json'}")
    story = {"safe": "on the plan",
             "drift": f"drifting {drift_deg:g} deg toward {root} mid-way, then pulled back "
                      "and redirected",
             "breach": f"drifting {drift_deg:g} deg toward {root}, not corrected"
             }[opts.scenario]
    return _Planned(plan, structures, target), _Story(path, story, opts.seconds)


def us_verification_lines(ver: dict[str, Any]) -> list[str]:
    """The final tip against the scene's ground truth (``ver`` from
    :func:`guidance.sim.us_scenario.us_verify`, distances in mm in the image plane), and
    what the live loop measured: the lines to show."""
    lines = [f"verification (the scene's ground truth, in the image plane): {ver['verdict']}: "
             f"tip {ver['tip_to_target_mm']:.1f} mm from the target, nerve "
             f"{ver['nerve_clearance_mm']:+.1f} mm, vessel {ver['vessel_clearance_mm']:+.1f} "
             "mm (negative: inside)"]
    lines += [f"  - {reason}" for reason in ver.get("reasons", [])]
    live = ver.get("live_tip_to_target_mm")
    if live is not None:
        lines.append(f"  the live loop's last tip-to-target (the needle it sees, the target "
                     f"pixel): {live:.1f} mm")
    return lines


def verification_lines(ver: dict[str, Any], report: Path) -> list[str]:
    """The verdict of a control-CT verification (``ver``: its JSON, tip to target in mm)
    and, one line each, why; ``report`` is named as the HTML report."""
    t2t = ver.get("tip_to_target_mm")
    t2t_s = f"{t2t:.1f} mm" if isinstance(t2t, (int, float)) else "-"
    lines = [f"verification: {ver['verdict']} (tip to target {t2t_s}); report {report}"]
    lines += [f"  - {reason}" for reason in ver.get("reasons", [])]
    dicom = ver.get("dicom")
    if dicom:
        folder = Path(dicom[0]).parent
        lines.append(f"  DICOM: {len(dicom)} objects (SR, SEG, key images) in {folder}, in "
                     f"the study of the control CT beside it; to a PACS: guidance pacs store "
                     f"{folder.parent} --to AET@HOST:PORT")
    return lines
