"""``guidance control-ct``: write a simulated control CT (a DICOM series, or NIfTI for
``*.nii[.gz]``) of the real CT with a steel needle from ``--entry`` to ``--tip`` (LPS mm
of the real CT; the needle goes on 30 mm beyond the entry, outside the skin)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from guidance.cli.common import path_arg, positive_float
from guidance.cli.main import UsageError

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


def _xyz(text: str, what: str) -> np.ndarray:
    try:
        v = np.array([float(x) for x in text.split(",")], dtype=np.float64)
    except ValueError:
        raise UsageError(f"{what} {text!r}: expected X,Y,Z in LPS mm") from None
    if v.shape != (3,) or not all(math.isfinite(x) for x in v):
        raise UsageError(f"{what} {text!r}: expected X,Y,Z in LPS mm (3 finite numbers)")
    return v


def run(args: argparse.Namespace) -> int:
    from guidance.data import RealDataMissing, load_real_ct
    from guidance.sim.control_ct import insert_needle, write_control_ct

    entry, tip = _xyz(args.entry, "--entry"), _xyz(args.tip, "--tip")
    if np.linalg.norm(tip - entry) < 1.0:
        raise UsageError("--entry and --tip must be at least 1 mm apart")
    if args.diameter_mm > 5:
        raise UsageError(f"--diameter-mm {args.diameter_mm}: at most 5 mm")
    try:
        ct = load_real_ct()
    except RealDataMissing as e:
        raise UsageError(f"the real CT is not installed: {e}") from e
    size = np.array(ct.size_ijk)
    ijk = ct.lps_to_ijk_points(tip[None])[0]
    if np.any(ijk < -0.5) or np.any(ijk > size - 0.5):
        raise UsageError(f"--tip {args.tip}: outside the CT (voxel {np.round(ijk, 1).tolist()}"
                         f" of {size.tolist()})")
    try:
        vol = insert_needle(ct, entry, tip, diameter_mm=args.diameter_mm,
                            rng=np.random.default_rng(args.seed))
    except ValueError as e:
        raise UsageError(str(e)) from e
    out = write_control_ct(vol, args.out)
    print(f"control-ct: needle {np.linalg.norm(tip - entry):.1f} mm, tip voxel "
          f"{np.round(ijk).astype(int).tolist()}, written to {out}", flush=True)
    return 0
