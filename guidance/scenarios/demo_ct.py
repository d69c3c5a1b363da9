"""The CT-guided demo on the real CT.

It plans ``foramen:L1-L2:left`` automatically, starts a live session (the OpenIGTLink
server, the loop, the timeline) and plays the scanner: one control slab (5 slices of
3 mm, the simulator's partial volume, metal artefacts and noise) per step as the needle
advances along the plan, the way an operator scans. ``safe`` follows the plan; ``drift``
deviates 6 degrees and the patient moves 3 mm before the third scan; ``breach`` deviates
12 degrees. Each scan's result is said as it comes back; the demo ends with the
verification of the last scan (control CT, report, DICOM objects).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from guidance.scenarios.demo import DemoOptions, DemoRun, verification_lines
from guidance.scenarios.errors import Say, ScenarioError, say_nothing

__all__ = ["SCENARIO_CT", "run_ct_demo"]

#: scenario -> (deviation from the plan, degrees; patient translation before scan 3, mm)
SCENARIO_CT: dict[str, tuple[float, float]] = {"safe": (0.0, 0.0), "drift": (6.0, 3.0),
                                               "breach": (12.0, 0.0)}


def _wait_result(session: Any, after: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = session.pipeline.latest()
        if (r is not None and r is not after and r.ct_scan is not None) or (
                r is not None and r is not after and r.kind == "frame"):
            return r
        time.sleep(0.02)
    return None


def run_ct_demo(opts: DemoOptions, say: Say = say_nothing) -> DemoRun:
    """The CT demo (see the module docstring) of ``opts.scenario`` and ``opts.seed``
    (the other options are not used); writes ``opts.out`` (``plan.json``,
    ``summary.json``, ``procedure_timeline.jsonl``, PNGs, ``verification/``).

    Raises:
        guidance.planning.plan.PlanError: no plan on the real CT.
        ScenarioError: a scan had no result within 30 s.
    """
    from guidance.data import load_real_ct
    from guidance.io.igtl import IgtlClient
    from guidance.io.messages import image_message_from_volume
    from guidance.pipeline.config import config_from_dict
    from guidance.pipeline.loop import result_text
    from guidance.scenarios.planning import plan_demo, verify_final_needle
    from guidance.session import LiveSession
    from guidance.sim.ct_slab import control_scan_series

    deviation, moved_mm = SCENARIO_CT[opts.scenario]
    steps = 6
    say(f"demo: scenario {opts.scenario}, CT control scans (seed {opts.seed}) ...")
    say("demo: planning foramen:L1-L2:left on the real CT (automatic) ...")
    plan, structures, target = plan_demo(opts.out)
    ct = load_real_ct()
    config = config_from_dict({"ingest": {"modality": "ct", "stale_after_s": 30.0}})
    session = LiveSession(listen=0, out_dir=opts.out, png_every_s=0.0, config=config)
    session.pipeline.set_plan(plan, structures)
    session.pipeline.set_navigation_ct(ct)
    session.start()
    scanner = IgtlClient("127.0.0.1", session.port).start()
    scanner.wait_connected(5.0)
    motion = None
    if moved_mm:
        motion = np.eye(4)
        motion[:3, 3] = [moved_mm, 0.0, 0.0]
    say(f"demo: {steps} control scans (5 x 3 mm slices) as the needle advances"
        + (f", {deviation:g} deg off the plan" if deviation else "")
        + (f", the patient moves {moved_mm:g} mm before scan 3" if moved_mm else "")
        + " ...")
    last = None
    truth = None
    levels: list[str] = []
    try:
        for i, (slab, truth) in enumerate(control_scan_series(
                ct, plan.entry_lps, plan.target_lps, steps=steps, deviation_deg=deviation,
                motion=motion, seed=opts.seed)):
            scanner.send(image_message_from_volume(slab, "CT_Reference", time.time()))
            r = _wait_result(session, last, 30.0)
            if r is None:
                raise ScenarioError(f"demo: scan {i + 1}: no result within 30 s "
                                    f"({session.pipeline.last_error or 'no error'})")
            last = r
            scan = r.ct_scan
            err = (float(np.linalg.norm(scan.tip_ct_lps - truth.tip_ct_lps))
                   if scan is not None and scan.has_needle else float("nan"))
            levels.append(r.level.name)
            say(f"  scan {i + 1}: {r.state.name:11s} {result_text(r)[:150]}"
                f"  [tip error {err:.1f} mm vs the simulation]")
            time.sleep(0.3)
    finally:
        scanner.stop()
    extra: dict[str, Any] = {"modality": "ct", "scenario": opts.scenario, "scans": steps,
                             "levels": levels}
    verification = None
    if truth is not None:
        say("demo: the last scan's needle -> control CT -> verification ...")
        verification = verify_final_needle(plan, structures, truth.tip_ct_lps,
                                           opts.out / "verification", opts.seed, target)
        extra["verification"] = {k: verification.get(k) for k in
                                 ("verdict", "reasons", "tip_to_target_mm")}
    summary = session.stop(extra)
    lines = ([] if verification is None else
             verification_lines(verification, opts.out / "verification" / "report.html"))
    lines.append(f"output: {opts.out}/summary.json, {opts.out}/procedure_timeline.jsonl and "
                 f"{len(summary.get('pngs', []))} PNGs")
    return DemoRun(summary, f"guidance demo (ct, {opts.scenario})", lines)
