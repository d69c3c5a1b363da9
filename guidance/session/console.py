"""Text for a console: a session's summary, its warnings and its transport, and
progress bars. The command line prints these lines; nothing here prints on its own
except the progress bar, which writes to the stream it is given (stderr by default)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["progress_line", "summary_lines", "transport_lines", "warning_lines"]


def summary_lines(summary: dict[str, Any], title: str) -> list[str]:
    """A one-screen summary of a session (``summary.json``'s content) as lines."""
    lat = summary["latency_ms"]

    def f(v: Any) -> str:
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.1f}"

    lines = [f"== {title} =="]
    poses = summary.get("pose_updates", 0)
    lines.append(
        f"frames: received {summary['frames_received']}, processed "
        f"{summary['frames_processed']}, dropped {summary['frames_dropped']}, "
        f"stale reports {summary['stale_reports']}"
        + (f"; needle pose updates (no images) {poses}" if poses else "")
    )
    lines.append(
        f"end-to-end latency ms: p50 {f(lat['p50'])}  p95 {f(lat['p95'])}  "
        f"p99 {f(lat['p99'])}  max {f(lat['max'])}"
    )
    stages = "  ".join(f"{k} {f(v['p50'])}/{f(v['p99'])}" for k, v in summary["stages_ms"].items())
    lines.append(f"stages ms (p50/p99): {stages}")
    lines += warning_lines(summary["warnings"])
    last = summary.get("last_state")
    if last is not None:
        decision = last.get("decision")
        if decision is not None:
            wid = decision["widening"]
            lines.append(f"last decision: {decision['level']} {decision['message']} (margins "
                  f"+{wid['total_mm']:.1f} mm)")
        for r in last["reasons"][:3]:
            lines.append(f"last state: {r['state']}: {r['message']}")
    return lines


def progress_line(label: str, stream: Any = None, every_s: float = 10.0,
                  ) -> Callable[[float, str], None]:
    """A progress callback on stderr: on a terminal one bar updated in place (``\\r``);
    otherwise (a log, a pipe, CI) a plain line at most every ``every_s`` seconds and at
    the end, so that logs do not fill with bars."""
    out = stream if stream is not None else sys.stderr
    tty = bool(getattr(out, "isatty", lambda: False)())
    state = {"last": -1.0, "t": -math.inf}

    def show(fraction: float, message: str) -> None:
        done = fraction >= 1.0
        if tty:
            if fraction - state["last"] < 0.02 and not done:
                return
            state["last"] = fraction
            filled = round(30 * fraction)
            out.write(f"\r{label} [{'#' * filled}{' ' * (30 - filled)}] "
                      f"{100 * fraction:3.0f}% {message[:40]:<40}" + ("\n" if done else ""))
        else:
            now = time.monotonic()
            if not done and now - state["t"] < every_s:
                return
            if done and state["last"] >= 1.0:
                return
            state["t"], state["last"] = now, fraction
            out.write(f"{label}: {100 * fraction:3.0f}% {message}\n")
        out.flush()

    return show


_URGENCY = {"DANGER": 3, "CAUTION": 2, "INFO": 1}


def warning_lines(warnings: list[dict[str, Any]], limit: int = 8) -> list[str]:
    """The warnings log for the console: per structure its worst level (when it was
    first reached, and why), most urgent first (level, then closest to its margin); the
    count is of the structures listed, and what is left out is said."""
    worst: dict[str, dict[str, Any]] = {}
    for w in warnings:
        prev = worst.get(w["structure"])
        if prev is None or _URGENCY.get(w["level"], 0) > _URGENCY.get(prev["level"], 0):
            worst[w["structure"]] = w

    def excess(w: dict[str, Any]) -> float:
        d, m = w.get("distance_mm"), w.get("margin_mm")
        ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (d, m))
        return float(d) - float(m) if ok else math.inf  # type: ignore[arg-type]

    rows = sorted(worst.values(), key=lambda w: (-_URGENCY.get(w["level"], 0), excess(w)))
    if not rows:
        return ["warnings: none"]
    by_level: dict[str, int] = {}
    for w in rows:
        by_level[w["level"]] = by_level.get(w["level"], 0) + 1
    counts = ", ".join(f"{k} {by_level[k]}" for k in sorted(
        by_level, key=lambda k: -_URGENCY.get(k, 0)))
    lines = [f"warnings: {len(rows)} structure{'s' if len(rows) != 1 else ''} "
             f"({counts}); the worst of each, most urgent first:"]
    for w in rows[:limit]:
        # The message names its structure (plan items say "plan: ...").
        msg = w["message"]
        if not msg.startswith(f"{w['structure']}:"):
            msg = f"{w['structure']}: {msg}"
        lines.append(f"  {w['level']:7s} t={w['t_s']:6.2f}s {msg}")
    if len(rows) > limit:
        lines.append(f"  ... and {len(rows) - limit} more (summary.json: warnings)")
    return lines


def transport_lines(t: dict[str, Any]) -> list[str]:
    """The transport's rejections and refusals (``summary.json``'s ``transport``), one
    line each; none when clean."""
    lines = []
    if t.get("rejected"):
        lines.append("transport: rejected "
                     + ", ".join(f"{k} {v}" for k, v in t["rejected"].items())
                     + (f"; last: {t['last_errors'][-1]}" if t.get("last_errors") else ""))
    if t.get("refused_connections"):
        lines.append("transport: connections refused "
                     + ", ".join(f"{k} {v}" for k, v in t["refused_connections"].items()))
    if t.get("listener_errors"):
        lines.append(f"transport: {t['listener_errors']} listener errors (see the log)")
    if t.get("exposure_warning"):
        lines.append(f"transport: WARNING: {t['exposure_warning']}")
    return lines
