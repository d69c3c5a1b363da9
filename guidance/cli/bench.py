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
import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

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
    p.add_argument("--busy", type=int_at_least(0), default=0, metavar="N",
                   help="transport/pipeline: keep N other processes busy meanwhile (a "
                        "loaded machine)")
    p.add_argument("--nice", type=int, choices=range(-20, 20), default=0, metavar="N",
                   help="transport/pipeline: run at this CPU priority, as guidance run --nice")
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
    from guidance.bench.report import report_lines

    for line in report_lines(stage, handler(args, stage)):
        print(line)
    return 0


def _latency(args: argparse.Namespace, stage: str) -> BenchReport:
    from guidance.bench.transport import run_latency

    return run_latency(stage, args.size, args.fps, args.seconds, args.json, _say,
                       busy=args.busy, nice=args.nice)


def _segment(args: argparse.Namespace, _stage: str) -> BenchReport:
    from guidance.bench.segment import run_segment

    return run_segment(args.json, card=args.model, modality=args.modality,
                       backends=args.backends, sizes=args.sizes, frames=args.frames,
                       warmup=args.warmup, threads=args.threads, say=_say)


def _anatomy(args: argparse.Namespace, _stage: str) -> BenchReport:
    from guidance.bench.anatomy import run_anatomy

    return run_anatomy(args.size, args.frames, args.json, args.modality or "us", _say)


def _ct(args: argparse.Namespace, _stage: str) -> BenchReport:
    from guidance.bench.ct import run_ct

    return run_ct(args.frames, args.json, _say, progress_line)


def _tracked(args: argparse.Namespace, _stage: str) -> BenchReport:
    from guidance.bench.tracked import run_tracked

    return run_tracked(args.pose_hz, args.seconds, args.json, _say)


def _render(args: argparse.Namespace, _stage: str) -> BenchReport:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported
    from guidance.bench.render import run_render
    from guidance.gui.bench_targets import GuiRenderTargets

    return run_render(GuiRenderTargets, args.size, args.render_frames, args.render_canvas,
                      args.json, args.render_modality, _say)
