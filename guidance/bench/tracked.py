"""Tracked navigation on the real CT, pose in -> tip out (``guidance bench --tracked``).

A sender process (``python -m guidance.bench.sender --tracked``) is the room's tracker:
the needle marker's pose (``NeedleToReference``, 160 mm from the tip) at 60 Hz over
loopback OpenIGTLink. The receiver is the live pipeline as ``guidance run`` builds it:
the calibration files made as ``guidance calibrate`` makes them from the simulated room's
raw data (pivot, registration: :func:`guidance.scenarios.simulators.calibrate_room`),
the plan on the real CT with every structure's distance field. Each pose is one
guidance update: tip through the transform graph, needle filter, the full safety check,
STRING / STATUS / TRANSFORM sent.

Measured per pose: ``tip_sent`` = pose fully received -> ``NeedleTipToRAS`` handed to the
kernel, and ``end_to_end`` (as every update: the later of outputs sent and overlay
composed). Two phases in one run, so that the ratio holds on a busy machine: with the
plan (full structure check) and, as the baseline, the same stream without a plan (the
tip only).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guidance.bench.measure import (
    BenchReport,
    ProcessUsage,
    Say,
    SenderProcess,
    log_say,
    run_until_sent,
    write_histogram,
)
from guidance.io.validate import InputError
from guidance.planning.plan import Plan, PlanError
from guidance.planning.structures import StructureSet
from guidance.session import SessionError, write_summary

__all__ = ["SEED", "TARGET_P99_MS", "bench_room", "run_tracked"]

#: The simulated room's seed (the sender and the receiver build the same room).
SEED = 0
#: The issue's target: pose received -> tip sent, p99, with the full structure check.
TARGET_P99_MS = 5.0


def bench_room(seed: int = SEED) -> Any:
    """The simulated room of the benchmark (the sender and the receiver build the same):
    a needle at 10 mm/s along the simulator's L1-L2 disc approach on the real CT.

    Returns:
        A :class:`guidance.sim.room.SimulatedRoom`.
    """
    from guidance.sim.anatomy import disc_approach
    from guidance.sim.params import FluoroParams
    from guidance.sim.room import RoomParams, SimulatedRoom, plan_path

    fp = FluoroParams()
    a = disc_approach(fp.disc_levels[0], fp.disc_levels[1], fp.approach_left, fp.approach_deg,
                      fp.target_posterior_mm, fp.target_lateral_mm)
    return SimulatedRoom(plan_path(a.entry_lps, a.target_lps, 10.0), RoomParams(), seed)


def _phase(pose_hz: float, seconds: float, room_files: Sequence[Path], plan: Plan | None,
           structures: StructureSet | None) -> dict[str, Any]:
    from guidance.io.igtl import IgtlClient
    from guidance.navigation.setup import load_room
    from guidance.pipeline.loop import Pipeline

    sender = SenderProcess(["--tracked", "--pose-hz", str(pose_hz), "--seconds",
                            str(seconds), "--seed", str(SEED)])
    usage = ProcessUsage()
    client = IgtlClient("127.0.0.1", sender.port)

    def send(m: Any, on_sent: Any = None) -> int:
        return 1 if client.send(m, on_sent) else 0

    pipe = Pipeline(client.slots, send=send, room=load_room(list(room_files)))
    if plan is not None:
        pipe.set_plan(plan, structures)
    sent, stats = run_until_sent(client, pipe, sender)
    tip = pipe.stats.values("tip_sent")
    decisions = dict(pipe.decisions)
    return {
        "latency_ms": stats.get("tip_sent"),
        "end_to_end_ms": stats.get("end_to_end"),
        "stages_ms": {k: v for k, v in stats.items()
                      if k not in ("tip_sent", "end_to_end")},
        "poses_sent": sent,
        "pose_updates": pipe.poses_processed,
        "tips_sent": int(tip.size),
        "decisions": decisions,
        "states": dict(pipe.states),
        **usage.done(),
        "_values": tip.tolist(),
    }


def run_tracked(pose_hz: float, seconds: float, json_path: Path,
                say: Say = log_say) -> BenchReport:
    """Prepare the room (:func:`bench_room`: its calibrations, the plan on the real CT
    along its needle path; of its calibration files, pivot and registration are used) in
    a temporary folder, run both phases (with the plan, then the tip only); write
    ``json_path`` and a histogram PNG beside it.

    Args:
        pose_hz: tracker rate, Hz (1..1000).
        seconds: duration of each phase, s.
        json_path: where the results go (JSON).
        say: where the progress lines go.

    Returns:
        The report; ``tracked`` and ``tracked_no_plan`` (``latency_ms``: pose received ->
        tip sent, ms), their p99 ratio and the target (``p99_ms``, ``met``).

    Raises:
        InputError: ``pose_hz`` out of range.
        SessionError: the real CT is not installed; a sender that does not start.
    """
    from guidance.data import RealDataMissing
    from guidance.scenarios.planning import prepare_plan
    from guidance.scenarios.simulators import calibrate_room

    if not 1.0 <= pose_hz <= 1000.0:
        raise InputError(f"--pose-hz must be 1..1000, got {pose_hz}")
    say("bench --tracked: the room's calibrations and the plan on the real CT ...")
    with tempfile.TemporaryDirectory(prefix="guidance-bench-") as tmp:
        try:
            room = bench_room()
            all_files = calibrate_room(room, Path(tmp) / "room")
            plan, structures = prepare_plan(room.path.entry_lps, room.path.target_lps,
                                            Path(tmp))
        except (RealDataMissing, PlanError) as e:
            raise SessionError(f"bench --tracked needs the real CT: {e}") from e
        files = [f for f in all_files if not f.name.startswith(("temporal", "probe", "carm"))]
        out: dict[str, Any] = {"pose_hz": pose_hz, "seconds": seconds,
                               "structures": len(structures.structures),
                               "calibrations": [f.name for f in files]}
        series: dict[str, list[float]] = {}
        phases = [("tracked", plan, structures), ("tracked_no_plan", None, None)]
        for i, (name, p, ss) in enumerate(phases, 1):
            what = (f"full check of {len(ss.structures)} structures" if ss is not None
                    else "baseline: no plan, the tip only")
            say(f"[{i}/{len(phases)}] {name}: {seconds:.0f} s of poses at {pose_hz:g} Hz, "
                f"{what} ...")
            t0 = time.monotonic()
            res = _phase(pose_hz, seconds, files, p, ss)
            series[name] = res.pop("_values")
            out[name] = res
            lat = res["latency_ms"]
            say(f"      pose -> tip sent ms: p50 {lat['p50']:.2f}  p95 {lat['p95']:.2f}  "
                f"p99 {lat['p99']:.2f}  max {lat['max']:.2f}  ({res['tips_sent']} tips, "
                f"{time.monotonic() - t0:.0f} s)")
    full, base = out["tracked"]["latency_ms"], out["tracked_no_plan"]["latency_ms"]
    out["p99_ratio_full_check_over_tip_only"] = round(full["p99"] / base["p99"], 3)
    out["target"] = {"p99_ms": TARGET_P99_MS, "met": bool(full["p99"] <= TARGET_P99_MS)}
    write_summary(json_path, out)
    png = json_path.with_suffix(".png")
    write_histogram(png, series, f"guidance bench --tracked: pose received -> tip sent, "
                                 f"{pose_hz:g} Hz", ylabel="needle poses")
    return BenchReport(out, json_path, png)
