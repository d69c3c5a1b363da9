"""What ``guidance bench`` prints after a benchmark: its report as lines for people (the
percentiles, the targets met or missed, the files written). The CLI prints them as they
are; one function per benchmark, :func:`report_lines` picks it by stage."""

from __future__ import annotations

import json
from collections.abc import Callable

from guidance.bench.measure import BenchReport

__all__ = ["report_lines"]


def _percentile_line(name: str, p: dict[str, float], width: int, fmt: str) -> str:
    return (f"  {name:{width}s} p50 {p['p50']:{fmt}}  p95 {p['p95']:{fmt}}  "
            f"p99 {p['p99']:{fmt}}  max {p['max']:{fmt}} ms")


def _wrote(r: BenchReport) -> str:
    return f"wrote {r.json_path} and {r.png_path}"


def latency_lines(r: BenchReport) -> list[str]:
    """Transport (ours, pyigtl's) and pipeline: the latency percentiles as JSON, where
    the pipeline's time goes, and the targets met or not."""
    lines = [_wrote(r), json.dumps({k: r.summary[k]["latency_ms"] for k in
                                    ("transport", "transport_pyigtl", "pipeline")
                                    if k in r.summary}, indent=1)]
    budget = r.summary.get("pipeline", {}).get("where_the_time_goes", [])
    if budget:
        lines.append("where the time goes (p50, share of end-to-end p50):")
        for row in budget:
            model = row.get("of_which_model_inference_p50_ms")
            lines.append(f"  {row['stage']:34s} {row['p50_ms']:6.2f} ms  "
                         f"{100 * row['share_of_e2e_p50']:5.1f} %"
                         + (f"  (model {model:.2f} ms)" if model is not None else ""))
    for name, t in r.summary.get("targets", {}).items():
        lines.append(f"target {name} <= {t['target']:g}: {t['value']:.3f} "
                     f"{'met' if t['met'] else 'NOT met'}")
    return lines


def segment_lines(r: BenchReport) -> list[str]:
    """Segmentation: the p50 per backend and grid size as JSON."""
    return [_wrote(r), json.dumps({f"{row['backend']}@{row['size']}": row["segment_ms"]["p50"]
                                   for row in r.summary["results"]}, indent=1)]


def anatomy_lines(r: BenchReport) -> list[str]:
    """The ultrasound anatomy check against its target, and against the segment stage."""
    from guidance.bench.anatomy import TARGET_P99_MS

    a, s = r.summary["anatomy_ms"], r.summary["segment_ms"]
    return [f"  anatomy check: p50 {a['p50']:.2f}  p95 {a['p95']:.2f}  p99 {a['p99']:.2f}  "
            f"max {a['max']:.2f} ms (target p99 <= {TARGET_P99_MS:g} ms)",
            f"  segment stage: p50 {s['p50']:.2f}  p99 {s['p99']:.2f} ms; anatomy / segment "
            f"at p50 {r.summary['anatomy_over_segment_p50']:.3f}",
            _wrote(r)]


def ct_lines(r: BenchReport) -> list[str]:
    """CT control slabs: each stage's percentiles, each target PASS or FAIL."""
    lines = [_percentile_line(name, q, 13, "7.1f")
             for name, q in r.summary["stages_ms"].items()]
    lines += [f"  {k}: {t['value']:.1f} ms (target <= {t['target']:g}) "
              f"{'PASS' if t['pass'] else 'FAIL'}" for k, t in r.summary["targets"].items()]
    return [*lines, _wrote(r)]


def tracked_lines(r: BenchReport) -> list[str]:
    """Tracked navigation: the p99 against its target, and the full check over the tip
    only."""
    from guidance.bench.tracked import TARGET_P99_MS

    full = r.summary["tracked"]["latency_ms"]
    met = "met" if r.summary["target"]["met"] else "NOT met"
    return [f"p99 {full['p99']:.2f} ms (target <= {TARGET_P99_MS:g} ms: {met}); full check / "
            f"tip only p99 ratio {r.summary['p99_ratio_full_check_over_tip_only']}",
            _wrote(r)]


def render_lines(r: BenchReport) -> list[str]:
    """Drawing: each series' percentiles, the render p50 against its target."""
    from guidance.bench.render import TARGET_P50_MS

    out = r.summary
    lines = [_percentile_line(name, out[f"{name}_ms"], 22, "6.2f")
             for name in ("render", "render_stale", "widget_repaint", "baseline_overlay_cv2")]
    verdict = "meets" if out["meets_target"] else "MISSES"
    return [*lines, f"render p50 {out['render_ms']['p50']:.2f} ms {verdict} the "
                    f"{TARGET_P50_MS:g} ms target; wrote {r.json_path} and {r.png_path}"]


_LINES: dict[str, Callable[[BenchReport], list[str]]] = {
    "segment": segment_lines, "anatomy": anatomy_lines, "ct": ct_lines,
    "tracked": tracked_lines, "render": render_lines,
}


def report_lines(stage: str, r: BenchReport) -> list[str]:
    """The lines to print for the report ``r`` of the benchmark ``stage`` (``segment``,
    ``anatomy``, ``ct``, ``tracked``, ``render``; any other: the transport and pipeline
    latency of :func:`guidance.bench.transport.run_latency`)."""
    return _LINES.get(stage, latency_lines)(r)
