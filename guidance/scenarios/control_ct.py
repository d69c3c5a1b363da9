"""A simulated control CT: the real CT with a steel needle from an entry to a tip (LPS
mm of the real CT; the needle goes on 30 mm beyond the entry, outside the skin), written
as a DICOM series or NIfTI."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from guidance.scenarios.errors import ScenarioError

__all__ = ["ControlCt", "parse_lps_point", "write_needle_control_ct"]


@dataclass(frozen=True)
class ControlCt:
    """A control CT written: the needle's length entry -> tip (mm), the tip's voxel
    (i, j, k) of the CT, rounded, and where it was written (the series folder or file)."""

    needle_mm: float
    tip_ijk: list[int]
    path: Path


def parse_lps_point(text: str, what: str) -> npt.NDArray[np.float64]:
    """``X,Y,Z`` (LPS mm) as a (3,) array; ``what`` names the option in the refusal.

    Raises:
        ScenarioError: not 3 finite numbers.
    """
    try:
        v = np.array([float(x) for x in text.split(",")], dtype=np.float64)
    except ValueError:
        raise ScenarioError(f"{what} {text!r}: expected X,Y,Z in LPS mm") from None
    if v.shape != (3,) or not all(math.isfinite(x) for x in v):
        raise ScenarioError(f"{what} {text!r}: expected X,Y,Z in LPS mm (3 finite numbers)")
    return v


def write_needle_control_ct(entry: str, tip: str, out: Path, diameter_mm: float = 1.1,
                            seed: int = 0) -> ControlCt:
    """Write the real CT with a needle of ``diameter_mm`` (at most 5) from ``entry`` to
    ``tip`` (``X,Y,Z`` in LPS mm, as the options ``--entry`` and ``--tip`` give them) in
    ``out`` (a folder: a DICOM series; ``*.nii[.gz]``: NIfTI); ``seed`` seeds the streaks.

    Raises:
        ScenarioError: a point that is not X,Y,Z, entry and tip less than 1 mm apart, too
            thick a needle, a tip outside the CT, the real CT not installed.
    """
    from guidance.data import RealDataMissing, load_real_ct
    from guidance.sim.control_ct import insert_needle, write_control_ct

    entry_lps, tip_lps = parse_lps_point(entry, "--entry"), parse_lps_point(tip, "--tip")
    if np.linalg.norm(tip_lps - entry_lps) < 1.0:
        raise ScenarioError("--entry and --tip must be at least 1 mm apart")
    if diameter_mm > 5:
        raise ScenarioError(f"--diameter-mm {diameter_mm}: at most 5 mm")
    try:
        ct = load_real_ct()
    except RealDataMissing as e:
        raise ScenarioError(f"the real CT is not installed: {e}") from e
    size = np.array(ct.size_ijk)
    ijk = ct.lps_to_ijk_points(tip_lps[None])[0]
    if np.any(ijk < -0.5) or np.any(ijk > size - 0.5):
        raise ScenarioError(f"--tip {tip}: outside the CT (voxel {np.round(ijk, 1).tolist()}"
                            f" of {size.tolist()})")
    try:
        vol = insert_needle(ct, entry_lps, tip_lps, diameter_mm=diameter_mm,
                            rng=np.random.default_rng(seed))
    except ValueError as e:
        raise ScenarioError(str(e)) from e
    written = write_control_ct(vol, out)
    return ControlCt(float(np.linalg.norm(tip_lps - entry_lps)),
                     np.round(ijk).astype(int).tolist(), Path(written))
