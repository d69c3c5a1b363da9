"""The procedure timeline: one JSON line per control scan, written as it is processed.

Each line is complete and flushed to the disk (``fsync``) before the next scan, so after a
crash the file holds every scan up to the last one processed; a reader skips a torn last
line (:func:`read_timeline`). It is the basis of the verification report.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from guidance.ctscan.result import CtScanResult

__all__ = ["TimelineWriter", "read_timeline", "timeline_entry"]


def _num(v: float, nd: int = 2) -> float | None:
    return round(float(v), nd) if v is not None and math.isfinite(v) else None


def _vec(v: Any, nd: int = 2) -> list[float] | None:
    a = np.asarray(v, float)
    return [round(float(x), nd) for x in a] if a.size and np.all(np.isfinite(a)) else None


def timeline_entry(result: CtScanResult, state: str, reasons: list[str] | tuple[str, ...],
                   t_s: float) -> dict[str, Any]:
    """One scan's line: time, scan number, tip and axis in the planning CT, depths,
    distance to target, deviation, clearance per structure, level, motion, state."""
    d = result.decision
    entry: dict[str, Any] = {
        "wall_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()),
        "t_s": round(t_s, 3), "scan": result.scan_number,
        "slices": int(result.slab.voxels.shape[0]),
        "slice_mm": _num(float(result.slab.spacing_mm[2])),
        "needle_found": bool(result.needle.found),
        "tip_in_slab": bool(result.needle.tip_in_slab),
        "needle": result.needle.message,
        "tip_ct_lps": _vec(result.tip_ct_lps), "axis_ct_lps": _vec(result.axis_ct_lps, 4),
        "depth_to_target_mm": _num(result.depth_to_target_mm),
        "depth_to_structure_mm": (_num(result.depth_to_structure_mm)
                                  if math.isfinite(result.depth_to_structure_mm) else
                                  ("none ahead" if result.depth_to_structure_mm == math.inf
                                   else None)),
        "structure_ahead": str(result.structure_ahead),
        "level": d.level.name if d is not None else "NONE",
        "state": state, "reasons": list(reasons),
        "motion": result.motion.to_json() if result.motion is not None else None,
        "ms": {"segment": _num(result.seg_ms, 1), "fit": _num(result.fit_ms, 1),
               "registration": _num(result.registration_ms, 1)},
    }
    if d is not None:
        entry.update({
            "tip_to_target_mm": _num(d.tip_to_target_mm),
            "lateral_offset_mm": _num(d.lateral_offset_mm),
            "angle_to_plan_deg": _num(d.angle_deg),
            "decision": d.text(),
            "clearances": {c.structure: {"mm": _num(c.clearance_mm),
                                         "margin_mm": _num(c.margin_mm),
                                         "at_least": bool(c.capped)}
                           for c in d.clearances},
        })
    return entry


class TimelineWriter:
    """Appends scan lines to ``path`` (JSON Lines), each flushed and synced.

    Args:
        path: the file (created with its folder; appended to when it exists).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.lines = 0

    def append(self, entry: dict[str, Any]) -> None:
        """Write one line now (``OSError`` is raised to the caller, who logs it)."""
        line = json.dumps(entry, allow_nan=False, separators=(",", ":")) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
            self.lines += 1


def read_timeline(path: str | Path) -> list[dict[str, Any]]:
    """The scans of a timeline file; a torn last line (a crash mid-write) is skipped,
    a damaged line elsewhere raises ``ValueError`` naming the file and line."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    out: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if n == len(lines):
                break  # the torn last line of a crash (no newline yet)
            raise ValueError(f"{path}: line {n} is not JSON ({e.msg})") from e
    return out
