"""What a live session writes besides its OpenIGTLink outputs: annotated PNGs (off the
frame path) and ``summary.json``."""

from __future__ import annotations

import json
import math
import queue
import resource
import threading
from pathlib import Path
from typing import Any

import numpy as np

from guidance.pipeline.frame import FrameResult
from guidance.pipeline.loop import Pipeline
from guidance.pipeline.stats import percentiles

__all__ = ["FrameWriter", "summary_dict", "write_summary"]


class FrameWriter:
    """Writes annotated frames as PNG off the frame path (one every ``every_s`` s).

    The pipeline thread only copies the overlay into a bounded queue; a full queue
    drops the PNG, never delays the frame.
    """

    def __init__(self, out_dir: Path, every_s: float = 1.0, max_frames: int = 60) -> None:
        self.out_dir = out_dir
        self.every_s = every_s
        self.max_frames = max_frames
        self.written: list[Path] = []
        self._last_t = -1e9
        self._q: queue.Queue[tuple[str, np.ndarray] | None] = queue.Queue(maxsize=4)
        self._thread = threading.Thread(target=self._loop, name="png-writer", daemon=True)
        self._thread.start()
        self._count = 0

    def offer(self, result: FrameResult, rgb: np.ndarray, force: bool = False) -> None:
        """Queue this frame if it is time for the next PNG (or ``force``: always, even
        past ``max_frames``, e.g. every CT control scan)."""
        if self._count >= self.max_frames and not force:
            return
        if not force and result.t_s - self._last_t < self.every_s:
            return
        self._last_t = result.t_s
        name = (
            f"frame_{self._count:03d}_{result.state.name.lower()}_{result.level.name.lower()}.png"
        )
        try:
            self._q.put_nowait((name, rgb.copy()))
            self._count += 1
        except queue.Full:
            pass

    def _loop(self) -> None:
        import cv2

        while True:
            item = self._q.get()
            if item is None:
                return
            name, rgb = item
            path = self.out_dir / name
            cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            self.written.append(path)

    def close(self) -> None:
        """Write what is queued."""
        self._q.put(None)
        self._thread.join(10.0)


def summary_dict(
    pipeline: Pipeline, frames_received: int, wall_s: float, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``summary.json`` content."""
    stats = pipeline.stats
    stages = {}
    for name in ("ingest", "preprocess", "registration", "segment", "needle", "safety",
                 "output", "overlay"):
        v = stats.values(name)
        if v.size:
            p = percentiles(v)
            stages[name] = {"p50": p["p50"], "p99": p["p99"]}
    e2e = percentiles(stats.values("end_to_end"))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    last = pipeline.last_result
    tools = pipeline.navigator.tools
    out: dict[str, Any] = {
        "frames_received": frames_received,
        "frames_processed": pipeline.frames_processed,
        "frames_dropped": pipeline.frames_dropped,
        "pose_updates": pipeline.poses_processed,
        "stale_reports": pipeline.stale_reports,
        "wall_s": round(wall_s, 3),
        "latency_ms": {k: e2e[k] for k in ("p50", "p95", "p99", "max")},
        "stages_ms": stages,
        "states": dict(pipeline.states),
        "reasons": dict(pipeline.reason_counts),
        "decisions": dict(pipeline.decisions),
        "warnings": [w.to_json() for w in pipeline.warnings_log],
        "last_state": None if last is None else {
            "state": last.state.name,
            "reasons": [r.to_json() for r in last.state_reasons],
            "decision": None if last.decision is None else last.decision.to_json()},
        "calibrations": list(pipeline.navigator.setup.files),
        "room": pipeline.navigator.setup.describe(),
        "transforms": list(pipeline.navigator.graph.names()),
        "pose_rejections": dict(tools.rejections),
        "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1),
        "last_error": pipeline.last_error,
    }
    ct = pipeline.ct_path
    if ct.processor is not None and ct.processor.scans:
        out["ct_scans"] = {
            "processed": ct.processor.scans,
            "timeline": str(ct.timeline.path) if ct.timeline is not None else None,
            "timeline_lines": ct.timeline.lines if ct.timeline is not None else 0,
            "timeline_errors": ct.timeline_errors}
    if extra:
        out.update(extra)
    return out


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Write JSON (NaN as null)."""

    def clean(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    path.write_text(json.dumps(clean(summary), indent=2) + "\n")
