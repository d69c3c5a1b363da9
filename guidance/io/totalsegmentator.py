"""Labels for a CT by running TotalSegmentator (an optional, separately installed tool).

``guidance plan --labels totalsegmentator`` runs ``TotalSegmentator -i CT -o OUT --ml``
(one multi-label NIfTI) and names the labels with TotalSegmentator's own class map
(``totalsegmentator.map_to_binary.class_map["total"]``). The result is cached beside
the CT's hash, so planning again does not segment again. TotalSegmentator and its model
weights (downloaded by it on first use) are the user's install; without it the command
says how to install it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

from guidance.io.validate import InputError

__all__ = ["TotalSegmentatorError", "segment_ct"]

log = logging.getLogger(__name__)

INSTALL_HINT = ("TotalSegmentator is not installed: `pip install TotalSegmentator` (an "
                "optional extra; it downloads its model weights, about 1-2 GB, on first "
                "use, and is much faster with an NVIDIA GPU), or give a label map file "
                "(NIfTI, NRRD or DICOM SEG) with --labels")


class TotalSegmentatorError(InputError):
    """TotalSegmentator missing or failing; the text says what to do."""


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "guidance" / "totalsegmentator"


def _key(ct_path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(f for f in ct_path.rglob("*") if f.is_file()) if ct_path.is_dir() \
        else [ct_path]
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:24]


def class_names() -> dict[int, str]:
    """TotalSegmentator's ``total`` task: label id -> name (from the installed package)."""
    try:
        from totalsegmentator.map_to_binary import class_map
    except ImportError as e:
        raise TotalSegmentatorError(f"{INSTALL_HINT} ({e})") from e
    return {int(k): str(v) for k, v in class_map["total"].items()}


def _write_names(path: Path, names: dict[int, str]) -> None:
    import csv

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "structure"])
        for k in sorted(names):
            w.writerow([k, names[k]])


def segment_ct(ct_path: str | Path, *, timeout_s: float = 3600.0) -> tuple[Path, Path]:
    """The multi-label NIfTI TotalSegmentator makes of ``ct_path`` (a NIfTI file or a
    DICOM folder), and a label-names CSV (``id,structure``) beside it, both cached: a
    plan records them as its labels and label names (so ``run --plan`` rebuilds the
    same structures).

    Raises:
        TotalSegmentatorError: not installed (with how to install it), or it failed
            (its last output line), or wrote nothing.
    """
    exe = shutil.which("TotalSegmentator")
    if exe is None:
        raise TotalSegmentatorError(INSTALL_HINT)
    names = class_names()
    src = Path(ct_path)
    out = _cache_dir() / f"{_key(src)}.nii.gz"
    names_csv = out.with_name(out.name.replace(".nii.gz", ".csv"))
    if out.is_file():
        log.info("TotalSegmentator labels from the cache: %s", out)
        _write_names(names_csv, names)
        return out, names_csv
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial.nii.gz")
    log.warning("running TotalSegmentator on %s (minutes on a CPU) ...", src)
    try:
        r = subprocess.run([exe, "-i", str(src), "-o", str(tmp), "--ml"], capture_output=True,
                           text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TotalSegmentatorError(f"TotalSegmentator on {src} failed: {e}") from e
    if r.returncode != 0 or not tmp.is_file():
        last = (r.stderr.strip() or r.stdout.strip() or "no output").splitlines()[-1]
        raise TotalSegmentatorError(
            f"TotalSegmentator on {src} failed (exit {r.returncode}): {last}")
    tmp.replace(out)
    _write_names(names_csv, names)
    return out, names_csv
