"""What the live view says, computed from the newest result and the clock (no Qt).

Kept apart from the drawing so that the rules -- when the view is STALE, which warning
the banner names, which numbers are blanked -- are plain functions with tests. The
age shown is the age of the displayed frame on the local monotonic clock (frame fully
received -> now), so a hung pipeline turns the view STALE by itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from guidance.pipeline.frame import FrameResult
from guidance.records import GuidanceState, SafetyWarning, WarningLevel

__all__ = [
    "DEFAULT_LABEL_NAMES",
    "LiveViewModel",
    "Metric",
    "StreamStatus",
    "build_view_model",
    "label_names_of",
    "stream_state",
]

#: Class names when the result carries none (the classical detector: 1 = needle).
DEFAULT_LABEL_NAMES: dict[int, str] = {1: "needle"}


@dataclass(frozen=True)
class StreamStatus:
    """One input stream as the status panel shows it.

    Attributes:
        name: device name (``Image_Reference``, ``NeedleToReference``...).
        message_type: ``IMAGE``, ``TRANSFORM``...
        age_s: seconds since its newest message arrived (local monotonic clock).
        received: messages received; dropped: replaced before being used.
        state: ``LIVE`` (age within the stale threshold), ``LATE`` (up to 4x) or ``LOST``.
    """

    name: str
    message_type: str
    age_s: float
    received: int
    dropped: int
    state: str


def stream_state(age_s: float, stale_after_s: float) -> str:
    """``LIVE`` / ``LATE`` / ``LOST`` for a stream whose newest message is ``age_s`` old."""
    if not age_s <= stale_after_s:
        return "LATE" if age_s <= 4 * stale_after_s else "LOST"
    return "LIVE"


@dataclass(frozen=True)
class Metric:
    """One number of the side panel: ``label value unit``; ``value`` is NaN when not
    known (shown as a dash, never as a number)."""

    label: str
    value: float
    unit: str
    level: WarningLevel = WarningLevel.NONE
    #: the value is a bound: the distance is at least ``value`` (the distance fields'
    #: cap), shown as ``> 30``.
    capped: bool = False

    def text(self) -> str:
        """The number as shown: ``12.3``, ``> 30`` when capped, ``-`` when unknown."""
        if not math.isfinite(self.value):
            return "-"
        return f"> {self.value:g}" if self.capped else f"{self.value:.1f}"


@dataclass(frozen=True)
class LiveViewModel:
    """Everything the live view draws besides the image itself.

    Attributes:
        stale: the image and numbers are not current (shown dimmed, hatched, STALE).
        age_s: age of the displayed frame, s (inf when there is none).
        state: the effective state (``STALE`` whenever ``stale``).
        level: worst warning level of the current result (NONE when stale).
        title: banner headline (``DANGER``, ``STALE``, ``NO GUIDANCE``...).
        text: banner text naming the structure and the distance, or the reason.
        more: further warnings, one line each.
        metrics: tip-to-target, offset, angle, clearances (blank when stale).
        streams: per-stream status.
        latency_ms: display latency of the frame (received -> drawn), ms.
        fps: frames shown per second.
    """

    stale: bool
    age_s: float
    state: GuidanceState
    level: WarningLevel
    title: str
    text: str
    more: tuple[str, ...]
    metrics: tuple[Metric, ...]
    streams: tuple[StreamStatus, ...]
    latency_ms: float
    fps: float


def label_names_of(result: FrameResult | None) -> dict[int, str]:
    """Class id -> name for the result's label map.

    Reads ``result.label_names`` when the result carries it (a sequence indexed by id,
    ``0`` = background, or a mapping); otherwise :data:`DEFAULT_LABEL_NAMES`.
    """
    names = getattr(result, "label_names", None) if result is not None else None
    if isinstance(names, Mapping):
        return {int(k): str(v) for k, v in names.items() if int(k) != 0}
    if isinstance(names, Sequence) and not isinstance(names, str):
        return {i: str(n) for i, n in enumerate(names) if i != 0}
    return dict(DEFAULT_LABEL_NAMES)


def _worst_first(warnings: Sequence[SafetyWarning]) -> list[SafetyWarning]:
    return sorted(warnings, key=lambda w: (-int(w.level),
                                           w.distance_mm if math.isfinite(w.distance_mm)
                                           else math.inf))


def _metrics(result: FrameResult, stale: bool) -> tuple[Metric, ...]:
    """Tip to target, offset, angle, the margin used and the closest clearances, from the
    result's safety decision (blank -- NaN -- when stale or when there is none)."""
    nan = math.nan
    d = result.decision
    levels: dict[str, WarningLevel] = {}
    for w in result.warnings:
        levels[w.structure] = max(levels.get(w.structure, WarningLevel.NONE), w.level)

    def val(v: float | None) -> float:
        return nan if stale or v is None or not math.isfinite(v) else float(v)

    out = [Metric("tip to target", val(d.tip_to_target_mm if d else None), "mm",
                  levels.get("target", WarningLevel.NONE)),
           Metric("off plan", val(d.lateral_offset_mm if d else None), "mm",
                  levels.get("plan", WarningLevel.NONE)),
           Metric("angle to plan", val(d.angle_deg if d else None), "deg",
                  levels.get("plan", WarningLevel.NONE)),
           Metric("margin widened by", val(d.widening.total_mm if d else None), "mm")]
    for c in (d.clearances if d is not None else ()):
        out.append(Metric(c.structure, nan if stale else float(c.clearance_mm), "mm",
                          WarningLevel.NONE if stale else levels.get(c.structure,
                                                                      WarningLevel.NONE),
                          capped=c.capped))
    return tuple(out)


def build_view_model(
    result: FrameResult | None,
    shown: FrameResult | None,
    now_ns: int,
    stale_after_s: float,
    streams: Sequence[StreamStatus] = (),
    fps: float = math.nan,
) -> LiveViewModel:
    """The view model at time ``now_ns`` (local ``time.monotonic_ns()``).

    Args:
        result: the newest result of the pipeline (may be a STALE report without an
            image), or ``None`` before the first one.
        shown: the newest result that carried an image (what is displayed).
        now_ns: local monotonic time, ns.
        stale_after_s: ``ingest.stale_after_s`` of the pipeline configuration.
        streams: per-stream status for the panel.
        fps: frames shown per second.
    """
    age_s = (now_ns - shown.received_ns) * 1e-9 if shown is not None and shown.received_ns \
        else math.inf
    if result is not None and result.kind == "pose" and result.received_ns:
        # Navigation from poses alone: the newest pose is what must be current.
        age_s = (now_ns - result.received_ns) * 1e-9
        shown = shown if shown is not None else result
    stale = (result is None or shown is None or result.state == GuidanceState.STALE
             or not age_s <= stale_after_s)
    latency_ms = age_s * 1e3 if math.isfinite(age_s) else math.nan
    cur = result if result is not None and (result.image is not None
                                            or result.kind == "pose") else shown
    if stale:
        what = "needle pose" if shown is not None and shown.kind == "pose" else "frame"
        if shown is None:
            why = "no frame received yet"
        elif result is not None and result.state == GuidanceState.STALE and result.reasons \
                and age_s <= stale_after_s:
            why = result.reasons[0]  # e.g. the needle pose is too old
        else:
            why = f"no new {what} for {age_s:.1f} s"
        text = f"{why} - image and numbers are NOT current"
        metrics = _metrics(cur, True) if cur is not None else ()
        return LiveViewModel(True, age_s, GuidanceState.STALE, WarningLevel.NONE, "STALE",
                             text, (), metrics, tuple(streams), latency_ms, fps)
    assert result is not None and cur is not None
    warnings = _worst_first(result.warnings)
    more = tuple(f"{w.level.name}: {w.message}" for w in warnings[1:]
                 if w.level >= WarningLevel.INFO)
    if warnings and warnings[0].level > WarningLevel.NONE:
        w = warnings[0]
        title = w.level.name
        text = w.message if w.structure in w.message else f"{w.structure}: {w.message}"
        level = w.level
        if result.state != GuidanceState.OK:
            title += f" ({result.state.name.replace('_', ' ')})"
    else:
        level = WarningLevel.NONE
        title = result.state.name.replace("_", " ")
        if result.state == GuidanceState.OK:
            text = "no warning"
        else:
            text = "; ".join(result.reasons) or result.state.name
    return LiveViewModel(False, age_s, result.state, level, title, text, more,
                         _metrics(result, False), tuple(streams), latency_ms, fps)
