"""``guidance bench``: latency percentiles (JSON + histogram PNG) of the live loop and its
parts; the measuring is :mod:`guidance.bench`, this module parses, dispatches and prints.

Without ``--stage`` (or ``--stage transport`` / ``pipeline``), three phases, each
against its own sender process (``python -m guidance.bench.sender``) streaming the same
pre-rendered frames (:mod:`guidance.bench.transport`):

1. ``transport``: our OpenIGTLink client and a consumer blocked on the latest-value
   slot; latency = consumer wakes with the decoded frame - sender's clock just before it
   packed the message.
2. ``transport_pyigtl``: the same with pyigtl's stock ``OpenIGTLinkClient`` and its
   ``wait_for_message`` (the baseline).
3. ``pipeline``: our client + the full pipeline, results sent back to the sender;
   end-to-end = frame fully received -> results handed to the kernel and overlay composed.

Both transports run in the same invocation, so the ratio holds on a noisy machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guidance.cli.common import int_at_least, path_arg, positive_float
from guidance.cli.main import UsageError
from guidance.records import MODALITIES
from guidance.session.console import progress_line

if TYPE_CHECKING:
    from guidance.bench.measure import BenchReport

__all__ = ["register", "run"]

_say = partial(print, flush=True)


def _sizes(text: str) -> list[int]:
    from guidance.bench.segment import parse_sizes

    try:
        return parse_sizes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _canvas(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if not (64 <= w <= 8192 and 64 <= h <= 8192):
        raise argparse.ArgumentTypeError(f"canvas must be 64..8192 pixels a side, got {text}")
    return w, h


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure latency (percentiles) of transport and pipeline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512, help="frame size, pixels (default 512)")
    p.add_argument("--fps", type=positive_float, default=15.0,
                   help="frames per second sent (Hz)")
    p.add_argument("--seconds", type=positive_float, default=20.0,
                   help="duration of each phase, s")
    p.add_argument("--json", type=path_arg("output_file", Path), default=Path("bench.json"),
                   metavar="FILE", help="where to write the results (JSON)")
    p.add_argument("--stage", choices=("all", "transport", "pipeline", "segment", "render",
                                       "tracked", "anatomy"),
                   default="all",
                   help="all = transport + pipeline; segment = model backends "
                        "(guidance.bench.segment); render = GUI drawing "
                        "(guidance.bench.render); tracked = navigation from poses "
                        "(guidance.bench.tracked); anatomy = the ultrasound nerve and "
                        "vessel check per frame (guidance.bench.anatomy; --size, "
                        "--frames)")
    g = p.add_argument_group("--stage segment")
    g.add_argument("--backends", default="auto", metavar="auto|NAME,...",
                   help="backends to time: auto = every one available here (default), or "
                        "names from models.backends.BACKENDS")
    g.add_argument("--sizes", type=_sizes, default=[128, 256, 512], metavar="S,S,...",
                   help="model grid sizes, px (default 128,256,512)")
    g.add_argument("--frames", type=int_at_least(0), default=300, metavar="N",
                   help="timed frames per backend and size (default 300)")
    g.add_argument("--warmup", type=int_at_least(0), default=20, metavar="N",
                   help="untimed frames first (default 20)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--model", type=path_arg("input_file", Path), metavar="CARD",
                     help="model card (JSON)")
    src.add_argument("--modality", default=None, choices=MODALITIES,
                     help="use the shipped model of this modality (default us); without "
                          "--stage, --modality us times the ultrasound anatomy check "
                          "(--stage anatomy)")
    g.add_argument("--threads", type=int_at_least(0), default=None, metavar="N",
                   help="CPU threads for ONNX Runtime / torch (default: the CPUs available)")
    g = p.add_argument_group("--stage render")
    g.add_argument("--render-frames", type=int_at_least(10), default=1000, metavar="N",
                   help="frames timed per series (default 1000)")
    g.add_argument("--render-canvas", type=_canvas, default=(1180, 1000), metavar="WxH",
                   help="size of the drawn picture, pixels (default 1180x1000: the live "
                        "view's picture in a 1600x1000 window)")
    g.add_argument("--render-modality", choices=("auto", "fluoro", "us"), default="auto",
                   help="simulated frames (default: fluoro when the real CT is installed)")
    g = p.add_argument_group("--tracked (--stage tracked)")
    g.add_argument("--tracked", action="store_true",
                   help="tracked navigation on the real CT: pose received -> NeedleTipToRAS "
                        "sent, with the full structure check (same as --stage tracked)")
    g.add_argument("--pose-hz", type=float, default=60.0, help="tracker rate (default 60)")
    p.set_defaults(func=run)


def _percentile_line(name: str, p: dict[str, float], width: int, fmt: str) -> str:
    return (f"  {name:{width}s} p50 {p['p50']:{fmt}}  p95 {p['p95']:{fmt}}  "
            f"p99 {p['p99']:{fmt}}  max {p['max']:{fmt}} ms")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark that the arguments name; print its summary; returns 0."""
    stage = "tracked" if args.tracked else args.stage
    if stage == "all" and args.modality is not None:
        if args.modality not in ("us", "ct"):
            raise UsageError(f"--modality {args.modality}: give --stage segment (the model's "
                             "speed); without --stage, --modality us times the ultrasound "
                             "anatomy check and --modality ct the CT control slabs")
        if args.modality == "us":
            print("bench: --modality us: the ultrasound anatomy check (--stage anatomy)")
        stage = "anatomy" if args.modality == "us" else "ct"
    handler = {"tracked": _tracked, "segment": _segment, "render": _render,
               "ct": _ct, "anatomy": _anatomy}.get(stage, _latency)
    handler(args, stage)
    return 0


def _wrote(r: BenchReport) -> None:
    print(f"wrote {r.json_path} and {r.png_path}")


def _latency(args: argparse.Namespace, stage: str) -> None:
    from guidance.bench.transport import run_latency

    r = run_latency(stage, args.size, args.fps, args.seconds, args.json, _say)
    _wrote(r)
    print(json.dumps({k: r.summary[k]["latency_ms"] for k in
                      ("transport", "transport_pyigtl", "pipeline") if k in r.summary},
                     indent=1))


def _segment(args: argparse.Namespace, _stage: str) -> None:
    from guidance.bench.segment import run_segment

    r = run_segment(args.json, card=args.model, modality=args.modality,
                    backends=args.backends, sizes=args.sizes, frames=args.frames,
                    warmup=args.warmup, threads=args.threads, say=_say)
    _wrote(r)
    print(json.dumps({f"{row['backend']}@{row['size']}": row["segment_ms"]["p50"]
                      for row in r.summary["results"]}, indent=1))


def _anatomy(args: argparse.Namespace, _stage: str) -> None:
    from guidance.bench.anatomy import TARGET_P99_MS, run_anatomy

    r = run_anatomy(args.size, args.frames, args.json, args.modality or "us", _say)
    a, s = r.summary["anatomy_ms"], r.summary["segment_ms"]
    print(f"  anatomy check: p50 {a['p50']:.2f}  p95 {a['p95']:.2f}  p99 {a['p99']:.2f}  max "
          f"{a['max']:.2f} ms (target p99 <= {TARGET_P99_MS:g} ms)")
    print(f"  segment stage: p50 {s['p50']:.2f}  p99 {s['p99']:.2f} ms; anatomy / segment at "
          f"p50 {r.summary['anatomy_over_segment_p50']:.3f}")
    _wrote(r)


def _ct(args: argparse.Namespace, _stage: str) -> None:
    from guidance.bench.ct import run_ct

    r = run_ct(args.frames, args.json, _say, progress_line)
    for name, q in r.summary["stages_ms"].items():
        print(_percentile_line(name, q, 13, "7.1f"))
    for k, t in r.summary["targets"].items():
        print(f"  {k}: {t['value']:.1f} ms (target <= {t['target']:g}) "
              f"{'PASS' if t['pass'] else 'FAIL'}")
    _wrote(r)


def _tracked(args: argparse.Namespace, _stage: str) -> None:
    from guidance.bench.tracked import TARGET_P99_MS, run_tracked

    def calibrate(room: Any, folder: Path) -> list[Path]:
        from guidance.cli.demo import calibrate_room  # `guidance calibrate`, as a user

        with contextlib.redirect_stdout(io.StringIO()):
            return calibrate_room(room, folder)

    r = run_tracked(calibrate, args.pose_hz, args.seconds, args.json, _say)
    full = r.summary["tracked"]["latency_ms"]
    met = "met" if r.summary["target"]["met"] else "NOT met"
    print(f"p99 {full['p99']:.2f} ms (target <= {TARGET_P99_MS:g} ms: {met}); full check / "
          f"tip only p99 ratio {r.summary['p99_ratio_full_check_over_tip_only']}")
    _wrote(r)


def _render(args: argparse.Namespace, _stage: str) -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported
    from guidance.bench.render import TARGET_P50_MS, run_render
    from guidance.gui.bench_targets import GuiRenderTargets

    r = run_render(GuiRenderTargets, args.size, args.render_frames, args.render_canvas,
                   args.json, args.render_modality, _say)
    out = r.summary
    for name in ("render", "render_stale", "widget_repaint", "baseline_overlay_cv2"):
        print(_percentile_line(name, out[f"{name}_ms"], 22, "6.2f"))
    verdict = "meets" if out["meets_target"] else "MISSES"
    print(f"render p50 {out['render_ms']['p50']:.2f} ms {verdict} the {TARGET_P50_MS:g} ms "
          f"target; wrote {r.json_path} and {r.png_path}")
