"""Tip accuracy of ``guidance run`` in the simulated room, against the simulator's truth.

    python scripts/room_accuracy.py [--seconds 6] [--json room-accuracy.json]

The same room as ``tests/guidance/test_room.py`` (marker 160 mm from the tip, patient
reference registered with a 25 deg rotation, frames 80 ms late, needle at 10 mm/s; the
calibrations made by ``guidance calibrate`` from the room's noisy raw data), streamed
over loopback OpenIGTLink to a live session:

1. navigation from poses alone: every ``NeedleTipToRAS`` received back, against the
   true tip at its timestamp;
2. fluoroscopy frames with the temporal calibration, and without it: the tip of each
   frame's result against the true tip at the time the frame shows.

Prints median / p95 / max tip error and the largest axis error, writes the JSON and a
histogram PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from guidance.session import LiveSession  # noqa: E402
from guidance.navigation.setup import load_room  # noqa: E402
from guidance.sim.room import RoomParams, SimulatedRoom, plan_path, stream_room  # noqa: E402
from tests.guidance.room_helpers import Received3D, angle_deg, calibration_files, connect  # noqa: E402


def _errors(room: SimulatedRoom, files: list[Path], seconds: float, start_s: float,
            images: bool) -> tuple[list[float], list[float]]:
    session = LiveSession(listen=0, room=load_room(files))
    results = []
    original = session.pipeline.on_result

    def on_result(result, rgb):  # type: ignore[no-untyped-def]
        results.append(result)
        if original is not None:
            original(result, rgb)

    session.pipeline.on_result = on_result
    session.start()
    slicer = Received3D()
    tracker = connect(session.port, slicer)
    scanner = connect(session.port) if images else None
    stream_room(room, tracker.send, scanner.send if scanner else None, 15.0, seconds,
                threading.Event(), start_s=start_s)
    threading.Event().wait(0.5)
    tracker.stop()
    if scanner is not None:
        scanner.stop()
    session.stop()
    errs, angs = [], []
    if images:
        for r in results:
            if r.kind == "frame" and r.needle is not None and r.needle.has_3d:
                tip, axis = room.truth_at_timestamp(r.timestamp_s, image=True)
                errs.append(float(np.linalg.norm(r.needle.tip_lps - tip)))
                angs.append(angle_deg(r.needle.axis_lps, axis))
    else:
        for ts, tip, axis in slicer.tips_lps():
            t_tip, t_axis = room.truth_at_timestamp(ts)
            errs.append(float(np.linalg.norm(tip - t_tip)))
            angs.append(angle_deg(axis, t_axis))
    return errs, angs


def _stats(errs: list[float], angs: list[float]) -> dict[str, float]:
    e = np.asarray(errs)
    return {"n": int(e.size), "median_mm": round(float(np.median(e)), 3),
            "p95_mm": round(float(np.percentile(e, 95)), 3), "max_mm": round(float(e.max()), 3),
            "max_axis_deg": round(float(max(angs)), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--json", type=Path, default=Path("room-accuracy.json"))
    args = ap.parse_args()
    from guidance.sim import make_scanner

    scanner = make_scanner("fluoro", size=256, seed=1)
    scanner.path = plan_path(scanner.entry_lps, scanner.target_lps, 10.0)
    room = SimulatedRoom(scanner.path, RoomParams(), seed=1, scanner=scanner)
    out: dict[str, object] = {"room": {"tip_length_mm": room.params.tip_length_mm,
                                       "reference_rotation_deg": 25.0,
                                       "image_lag_s": room.params.image_lag_s,
                                       "speed_mm_s": 10.0}}
    series = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = calibration_files(room, Path(tmp), ("pivot", "fiducials", "temporal", "carm"))
        runs = [("poses only", [f for f in files if not f.name.startswith("carm")], False),
                ("fluoro frames, lag applied", files, True),
                ("fluoro frames, no temporal calibration",
                 [f for f in files if not f.name.startswith("temporal")], True)]
        for name, use, images in runs:
            errs, angs = _errors(room, use, args.seconds, 2.0, images)
            out[name] = _stats(errs, angs)
            series[name] = errs
            print(f"{name}: {out[name]}", flush=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    bins = np.linspace(0, 2.5, 51)
    for name, errs in series.items():
        ax.hist(errs, bins=bins.tolist(), alpha=0.55,
                label=f"{name} (median {np.median(errs):.2f} mm)")
    ax.axvline(1.0, color="k", linestyle="--", label="target: median <= 1.0 mm")
    ax.set_xlabel("tip error against the simulator's truth, mm")
    ax.set_ylabel("updates")
    ax.set_title("guidance run in the simulated room: NeedleTip -> CT")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = args.json.with_suffix(".png")
    fig.savefig(png)
    print(f"wrote {args.json} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
