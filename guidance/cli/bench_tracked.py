"""``guidance bench --tracked``: tracked navigation on the real CT, pose in -> tip out.

A sender process (``guidance.cli.bench_sender --tracked``) is the room's tracker: the
needle marker's pose (``NeedleToReference``, 160 mm from the tip) at 60 Hz over
loopback OpenIGTLink. The receiver is the live pipeline as ``guidance run`` builds it:
the calibration files made by ``guidance calibrate`` from the simulated room's raw data
(pivot, registration), the plan on the real CT with every structure's distance field.
Each pose is one guidance update: tip through the transform graph, needle filter, the
full safety check, STRING / STATUS / TRANSFORM sent.

Measured per pose: ``tip_sent`` = pose fully received -> ``NeedleTipToRAS`` handed to the
kernel, and ``end_to_end`` (as every update: the later of outputs sent and overlay
composed). Two phases in one run, so that the ratio holds on a busy machine: with the
plan (full structure check) and, as the baseline, the same stream without a plan (the
tip only).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from guidance.cli.main import UsageError

__all__ = ["add_arguments", "bench_room", "run"]

SEED = 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this stage's options to the ``bench`` parser (names must not clash)."""
    g = p.add_argument_group("--tracked (--stage tracked)")
    g.add_argument("--tracked", action="store_true",
                   help="tracked navigation on the real CT: pose received -> NeedleTipToRAS "
                        "sent, with the full structure check (same as --stage tracked)")
    g.add_argument("--pose-hz", type=float, default=60.0, help="tracker rate (default 60)")


def bench_room(seed: int = SEED) -> Any:
    """The simulated room of the benchmark (the sender and the receiver build the same):
    a needle at 10 mm/s along the simulator's L1-L2 disc approach on the real CT."""
    from guidance.sim.anatomy import disc_approach
    from guidance.sim.params import FluoroParams
    from guidance.sim.room import RoomParams, SimulatedRoom, plan_path

    fp = FluoroParams()
    a = disc_approach(fp.disc_levels[0], fp.disc_levels[1], fp.approach_left, fp.approach_deg,
                      fp.target_posterior_mm, fp.target_lateral_mm)
    return SimulatedRoom(plan_path(a.entry_lps, a.target_lps, 10.0), RoomParams(), seed)


def _phase(args: argparse.Namespace, room_files: list[Path], plan: Any,
           structures: Any) -> dict[str, Any]:
    from guidance.cli.bench import _Sender, _Usage
    from guidance.io.igtl import IgtlClient
    from guidance.navigation.setup import load_room
    from guidance.pipeline.loop import Pipeline
    from guidance.pipeline.stats import percentiles

    sender = _Sender.start(["--tracked", "--pose-hz", str(args.pose_hz), "--seconds",
                            str(args.seconds), "--seed", str(SEED)])
    usage = _Usage()
    client = IgtlClient("127.0.0.1", sender.port)

    def send(m: Any, on_sent: Any = None) -> int:
        return 1 if client.send(m, on_sent) else 0

    pipe = Pipeline(client.slots, send=send, room=load_room(room_files))
    if plan is not None:
        pipe.set_plan(plan, structures)
    client.start()
    pipe.start()
    sent = sender.wait()
    threading.Event().wait(0.5)  # the last pose's update
    pipe.stop()
    client.stop()
    stats = {name: percentiles(pipe.stats.values(name)) for name in pipe.stats.names()}
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


def run(args: argparse.Namespace) -> int:
    """Run both phases, print the percentiles, write the JSON and a histogram PNG."""
    from guidance.cli.bench import _histogram
    from guidance.cli.common import write_summary
    from guidance.cli.demo import calibrate_room
    from guidance.cli.demo_planning import prepare_plan
    from guidance.data import RealDataMissing
    from guidance.planning.plan import PlanError

    if not 1.0 <= args.pose_hz <= 1000.0:
        raise UsageError(f"--pose-hz must be 1..1000, got {args.pose_hz}")
    print("bench --tracked: the room's calibrations and the plan on the real CT ...",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="guidance-bench-") as tmp:
        try:
            room = bench_room()
            with contextlib.redirect_stdout(io.StringIO()):
                files = calibrate_room(room, Path(tmp) / "room")
            plan, structures = prepare_plan(room.path.entry_lps, room.path.target_lps,
                                            Path(tmp))
        except (RealDataMissing, PlanError) as e:
            raise UsageError(f"bench --tracked needs the real CT: {e}") from e
        files = [f for f in files if not f.name.startswith(("temporal", "probe", "carm"))]
        out: dict[str, Any] = {"pose_hz": args.pose_hz, "seconds": args.seconds,
                               "structures": len(structures.structures),
                               "calibrations": [f.name for f in files]}
        series: dict[str, list[float]] = {}
        phases = [("tracked", plan, structures), ("tracked_no_plan", None, None)]
        for i, (name, p, ss) in enumerate(phases, 1):
            what = (f"full check of {len(ss.structures)} structures" if ss is not None
                    else "baseline: no plan, the tip only")
            print(f"[{i}/{len(phases)}] {name}: {args.seconds:.0f} s of poses at "
                  f"{args.pose_hz:g} Hz, {what} ...", flush=True)
            t0 = time.monotonic()
            res = _phase(args, files, p, ss)
            series[name] = res.pop("_values")
            out[name] = res
            lat = res["latency_ms"]
            print(f"      pose -> tip sent ms: p50 {lat['p50']:.2f}  p95 {lat['p95']:.2f}  "
                  f"p99 {lat['p99']:.2f}  max {lat['max']:.2f}  ({res['tips_sent']} tips, "
                  f"{time.monotonic() - t0:.0f} s)", flush=True)
    full, base = out["tracked"]["latency_ms"], out["tracked_no_plan"]["latency_ms"]
    out["p99_ratio_full_check_over_tip_only"] = round(full["p99"] / base["p99"], 3)
    out["target"] = {"p99_ms": 5.0, "met": bool(full["p99"] <= 5.0)}
    write_summary(args.json, out)
    png = args.json.with_suffix(".png")
    _histogram(png, series, f"guidance bench --tracked: pose received -> tip sent, "
                            f"{args.pose_hz:g} Hz", ylabel="needle poses")
    met = "met" if out["target"]["met"] else "NOT met"
    print(f"p99 {full['p99']:.2f} ms (target <= 5 ms: {met}); full check / tip only p99 "
          f"ratio {out['p99_ratio_full_check_over_tip_only']}")
    print(f"wrote {args.json} and {png}")
    return 0
