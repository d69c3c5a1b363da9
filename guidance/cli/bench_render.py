"""``guidance bench --stage render``: time to draw one frame with its overlays in the GUI.

Frames come from the simulated scanner (fluoroscopy on the real CT when its data package
is installed, else ultrasound) at ``--size``, with their ground-truth label maps, the
needle, the plan and warnings of every level (long DANGER texts included), so every
overlay is drawn. Series, each over ``--render-frames`` frames after a warm-up:

- ``render``: :class:`guidance.gui.canvas.LiveRenderer` into a ``QImage`` of
  ``--render-canvas`` pixels (the live view's picture: grey mapping, outlines, scaling
  to the display, needle, plan, banner, legend, age box) -- the figure the issue's
  8 ms median target is about;
- ``render_stale``: the same in the STALE state (dimmed, hatched, STALE box);
- ``widget_repaint``: the live view's full update on a new result (poll the slot,
  build the view model, update the side panel, synchronous repaint of the canvas
  widget), offscreen;
- ``baseline_overlay_cv2``: the headless :class:`guidance.pipeline.overlay.OverlayComposer`
  (pure cv2 at frame resolution, no scaling, small text) on the same frames.

Writes ``--json`` (percentiles per series, ms) and a histogram PNG beside it.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any

import numpy as np

from guidance.cli.common import int_at_least
from guidance.cli.main import UsageError

__all__ = ["add_arguments", "run"]

TARGET_P50_MS = 8.0


def _canvas(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if not (64 <= w <= 8192 and 64 <= h <= 8192):
        raise argparse.ArgumentTypeError(f"canvas must be 64..8192 pixels a side, got {text}")
    return w, h


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this stage's options to the ``bench`` parser (names must not clash)."""
    g = p.add_argument_group("--stage render")
    g.add_argument("--render-frames", type=int_at_least(10), default=1000, metavar="N",
                   help="frames timed per series (default 1000)")
    g.add_argument("--render-canvas", type=_canvas, default=(1180, 1000), metavar="WxH",
                   help="size of the drawn picture, pixels (default 1180x1000: the live "
                        "view's picture in a 1600x1000 window)")
    g.add_argument("--render-modality", choices=("auto", "fluoro", "us"), default="auto",
                   help="simulated frames (default: fluoro when the real CT is installed)")


def _results(modality: str, size: int, n_distinct: int = 24) -> tuple[list[Any], Any, dict]:
    """Simulated FrameResults with labels, needle, warnings, poses; the plan; names."""
    from guidance.pipeline.frame import FrameResult, NeedleEstimate2D3D
    from guidance.pipeline.placement import FramePlacement
    from guidance.records import GuidanceState, SafetyReason, SafetyWarning, WarningLevel
    from guidance.safety.decision import Clearance, MarginWidening, SafetyDecision
    from guidance.sim import make_scanner

    scanner = make_scanner(modality, size=size, seed=0)
    path = scanner.path
    speed = path.needle.speed_mm_s
    reach = path.plan_length_mm / speed if speed else 10.0
    levels = [WarningLevel.NONE, WarningLevel.INFO, WarningLevel.CAUTION, WarningLevel.DANGER]
    out = []
    now = time.monotonic_ns()
    for k in range(n_distinct):
        t = reach * (0.4 + 0.6 * k / max(n_distinct - 1, 1))
        f = scanner.frame(k, t)
        tr = f.truth
        tip = tr.tip_ij
        hub = tip - tr.axis_ij * size * 0.3 if np.all(np.isfinite(tr.axis_ij)) else tip
        needle = NeedleEstimate2D3D(tip, hub, tr.tip_lps, tr.axis_lps, 0.9, "image+tracker")
        lvl = levels[k % 4]
        warnings: tuple[SafetyWarning, ...] = ()
        if lvl:
            warnings = (
                SafetyWarning(t, lvl, "spinal_cord", 1.2,
                              "spinal_cord: 1.2 mm, within the 3.5 mm margin (3.0 + 0.5 mm "
                              "uncertainty)", SafetyReason.WITHIN_MARGIN, 3.5),
                SafetyWarning(t, WarningLevel.INFO, "plan", 2.0,
                              "plan: 2.0 mm off the plan at target depth",
                              SafetyReason.OFF_PLAN))
        decision = SafetyDecision(
            t_s=t, level=lvl, reason=warnings[0].reason if warnings else SafetyReason.CLEAR,
            structure=warnings[0].structure if warnings else "", clearance_mm=1.2,
            margin_mm=3.5, findings=warnings, widening=MarginWidening(0.3, 0.4, 0.9, 0.1, 5.0),
            clearances=(Clearance("nerve_root_L1_left (derived)", 4.4, 2.5),
                        Clearance("spinal_cord", 6.2, 5.5), Clearance("aorta", 18.0, 5.5)),
            tip_to_target_mm=12.5 - 0.3 * k, lateral_offset_mm=1.4, angle_deg=2.1,
            depth_to_target_mm=12.0 - 0.3 * k, depth_to_breach_mm=float("inf"))
        placement = (FramePlacement("projection",
                                    ct_to_pixel=scanner.geometry.lps_to_pixel)  # type: ignore[attr-defined]
                     if modality == "fluoro"
                     else FramePlacement("slice", ijk_to_ct=f.image.ijk_to_lps))
        out.append(FrameResult(seq=k + 1, t_s=t, received_ns=now, state=GuidanceState.OK,
                               needle=needle, decision=decision, image=f.image,
                               labels=tr.labels, placement=placement,
                               label_names=tr.label_names, modality=modality))
    names = {i: n for i, n in enumerate(out and scanner.frame(0, 0.0).truth.label_names) if i}
    return out, (scanner.entry_lps, scanner.target_lps), names


class _Feed:
    """A feed whose newest result the benchmark sets (duck-types LiveFeed)."""

    record = None
    stale_after_s = 0.5

    def __init__(self, plan: Any) -> None:
        self.result: Any = None
        self._plan = plan

    def latest_picture(self) -> Any:
        return self.result

    def latest(self) -> Any:
        return self.result

    def plan(self) -> Any:
        return self._plan

    def image_target(self) -> tuple[float, float] | None:
        return None

    def frames_dropped(self) -> int:
        return 0

    def connection(self) -> str:
        return "benchmark"

    def streams(self, now_ns: int | None = None) -> tuple[Any, ...]:
        return ()


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; write ``args.json`` (p50/p95/p99/max) and a PNG beside it."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from dataclasses import replace

    from PyQt5.QtGui import QImage

    from guidance.cli.bench import _histogram
    from guidance.cli.common import write_summary
    from guidance.gui.app import ensure_app
    from guidance.gui.canvas import LiveRenderer
    from guidance.gui.live_model import build_view_model
    from guidance.gui.live_view import LiveView
    from guidance.pipeline.overlay import OverlayComposer
    from guidance.pipeline.stats import percentiles

    if not 64 <= args.size <= 2048:
        raise UsageError(f"--size must be 64..2048, got {args.size}")
    modality = args.render_modality
    if modality == "auto":
        from guidance.data import RealDataMissing, real_ct_paths

        try:
            real_ct_paths()
            modality = "fluoro"
        except RealDataMissing:
            modality = "us"
    n = int(args.render_frames)
    w, h = args.render_canvas
    print(f"render bench: {n} frames per series, {args.size}x{args.size} {modality} frames "
          f"on a {w}x{h} canvas ...", flush=True)
    try:
        results, plan, names = _results(modality, args.size)
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"cannot build the {modality} frames: {e}") from e
    app = ensure_app(headless=os.environ.get("QT_QPA_PLATFORM") == "offscreen")
    renderer = LiveRenderer()
    renderer.plan = plan
    canvas = QImage(w, h, QImage.Format_RGB32)
    warm = 20
    series: dict[str, list[float]] = {}

    def timed(name: str, fn: Any) -> None:
        vals = []
        for k in range(n + warm):
            r = results[k % len(results)]
            t0 = time.perf_counter()
            fn(r)
            if k >= warm:
                vals.append((time.perf_counter() - t0) * 1e3)
        series[name] = vals

    def live(r: Any) -> None:
        model = build_view_model(r, r, r.received_ns, 1e9, (), 15.0)
        renderer.render(canvas, r, model, names)

    def stale(r: Any) -> None:
        model = build_view_model(None, r, r.received_ns + 3_000_000_000, 0.5, (), math.nan)
        renderer.render(canvas, r, model, names)

    timed("render", live)
    timed("render_stale", stale)
    canvas.save(str(args.json.with_name(args.json.stem + "_last_frame.png")))
    feed = _Feed(plan)
    view = LiveView(feed, poll_ms=1000)  # type: ignore[arg-type]
    view.timer.stop()
    view.resize(1600, 1000)
    view.show()
    for _ in range(5):
        app.processEvents()
    seq = [0]

    def widget(r: Any) -> None:
        seq[0] += 1
        # A new object per update, as the pipeline publishes, stamped now (not stale).
        feed.result = replace(r, seq=seq[0], received_ns=time.monotonic_ns())
        view.poll()
        view.canvas.repaint()

    paints0 = view.canvas.paint_count
    timed("widget_repaint", widget)
    paints = view.canvas.paint_count - paints0
    view.close()
    composer = OverlayComposer()
    composer.plan = plan
    timed("baseline_overlay_cv2", lambda r: composer.compose(r, 40.0))
    out: dict[str, Any] = {
        "stage": "render", "size": args.size, "modality": modality, "canvas": [w, h],
        "frames_per_series": n, "warmup_frames": warm, "cpu_count": os.cpu_count(),
        "qt_platform": os.environ.get("QT_QPA_PLATFORM", ""),
        "target_p50_ms": TARGET_P50_MS,
        "widget_paints": paints,  # must equal frames + warm-up: each update was drawn
    }
    for name, vals in series.items():
        out[f"{name}_ms"] = percentiles(np.asarray(vals))
    out["meets_target"] = bool(out["render_ms"]["p50"] <= TARGET_P50_MS)
    out["render_over_baseline_p50"] = round(
        out["render_ms"]["p50"] / max(out["baseline_overlay_cv2_ms"]["p50"], 1e-6), 2)
    write_summary(args.json, out)
    png = args.json.with_suffix(".png")
    _histogram(png, series, f"guidance bench --stage render: {args.size}px {modality} "
               f"on {w}x{h}")
    for name in series:
        p = out[f"{name}_ms"]
        print(f"  {name:22s} p50 {p['p50']:6.2f}  p95 {p['p95']:6.2f}  p99 {p['p99']:6.2f}  "
              f"max {p['max']:6.2f} ms")
    verdict = "meets" if out["meets_target"] else "MISSES"
    print(f"render p50 {out['render_ms']['p50']:.2f} ms {verdict} the {TARGET_P50_MS:g} ms "
          f"target; wrote {args.json} and {png}")
    return 0
