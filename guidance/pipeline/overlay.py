"""The annotated frame (no Qt): display mapping, labels, needle, plan, banner.

Used by the headless loop (PNG output, benchmark) and drawn under the Qt overlay's
widgets. One RGB buffer per frame size, reused.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from guidance.pipeline.frame import FrameResult
from guidance.records import GuidanceState, WarningLevel

__all__ = ["LABEL_COLOURS", "LEVEL_COLOURS", "OUTLINE_COLOUR", "OverlayComposer", "wrap_text"]

#: RGB per label id (1 needle, 2 nerve, 3 vessel / vertebra).
LABEL_COLOURS = {1: (255, 220, 0), 2: (255, 0, 255), 3: (0, 160, 255)}
#: Banner colour (RGB) per warning level.
LEVEL_COLOURS = {
    WarningLevel.NONE: (0, 120, 0),
    WarningLevel.INFO: (0, 90, 180),
    WarningLevel.CAUTION: (230, 150, 0),
    WarningLevel.DANGER: (210, 0, 0),
}
STALE_COLOUR = (128, 128, 128)
#: RGB of the projected structure outlines (fluoroscopy with a C-arm calibration).
OUTLINE_COLOUR = (255, 140, 0)


def wrap_text(text: str, width_px: int, scale: float) -> list[str]:
    """Break ``text`` at spaces into lines no wider than ``width_px`` pixels in OpenCV's
    Hershey simplex font at ``scale`` (thickness 1); a single word wider than that is
    broken inside. Nothing is dropped: the lines hold every character of ``text`` in
    order, only the spaces where a line ends are left out.

    Returns:
        At least one line.
    """
    def width(s: str) -> int:
        return int(cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0])

    limit = max(int(width_px), 1)
    lines: list[str] = []
    line = ""
    for word in text.split():
        while width(word) > limit and len(word) > 1:  # a word wider than the banner
            cut = len(word) - 1
            while cut > 1 and width(word[:cut]) > limit:
                cut -= 1
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:cut])
            word = word[cut:]
        trial = f"{line} {word}" if line else word
        if line and width(trial) > limit:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    return lines


class OverlayComposer:
    """Compose the annotated RGB frame for a :class:`FrameResult`.

    Args:
        plan: optional (entry_lps, target_lps) to project into in-plane frames.
    """

    def __init__(self) -> None:
        self._rgb: np.ndarray | None = None
        self._gray8: np.ndarray | None = None
        self.plan: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None

    def compose(self, result: FrameResult, latency_ms: float | None = None) -> np.ndarray:
        """Draw the frame and its annotations; returns (rows, cols, 3) uint8 (a reused
        buffer: copy it to keep it)."""
        img = result.image
        if img is None:
            rgb = self._buffer((256, 256))
            rgb.fill(40)
            self._banner(rgb, result)
            return rgb
        plane = img.voxels[img.voxels.shape[0] // 2]
        if plane.ndim == 3:
            plane = plane.mean(axis=2)
        rgb = self._buffer(plane.shape[:2])
        assert self._gray8 is not None
        self._to_display(plane, self._gray8)
        cv2.cvtColor(self._gray8, cv2.COLOR_GRAY2RGB, dst=rgb)
        if result.labels is not None:
            for lab, colour in LABEL_COLOURS.items():
                m = (result.labels == lab).astype(np.uint8)
                if m.any():
                    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                    cv2.drawContours(rgb, contours, -1, colour, 1)
        self._outlines(rgb, result)
        self._plan(rgb, result)
        n = result.needle
        if n is not None and n.in_image:
            hub = (round(n.hub_ij[0]), round(n.hub_ij[1]))
            tip = (round(n.tip_ij[0]), round(n.tip_ij[1]))
            cv2.line(rgb, hub, tip, (0, 255, 0), 1, cv2.LINE_AA)
            cv2.circle(rgb, tip, 5, (0, 255, 0), 2, cv2.LINE_AA)
        self._banner(rgb, result, latency_ms)
        return rgb

    def _buffer(self, shape: tuple[int, int]) -> np.ndarray:
        if self._rgb is None or self._rgb.shape[:2] != shape:
            self._rgb = np.empty((*shape, 3), np.uint8)
            self._gray8 = np.empty(shape, np.uint8)
        return self._rgb

    @staticmethod
    def _to_display(plane: np.ndarray, out: np.ndarray) -> None:
        if plane.dtype == np.uint8:
            out[...] = plane
            return
        sample = plane[::8, ::8]
        lo, hi = np.percentile(sample, [1, 99])
        scale = 255.0 / max(float(hi - lo), 1e-6)
        cv2.convertScaleAbs(
            plane.astype(np.float32, copy=False), dst=out, alpha=scale, beta=-float(lo) * scale
        )

    @staticmethod
    def _outlines(rgb: np.ndarray, result: FrameResult) -> None:
        """The plan's structures where the C-arm calibration projects them, named."""
        h = rgb.shape[0]
        scale = max(0.3, h / 1400.0)
        for o in result.outlines:
            polys = [np.round(p).astype(np.int32).reshape(-1, 1, 2) for p in o.polygons]
            cv2.polylines(rgb, polys, True, OUTLINE_COLOUR, 1, cv2.LINE_AA)
            top = min(o.polygons, key=lambda p: float(p[:, 1].min()))
            x, y = top[np.argmin(top[:, 1])]
            cv2.putText(rgb, o.structure, (int(x), max(int(y) - 3, 8)),
                        cv2.FONT_HERSHEY_SIMPLEX, scale, OUTLINE_COLOUR, 1, cv2.LINE_AA)

    def _plan(self, rgb: np.ndarray, result: FrameResult) -> None:
        """The plan where the frame's placement in the planning CT puts it (a slice: only
        when the path lies within 5 mm of its plane; a projection: always)."""
        pl = result.placement
        if self.plan is None or pl is None:
            return
        ij, off = pl.project(np.stack(self.plan))
        if not np.all(np.isfinite(ij)) or np.any(np.abs(ij) > 1e5):
            return
        if pl.is_projection or np.all(np.abs(off) < 5.0):
            a = (round(ij[0, 0]), round(ij[0, 1]))
            b = (round(ij[1, 0]), round(ij[1, 1]))
            cv2.line(rgb, a, b, (0, 200, 255), 1, cv2.LINE_AA)
            cv2.drawMarker(rgb, b, (0, 200, 255), cv2.MARKER_CROSS, 12, 2)

    @staticmethod
    def _banner(rgb: np.ndarray, result: FrameResult, latency_ms: float | None = None) -> None:
        h, w = rgb.shape[:2]
        line_h = max(18, h // 14)
        stale = result.state in (GuidanceState.STALE, GuidanceState.NO_GUIDANCE)
        colour = (
            STALE_COLOUR if result.state == GuidanceState.STALE else LEVEL_COLOURS[result.level]
        )
        worst = result.warnings[0] if result.warnings else None
        if result.state == GuidanceState.STALE:
            text = "STALE - " + (result.reasons[0] if result.reasons else "input too old")
        elif worst is not None:
            text = f"{worst.level.name}: {worst.message}"
            if result.state != GuidanceState.OK:  # uncertain guidance is shown as such
                text += f" | {result.state.name}"
                if result.reasons:
                    text += f": {result.reasons[0]}"
        else:
            text = result.state.name
            if result.reasons and (result.state != GuidanceState.OK
                                   or result.decision is None):
                text += f": {result.reasons[0]}"
        if result.state != GuidanceState.STALE and len(result.reasons) > 1:
            text += f" (+{len(result.reasons) - 1} more)"
        scale = line_h / 40.0
        # Never cut a warning: the banner takes as many lines as its text needs.
        rows = wrap_text(text, w - 8, scale)
        bh = line_h * len(rows)
        cv2.rectangle(rgb, (0, 0), (w - 1, min(bh, h - 1)), colour, -1)
        for k, row in enumerate(rows):
            cv2.putText(rgb, row, (4, int(line_h * (k + 0.75))), cv2.FONT_HERSHEY_SIMPLEX,
                        scale, (255, 255, 255), 1, cv2.LINE_AA)
        lines = []
        d = result.decision
        if d is not None and not stale:
            if math.isfinite(d.tip_to_target_mm):
                lines.append(f"tip-target {d.tip_to_target_mm:5.1f} mm")
            if math.isfinite(d.lateral_offset_mm):
                lines.append(f"off-plan {d.lateral_offset_mm:4.1f} mm")
            lines.append(f"margin +{d.widening.total_mm:.1f} mm")
        if latency_ms is not None:
            lines.append(f"latency {latency_ms:4.0f} ms")
        for k, line in enumerate(lines):
            cv2.putText(
                rgb,
                line,
                (4, h - 6 - k * int(line_h * 0.8)),
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
        if stale:
            # An unmistakable frame around the whole view when nothing current is shown.
            cv2.rectangle(rgb, (0, 0), (w - 1, h - 1), colour, max(3, w // 100))
