"""``guidance simulate --modality ct``: control slabs of a CT-guided procedure over
OpenIGTLink (one 3D IMAGE per step, :mod:`guidance.sim.ct_procedure`)."""

from __future__ import annotations

import argparse
import tempfile
import threading
from pathlib import Path
from typing import Any

from guidance.cli.main import UsageError
from guidance.io.igtl import IgtlClient, IgtlServer

__all__ = ["run_ct"]


def _plan(args: argparse.Namespace) -> tuple[Any, Any]:
    from guidance.planning.plan import Plan, PlanError

    try:
        if args.plan is not None:
            plan = Plan.load(args.plan)
        else:
            from guidance.cli.demo_planning import plan_demo

            plan = plan_demo(Path(tempfile.mkdtemp(prefix="guidance-ct-plan-")))[0]
    except PlanError as e:
        raise UsageError(str(e)) from e
    return plan.entry_lps, plan.target_lps


def run_ct(args: argparse.Namespace) -> int:
    from guidance.data import RealDataMissing, load_real_ct
    from guidance.sim.ct_procedure import motion_translation, stream_control_scans
    from guidance.sim.ct_slab import control_scan_series

    if args.listen is None and args.connect is None:
        raise UsageError("give --listen PORT or --connect HOST:PORT")
    if args.scenario not in (None, "safe", "drift"):
        raise UsageError(f"--scenario {args.scenario}: --modality ct plays safe or drift")
    if args.ct_steps < 1 or not 1 <= args.ct_slices <= 64 or not args.ct_interval_s >= 0:
        raise UsageError("--ct-steps >= 1, --ct-slices 1..64 and --ct-interval-s >= 0")
    entry, target = _plan(args)
    try:
        ct = load_real_ct()
    except RealDataMissing as e:
        raise UsageError(f"cannot build the ct simulator: {e}") from e
    motion = motion_translation(args.ct_motion_mm) if args.ct_motion_mm else None
    scans = control_scan_series(ct, entry, target, steps=args.ct_steps,
                                n_slices=args.ct_slices, thickness_mm=args.ct_thickness_mm,
                                deviation_deg=8.0 if args.scenario == "drift" else 0.0,
                                motion=motion, seed=args.seed)
    if args.listen is not None:
        server = IgtlServer(args.listen, host=args.bind).start()
        send, closer, where = server.send, server.stop, f"listening on {args.bind}:{server.port}"
    else:
        client = IgtlClient(*args.connect).start()
        send, closer, where = client.send, client.stop, f"to {args.connect[0]}:{args.connect[1]}"
    print(f"simulate: ct {args.ct_steps} control scans of {args.ct_slices} x "
          f"{args.ct_thickness_mm:g} mm every {args.ct_interval_s:g} s, {where}", flush=True)

    def said(n: int, slab: object, truth: object) -> None:
        t = truth.tip_ct_lps  # type: ignore[attr-defined]
        print(f"simulate: scan {n + 1}/{args.ct_steps} sent: tip ({t[0]:.1f}, {t[1]:.1f}, "
              f"{t[2]:.1f}) mm, tip in slab {truth.tip_in_slab}", flush=True)  # type: ignore[attr-defined]

    stop = threading.Event()
    try:
        stream_control_scans(scans, send, args.ct_interval_s, stop, said)
    except KeyboardInterrupt:
        pass
    finally:
        stop.wait(0.3)  # let the last message leave
        closer()
    return 0
