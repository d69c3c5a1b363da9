"""``guidance eval``: the work and the description are :mod:`guidance.workflows.evaluate`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from guidance.cli.common import path_arg
from guidance.records import MODALITIES
from guidance.session.console import progress_line
from guidance.workflows import evaluate as wf

__all__ = ["print_report", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure a segmentation model (held-out + real images)",
                       description=wf.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", choices=MODALITIES, required=True,
                   help="which model: ultrasound, fluoroscopy or CT(-fluoroscopy) slices")
    p.add_argument("--model", type=path_arg("input_file", Path), default=None, metavar="CARD",
                   help="model card JSON (default: the shipped model of the modality)")
    p.add_argument("--json", type=path_arg("output_file", special=("-",)), nargs="?", const="-",
                   default=None, metavar="FILE", dest="json_out",
                   help="write the report as JSON to FILE (no FILE: stdout)")
    p.add_argument("--png", type=path_arg("output_file", Path), default=None, metavar="FILE",
                   help="example predictions (default: <card>-examples.png beside --json "
                        "or in the current folder)")
    p.add_argument("--frames", type=int, default=400, help="held-out frames (default 400)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the simulated evaluation frames")
    p.add_argument("--backends", default="auto", help="backend chain, e.g. auto or "
                   "onnxruntime-cpu,torch-cpu")
    p.add_argument("--cache", type=path_arg("output_dir", Path, parents=True),
                   default=Path.home() / ".cache" / "guidance" / "datasets", metavar="DIR",
                   help="dataset cache folder")
    p.add_argument("--needle-free-frames", type=int, default=400,
                   help="ultrasound: frames of the simulated needle-free set (scanned "
                        "without the needle, with straight hard negatives)")
    p.add_argument("--images", type=path_arg("input_dir", Path), default=None, metavar="DIR",
                   help="a site's annotated DICOM images (needs --labels; see above)")
    p.add_argument("--labels", type=path_arg("input_dir", Path), default=None, metavar="DIR",
                   help="label maps NAME.png / NAME.npy and needle-free.txt for --images")
    p.add_argument("--slabs", type=int, default=100, metavar="N",
                   help="CT: also run the whole control-scan path (registration, batched "
                        "segmentation, 3D needle) on N held-out simulated slabs with a "
                        "needle, max(100, N) needle-free and N/3 after 10 mm / 3 deg of "
                        "patient motion (default 100; 0: slices only)")
    p.add_argument("--update-card", action="store_true", help="store the metrics in the card")
    p.set_defaults(func=run)


def print_report(report: wf.EvalReport, json_out: str | None) -> None:
    """The JSON on stdout with ``--json`` alone, what was written on stderr."""
    if json_out == "-":
        sys.stdout.write(report.text + "\n")
    for line in report.notes:
        print(line, file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    fields = {k: getattr(args, k) for k in wf.EvalRequest.__dataclass_fields__}
    report = wf.evaluate(wf.EvalRequest(**fields), progress_line)
    print_report(report, args.json_out)
    for line in wf.target_lines(report.metrics):
        print(line, file=sys.stderr)
    return 0
