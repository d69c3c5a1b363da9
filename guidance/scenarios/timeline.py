"""The safety level's changes during a demo (:class:`SafetyTimeline`)."""

from __future__ import annotations

import math
import threading
from typing import Any

from guidance.pipeline.frame import FrameResult
from guidance.session import LiveSession

__all__ = ["SafetyTimeline", "rounded_mm"]

_RANK = {"NONE": 0, "INFO": 1, "CAUTION": 2, "DANGER": 3}


def rounded_mm(v: float) -> float | None:
    """``v`` (mm) rounded to 0.01 mm for JSON, None when it is not finite."""
    return round(float(v), 2) if math.isfinite(v) else None


class SafetyTimeline:
    """The safety level's changes during the demo, with their reason: recorded on the
    pipeline thread (an append), printed and saved afterwards. Each change also forces
    an annotated PNG, so the pictures show every warning and its end.

    Installed on ``session.pipeline.on_result`` (the previous callback still runs first);
    :meth:`to_json` and :meth:`text` may be called from any thread."""

    def __init__(self, session: LiveSession) -> None:
        self._session = session
        self._inner = session.pipeline.on_result
        self._last = "NONE"
        self._lock = threading.Lock()
        self.changes: list[dict[str, Any]] = []
        self.decisions = 0
        #: the newest finite tip-to-target the loop measured (mm), NaN before one
        self.last_tip_to_target_mm = math.nan
        session.pipeline.on_result = self._on_result

    def _on_result(self, result: FrameResult, rgb: Any) -> None:
        if self._inner is not None:
            self._inner(result, rgb)
        d = result.decision
        if d is None:
            return
        self.decisions += 1
        if math.isfinite(d.tip_to_target_mm):
            self.last_tip_to_target_mm = float(d.tip_to_target_mm)
        level = d.level.name
        if level == self._last:
            return
        with self._lock:
            self._last = level
            self.changes.append({
                "t_s": round(result.t_s, 2), "level": level, "structure": d.structure,
                "clearance_mm": rounded_mm(d.clearance_mm),
                "margin_mm": rounded_mm(d.margin_mm), "message": d.message})
        writer = self._session.writer
        if writer is not None and rgb is not None:
            writer.offer(result, rgb, force=True)

    def to_json(self) -> list[dict[str, Any]]:
        """The changes so far: ``t_s`` (s of the session), ``level``, ``structure``,
        ``clearance_mm`` and ``margin_mm`` (None when not finite), ``message``."""
        with self._lock:
            return list(self.changes)

    def text(self) -> str:
        """The changes, one line each (level, structure, distance and margin)."""
        rows = self.to_json()
        if not rows:
            return ("safety timeline: no decision was made" if not self.decisions else
                    f"safety timeline: no warning ({self.decisions} decisions, all NONE)")
        lines = ["safety timeline (level changes):"]
        for r in rows:
            what = r["message"] if r["level"] not in ("NONE",) else "clear"
            lines.append(f"  t={r['t_s']:6.2f}s {r['level']:7s} {what}")
        worst = max(rows, key=lambda r: _RANK.get(r["level"], 0))["level"]
        final = rows[-1]["level"]
        lines.append(f"  worst {worst}, final {final}"
                     + (" (the warning cleared)" if _RANK.get(final, 0) < _RANK.get(worst, 0)
                        else ""))
        return "\n".join(lines)
