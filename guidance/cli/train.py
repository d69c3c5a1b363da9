"""``guidance train``: the work and the description are :mod:`guidance.workflows.train`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from guidance.cli.common import path_arg
from guidance.cli.evaluate import print_report
from guidance.records import MODALITIES
from guidance.session.console import progress_line
from guidance.workflows import train as wf

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a segmentation model (ONNX + model card)",
                       description=wf.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", choices=MODALITIES, required=True,
                   help="which model: ultrasound, fluoroscopy or CT(-fluoroscopy) slices")
    p.add_argument("--out", type=path_arg("output_dir", Path), default=None, metavar="DIR",
                   help="where to write <modality>-seg.onnx/.json (default: the shipped "
                        "models/weights folder)")
    p.add_argument("--frames", type=int, default=None, help="training frames")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the simulated data and the initial weights")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1, as the shipped models: the same seed and "
                        "thread count give the same weights)")
    p.add_argument("--cache", type=path_arg("output_dir", Path, parents=True),
                   default=Path.home() / ".cache" / "guidance" / "datasets",
                   metavar="DIR", help="dataset cache folder")
    p.add_argument("--eval-frames", type=int, default=400,
                   help="held-out frames for the evaluation after training")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = wf.train_model(
        args.modality, out_dir=args.out, frames=args.frames, steps=args.steps,
        seed=args.seed, threads=args.threads, cache=args.cache, eval_frames=args.eval_frames,
        evaluate=not args.no_eval, progress=progress_line, say=lambda s: print(s, flush=True))
    if report is not None:
        print_report(report, None)
        print(json.dumps(report.metrics["targets"], indent=1))
    return 0
