"""``guidance demo``: simulator and live loop in one process over loopback."""

from __future__ import annotations

import argparse
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from guidance.cli.common import (
    path_arg,
    pixel_point,
    positive_float,
    print_summary,
    start_gui_or_fail,
)
from guidance.cli.main import UsageError
from guidance.cli.simulate import make_scanner_or_fail
from guidance.io.igtl import IgtlClient
from guidance.pipeline.frame import FrameResult
from guidance.records import MODALITIES
from guidance.session import LiveSession

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    from guidance.sim.scenario import SCENARIOS

    p = sub.add_parser(
        "demo", help="simulated procedure on the real CT, end to end",
        description="Plan a left transforaminal L1-L2 approach on the embedded real CT "
        "(automatic, written to OUT/plan.json), calibrate a simulated room, stream the "
        "needle along that plan (tracker poses and scanner frames over loopback "
        "OpenIGTLink) through the live loop, and verify the final needle on a simulated "
        "control CT. Writes OUT/summary.json (with the safety timeline), annotated PNGs "
        "and OUT/verification/report.html.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenario", choices=SCENARIOS, default="safe",
                   help="safe: the needle follows the plan (verification PASS); drift: it "
                   "deviates toward the nearest nerve root mid-way (warning), is pulled back "
                   "and redirected (warning cleared); breach: the deviation is not "
                   "corrected (verification VIOLATION, one line per cause). With --modality "
                   "us the same in the image plane of an in-plane nerve block: safe reaches "
                   "the target beside the nerve; drift turns toward the nerve (the vessel "
                   "beyond it on the path ahead), is withdrawn and redirected; breach ends "
                   "with the tip inside the nerve")
    p.add_argument("--modality", choices=(*MODALITIES, "none"), default="fluoro",
                   help="fluoro: C-arm frames of the real CT; us: B-mode frames of a "
                   "synthetic nerve-block scene (its target is a point of the image, no "
                   "planning CT; verified against the scene's ground truth); ct: control "
                   "slabs of the real CT, one per step as the needle advances (the needle "
                   "in 3D, patient motion, the procedure timeline); none: tracked "
                   "needle poses only, navigation on the planning CT")
    p.add_argument("--seconds", type=positive_float,
                   help="duration of the streamed procedure, seconds (default: 12; with "
                   "--modality us the scenario's own length at a real block's pace, 14-23 "
                   "s). The scenario plays over it: shorter plays it faster")
    p.add_argument("--target-px", type=pixel_point, metavar="U,V",
                   help="--modality us: the target as a pixel of the frames (U column, V "
                   "row; default: beside the nerve); the needle is aimed at it and the live "
                   "loop measures the tip to it in the image plane")
    p.add_argument("--out", type=path_arg("output_dir", Path), default=Path("demo-out"),
                   metavar="DIR",
                   help="output folder (created)")
    p.add_argument("--fps", type=positive_float, default=15.0,
                   help="scanner frame rate, frames per second")
    p.add_argument("--size", type=int, default=512,
                   help="frame size, pixels per side (32-2048)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of every random choice (noise, jitter, calibration data)")
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
    from guidance.sim.room import RoomParams, SimulatedRoom

    start_gui_or_fail(args, require_png=True)  # before anything starts
    if args.modality == "ct":
        if args.gui:
            raise UsageError("--modality ct: the CT demo runs without --gui for now (its "
                             "pictures are written to --out)")
        from guidance.cli.demo_ct import run_ct

        return run_ct(args)
    if not 32 <= args.size <= 2048:
        raise UsageError(f"--size must be 32..2048, got {args.size}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.target_px is not None and args.modality != "us":
        raise UsageError("--target-px is a point of an ultrasound frame: it needs --modality us")
    if args.seconds is None and args.modality != "us":
        args.seconds = 12.0  # the CT plan's scenarios play over any duration
    what = {"fluoro": "fluoroscopy", "us": "ultrasound", "none": "tracked needle only"}
    print(f"demo: scenario {args.scenario}, {what[args.modality]} (seed {args.seed}) ...",
          flush=True)
    scanner = None
    if args.modality != "none":
        print(f"demo: preparing the {args.modality} simulator ...", flush=True)
        scanner = make_scanner_or_fail(args.modality, args.size, args.seed)
    planned, story = _plan_and_path(args, scanner)
    seconds = args.seconds if args.seconds is not None else story.end_s
    room = SimulatedRoom(story.path, RoomParams(), args.seed, scanner)
    print("demo: the room's calibrations (simulated pivot, fiducials, temporal"
          + {"fluoro": ", C-arm", "us": ", probe", "none": ""}[args.modality]
          + " data) ...", flush=True)
    setup = load_room_or_fail(calibrate_room(room, args.out / "room"))
    session = LiveSession(listen=0, out_dir=args.out, png_every_s=max(seconds / 12, 0.5),
                          room=setup)
    if planned is not None:
        session.pipeline.set_plan(planned.plan, planned.structures)
        if scanner is None:  # the picture of navigation from poses: the CT resliced
            from guidance.data import load_real_ct

            session.pipeline.set_navigation_ct(load_real_ct())
    else:  # the ultrasound scene is synthetic: its target is a point of the image
        _set_us_target(session, story)
    timeline = SafetyTimeline(session)
    session.start()
    tracker = IgtlClient("127.0.0.1", session.port).start()
    scanner_link = IgtlClient("127.0.0.1", session.port).start() if scanner else None
    tracker.wait_connected(5.0)
    if scanner_link is not None:
        scanner_link.wait_connected(5.0)
    stop = threading.Event()
    frames = (f" and frames at {args.fps:g} fps" if scanner else "")
    print(f"demo: streaming {seconds:.1f} s: needle marker poses at "
          f"{room.params.pose_hz:g} Hz{frames} ({story.description}) ...", flush=True)
    for t_s, what_happens in (story.us.events if story.us is not None else ()):
        print(f"  t={t_s:6.2f}s {what_happens}", flush=True)

    def stream() -> int:
        from guidance.sim.room import stream_room

        poses, n = stream_room(room, tracker.send,
                               scanner_link.send if scanner_link else None, args.fps,
                               seconds, stop)
        return n if scanner else poses

    if args.gui:
        n = _stream_with_gui(stream, session, stop, args)
    else:
        n = stream()
    stop.wait(0.3)
    tracker.stop()
    if scanner_link is not None:
        scanner_link.stop()
    extra: dict[str, Any] = {"modality": args.modality, "scenario": args.scenario,
                             "frames_sent" if scanner else "pose_ticks_sent": n,
                             "timeline": timeline.to_json(), "story": story.description}
    verification: dict[str, Any] | None = None
    tip = room.truth(min(story.end_s, seconds))[0]
    if planned is not None:
        from guidance.cli.demo_planning import verify_final_needle

        print("demo: control CT with the final needle -> verification ...", flush=True)
        verification = verify_final_needle(planned.plan, planned.structures, tip,
                                           args.out / "verification", args.seed,
                                           planned.target)
        extra["verification"] = {k: verification.get(k) for k in
                                 ("verdict", "reasons", "tip_to_target_mm")}
    elif story.us is not None:
        from guidance.sim.us_scenario import us_verify

        verification = us_verify(scanner, tip, story.us.target_xy_mm)
        verification["live_tip_to_target_mm"] = _num(timeline.last_tip_to_target_mm)
        extra["verification"] = verification
        extra["target_px"] = [round(float(x), 1) for x in story.us.target_px]
        extra["story_events"] = [{"t_s": t, "what": w} for t, w in story.us.events]
    summary = session.stop(extra)
    print_summary(summary, f"guidance demo ({args.modality}, {args.scenario})")
    print(timeline.text())
    if story.us is not None and verification is not None:
        print_us_verification(verification)
    elif verification is not None:
        print_verification(verification, args.out / "verification" / "report.html")
    print(f"output: {args.out}/summary.json and {len(summary.get('pngs', []))} PNGs")
    return 0


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


def _plan_and_path(args: argparse.Namespace, scanner: Any) -> tuple[_Planned | None, _Story]:
    """The plan (on the real CT for fluoroscopy and navigation, the scene's own for
    ultrasound) and the needle's scripted motion along it."""
    from guidance.planning.plan import PlanError
    from guidance.sim.scenario import scenario_path

    if args.modality == "us":  # an in-plane block toward a point of the image
        from guidance.sim.us_scenario import us_story

        target = (None if args.target_px is None
                  else scanner.px_to_probe_mm(*args.target_px))
        try:
            us = us_story(scanner, args.scenario, args.seconds, target_xy_mm=target)
        except ValueError as e:
            raise UsageError(f"demo: {e}") from e
        u, v = us.target_px
        print(f"target: pixel ({u:.0f}, {v:.0f}) of the {scanner.size}px frames, "
              f"{scanner.nerve.signed_distance_mm(us.target_xy_mm)[0]:.1f} mm from the nerve",
              flush=True)
        return None, _Story(us.path, us.description, us.end_s, us)
    from guidance.cli.demo_planning import DEMO_TARGET, nerve_root_near_plan, plan_demo

    print(f"demo: planning {DEMO_TARGET} on the real CT (automatic, structures and "
          "distance fields) ...", flush=True)
    try:
        plan, structures, target = plan_demo(args.out)
    except PlanError as e:
        raise UsageError(str(e)) from e
    try:
        root, toward, drift_deg = nerve_root_near_plan(plan, structures)
    except ValueError as e:
        raise UsageError(f"demo: {e}") from e
    path = scenario_path(plan.entry_lps, plan.target_lps, args.scenario, args.seconds,
                         toward, drift_deg=drift_deg)
    if scanner is not None:  # the fluoroscopy needle follows the plan
        scanner.path, scanner.entry_lps, scanner.target_lps = (
            path, path.entry_lps, path.target_lps)
    a = plan.extra.get("angles_deg", {})
    print(f"plan: {target.description}; entry {np.round(plan.entry_lps, 1).tolist()} -> "
          f"target {np.round(plan.target_lps, 1).tolist()} LPS mm, {plan.length_mm:.1f} mm, "
          f"mediolateral {a.get('mediolateral', float('nan')):.0f} deg, craniocaudal "
          f"{a.get('craniocaudal', float('nan')):.0f} deg -> {args.out / 'plan.json'}",
          flush=True)
    story = {"safe": "on the plan",
             "drift": f"drifting {drift_deg:g} deg toward {root} mid-way, then pulled back "
                      "and redirected",
             "breach": f"drifting {drift_deg:g} deg toward {root}, not corrected"
             }[args.scenario]
    return _Planned(plan, structures, target), _Story(path, story, args.seconds)


class SafetyTimeline:
    """The safety level's changes during the demo, with their reason: recorded on the
    pipeline thread (an append), printed and saved afterwards. Each change also forces
    an annotated PNG, so the pictures show every warning and its end."""

    def __init__(self, session: LiveSession) -> None:
        self._session = session
        self._inner = session.pipeline.on_result
        self._last = "NONE"
        self._lock = threading.Lock()
        self.changes: list[dict[str, Any]] = []
        self.decisions = 0
        #: the newest finite tip-to-target the loop measured (mm), NaN before one
        self.last_tip_to_target_mm = math.nan
        session.pipeline.on_result = self._on_result

    def _on_result(self, result: FrameResult, rgb: Any) -> None:
        if self._inner is not None:
            self._inner(result, rgb)
        d = result.decision
        if d is None:
            return
        self.decisions += 1
        if math.isfinite(d.tip_to_target_mm):
            self.last_tip_to_target_mm = float(d.tip_to_target_mm)
        level = d.level.name
        if level == self._last:
            return
        with self._lock:
            self._last = level
            self.changes.append({
                "t_s": round(result.t_s, 2), "level": level, "structure": d.structure,
                "clearance_mm": _num(d.clearance_mm), "margin_mm": _num(d.margin_mm),
                "message": d.message})
        writer = self._session.writer
        if writer is not None and rgb is not None:
            writer.offer(result, rgb, force=True)

    def to_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.changes)

    def text(self) -> str:
        """The changes, one line each (level, structure, distance and margin)."""
        rows = self.to_json()
        if not rows:
            return ("safety timeline: no decision was made" if not self.decisions else
                    f"safety timeline: no warning ({self.decisions} decisions, all NONE)")
        lines = ["safety timeline (level changes):"]
        for r in rows:
            what = r["message"] if r["level"] not in ("NONE",) else "clear"
            lines.append(f"  t={r['t_s']:6.2f}s {r['level']:7s} {what}")
        worst = max(rows, key=lambda r: _RANK.get(r["level"], 0))["level"]
        final = rows[-1]["level"]
        lines.append(f"  worst {worst}, final {final}"
                     + (" (the warning cleared)" if _RANK.get(final, 0) < _RANK.get(worst, 0)
                        else ""))
        return "\n".join(lines)


_RANK = {"NONE": 0, "INFO": 1, "CAUTION": 2, "DANGER": 3}


def _num(v: float) -> float | None:
    return round(float(v), 2) if math.isfinite(v) else None


def _set_us_target(session: LiveSession, story: _Story) -> None:
    """The ultrasound target as a point of the incoming frames: the live loop measures
    the tip to it in the image plane (no plan: the scene is not the planning CT)."""
    u, v = (float(x) for x in story.us.target_px)
    session.pipeline.set_image_target_px(u, v)


def print_us_verification(ver: dict[str, Any]) -> None:
    """The final tip against the scene's ground truth, and what the live loop measured."""
    print(f"verification (the scene's ground truth, in the image plane): {ver['verdict']}: "
          f"tip {ver['tip_to_target_mm']:.1f} mm from the target, nerve "
          f"{ver['nerve_clearance_mm']:+.1f} mm, vessel {ver['vessel_clearance_mm']:+.1f} mm "
          "(negative: inside)")
    for reason in ver.get("reasons", []):
        print(f"  - {reason}")
    live = ver.get("live_tip_to_target_mm")
    if live is not None:
        print(f"  the live loop's last tip-to-target (the needle it sees, the target pixel): "
              f"{live:.1f} mm")


def print_verification(ver: dict[str, Any], report: Path) -> None:
    """The verdict and, one line each, why."""
    t2t = ver.get("tip_to_target_mm")
    t2t_s = f"{t2t:.1f} mm" if isinstance(t2t, (int, float)) else "-"
    print(f"verification: {ver['verdict']} (tip to target {t2t_s}); report {report}")
    for reason in ver.get("reasons", []):
        print(f"  - {reason}")
    dicom = ver.get("dicom")
    if dicom:
        folder = Path(dicom[0]).parent
        print(f"  DICOM: {len(dicom)} objects (SR, SEG, key images) in {folder}, in the study "
              f"of the control CT beside it; to a PACS: guidance pacs store "
              f"{folder.parent} --to AET@HOST:PORT")


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
