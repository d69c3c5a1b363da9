"""Time to draw one frame with its overlays (``guidance bench --stage render``).

Frames come from the simulated scanner (fluoroscopy on the real CT when its data package
is installed, else ultrasound), with their ground-truth label maps, the needle, the plan
and warnings of every level (long DANGER texts included), so every overlay is drawn.
Series, each over ``frames`` frames after a warm-up:

- ``render``: the live view's picture drawn into an image of the canvas size (grey
  mapping, outlines, scaling to the display, needle, plan, banner, legend, age box) --
  the figure the issue's 8 ms median target is about;
- ``render_stale``: the same in the STALE state (dimmed, hatched, STALE box);
- ``widget_repaint``: the live view's full update on a new result (poll the feed, build
  the view model, update the side panel, synchronous repaint of the canvas widget);
- ``baseline_overlay_cv2``: the headless :class:`guidance.pipeline.overlay.OverlayComposer`
  (pure cv2 at frame resolution, no scaling, small text) on the same frames.

The drawing itself is the GUI's, a front end above this package: the caller passes it
in (:class:`RenderTargets`, made by a :data:`MakeTargets`), this module never imports it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from guidance.bench.measure import BenchReport, Say, log_say, write_histogram
from guidance.io.validate import InputError
from guidance.pipeline.frame import FrameResult
from guidance.session import SessionError, write_summary

__all__ = ["TARGET_P50_MS", "WARMUP", "BenchFeed", "MakeTargets", "RenderTargets",
           "run_render", "simulated_results"]

#: The issue's target: the live view's picture, median drawing time.
TARGET_P50_MS = 8.0
#: Untimed frames before each series.
WARMUP = 20
#: The plan as the live view draws it: (entry, target), LPS mm, each (3,).
PlanLine = tuple[np.ndarray, np.ndarray]


class BenchFeed:
    """A feed whose newest result the benchmark sets (duck-types
    ``guidance.gui.feed.LiveFeed``: what the live view polls)."""

    record = None
    stale_after_s = 0.5

    def __init__(self, plan: PlanLine) -> None:
        self.result: FrameResult | None = None
        self._plan = plan

    def latest_picture(self) -> FrameResult | None:
        return self.result

    def latest(self) -> FrameResult | None:
        return self.result

    def plan(self) -> PlanLine:
        return self._plan

    def image_target(self) -> tuple[float, float] | None:
        return None

    def frames_dropped(self) -> int:
        return 0

    def connection(self) -> str:
        return "benchmark"

    def streams(self, now_ns: int | None = None) -> tuple[Any, ...]:
        return ()


class RenderTargets(Protocol):
    """The GUI's drawing, as the benchmark times it (each call draws one frame)."""

    #: The GUI's platform (``offscreen``, ``xcb``...), recorded in the results.
    platform: str

    def render(self, result: FrameResult) -> None:
        """Draw the live view's picture of ``result`` (fresh) into the canvas image."""

    def render_stale(self, result: FrameResult) -> None:
        """The same, 3 s later: the STALE state."""

    def save_picture(self, path: Path) -> None:
        """Write the canvas image (PNG)."""

    def open_view(self, feed: BenchFeed) -> None:
        """Show the live view (1600 x 1000) on ``feed``, its own polling stopped."""

    def repaint_view(self) -> None:
        """Poll the feed and repaint the view's canvas synchronously."""

    def close_view(self) -> int:
        """Close the view; returns how many times its canvas was painted since opened."""


#: ``(plan, label names {value: name}, canvas (width, height) px) -> RenderTargets``.
MakeTargets = Callable[[PlanLine, dict[int, str], tuple[int, int]], RenderTargets]


def simulated_results(modality: str, size: int, n_distinct: int = 24,
                      ) -> tuple[list[FrameResult], PlanLine, dict[int, str]]:
    """Simulated results with labels, needle, warnings of every level and poses.

    Args:
        modality: ``fluoro`` (needs the real CT) or ``us``.
        size: frame size, pixels a side.
        n_distinct: how many distinct results (the needle advancing along the plan).

    Returns:
        (the results, the plan's (entry, target) in LPS mm, label names {value: name}).

    Raises:
        ValueError, RuntimeError: the simulator cannot make such frames.
    """
    from guidance.pipeline.frame import NeedleEstimate2D3D
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
    label_names = scanner.frame(0, 0.0).truth.label_names if out else ()
    names = {i: str(n) for i, n in enumerate(label_names) if i}
    return out, (scanner.entry_lps, scanner.target_lps), names


def _default_modality() -> str:
    from guidance.data import RealDataMissing, real_ct_paths

    try:
        real_ct_paths()
        return "fluoro"
    except RealDataMissing:
        return "us"


def run_render(make_targets: MakeTargets, size: int, frames: int,
               canvas_wh: tuple[int, int], json_path: Path, modality: str = "auto",
               say: Say = log_say) -> BenchReport:
    """Time the four series; write ``json_path``, a histogram PNG beside it and the last
    picture drawn (``<stem>_last_frame.png``).

    Args:
        make_targets: makes the GUI's drawing on a canvas of ``canvas_wh``.
        size: frame size, pixels a side (64..2048).
        frames: timed frames per series (after :data:`WARMUP` untimed ones).
        canvas_wh: the picture's (width, height), pixels.
        json_path: where the results go (JSON).
        modality: ``fluoro``, ``us`` or ``auto`` (fluoro when the real CT is installed).
        say: where the progress lines go.

    Returns:
        The report; ``<series>_ms`` (p50/p95/p99/max, ms) per series, ``widget_paints``
        (frames + warm-up when every update was drawn), ``meets_target`` and
        ``render_over_baseline_p50``.

    Raises:
        InputError: ``size`` out of range.
        SessionError: the simulator cannot make the frames.
    """
    from guidance.pipeline.overlay import OverlayComposer
    from guidance.pipeline.stats import percentiles

    if not 64 <= size <= 2048:
        raise InputError(f"--size must be 64..2048, got {size}")
    if modality == "auto":
        modality = _default_modality()
    n = int(frames)
    w, h = canvas_wh
    say(f"render bench: {n} frames per series, {size}x{size} {modality} frames "
        f"on a {w}x{h} canvas ...")
    try:
        results, plan, names = simulated_results(modality, size)
    except (ValueError, RuntimeError) as e:
        raise SessionError(f"cannot build the {modality} frames: {e}") from e
    targets = make_targets(plan, names, (w, h))
    series: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[[FrameResult], Any]) -> None:
        vals = []
        for k in range(n + WARMUP):
            r = results[k % len(results)]
            t0 = time.perf_counter()
            fn(r)
            if k >= WARMUP:
                vals.append((time.perf_counter() - t0) * 1e3)
        series[name] = vals

    timed("render", targets.render)
    timed("render_stale", targets.render_stale)
    targets.save_picture(json_path.with_name(json_path.stem + "_last_frame.png"))
    feed = BenchFeed(plan)
    targets.open_view(feed)
    seq = [0]

    def widget(r: FrameResult) -> None:
        seq[0] += 1
        # A new object per update, as the pipeline publishes, stamped now (not stale).
        feed.result = replace(r, seq=seq[0], received_ns=time.monotonic_ns())
        targets.repaint_view()

    timed("widget_repaint", widget)
    paints = targets.close_view()
    composer = OverlayComposer()
    composer.plan = plan
    timed("baseline_overlay_cv2", lambda r: composer.compose(r, 40.0))
    out: dict[str, Any] = {
        "stage": "render", "size": size, "modality": modality, "canvas": [w, h],
        "frames_per_series": n, "warmup_frames": WARMUP, "cpu_count": os.cpu_count(),
        "qt_platform": targets.platform,
        "target_p50_ms": TARGET_P50_MS,
        "widget_paints": paints,  # must equal frames + warm-up: each update was drawn
    }
    for name, vals in series.items():
        out[f"{name}_ms"] = percentiles(np.asarray(vals))
    out["meets_target"] = bool(out["render_ms"]["p50"] <= TARGET_P50_MS)
    out["render_over_baseline_p50"] = round(
        out["render_ms"]["p50"] / max(out["baseline_overlay_cv2_ms"]["p50"], 1e-6), 2)
    write_summary(json_path, out)
    png = json_path.with_suffix(".png")
    write_histogram(png, series, f"guidance bench --stage render: {size}px {modality} "
                                 f"on {w}x{h}")
    return BenchReport(out, json_path, png)
