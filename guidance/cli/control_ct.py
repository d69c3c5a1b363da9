"""``guidance control-ct``: write a simulated control CT (a DICOM series, or NIfTI for
``*.nii[.gz]``) of the real CT with a steel needle from ``--entry`` to ``--tip`` (LPS mm
of the real CT; the needle goes on 30 mm beyond the entry, outside the skin)."""

from __future__ import annotations

import argparse
from pathlib import Path

from guidance.cli.common import path_arg, positive_float

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("control-ct", help="write a simulated control CT with a needle",
                       description=__doc__)
    p.add_argument("--entry", required=True, metavar="X,Y,Z", help="skin entry, LPS mm")
    p.add_argument("--tip", required=True, metavar="X,Y,Z", help="needle tip, LPS mm")
    p.add_argument("--out", required=True, type=path_arg("output_dir", Path), metavar="DIR",
                   help="output folder (DICOM series) or *.nii / *.nii.gz file")
    p.add_argument("--diameter-mm", type=positive_float, default=1.1,
                   help="needle outer diameter, mm (default 1.1, ~19 G)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the streaks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from guidance.scenarios.control_ct import write_needle_control_ct

    ct = write_needle_control_ct(args.entry, args.tip, args.out, args.diameter_mm, args.seed)
    print(f"control-ct: needle {ct.needle_mm:.1f} mm, tip voxel {ct.tip_ijk}, written to "
          f"{ct.path}", flush=True)
    return 0
