"""The annotated frame (no Qt): display mapping, labels, needle, plan, banner.

Used by the headless loop (PNG output, benchmark) and drawn under the Qt overlay's
widgets. One RGB buffer per frame size, reused.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
import scipy.linalg

from guidance.figures import (
    DisplayFlip,
    annotate,
    display_flip,
    structure_legend,
    structure_rgb,
)
from guidance.geometry import spacing_of
from guidance.pipeline.frame import FrameResult
from guidance.records import GuidanceState, WarningLevel

__all__ = [
    "DEGRADED_COLOUR",
    "LABEL_COLOURS",
    "LEVEL_COLOURS",
    "NEEDLE_COLOUR",
    "NO_GUIDANCE_COLOUR",
    "OUTLINE_COLOUR",
    "PLAN_COLOUR",
    "STALE_COLOUR",
    "Orientation",
    "OverlayComposer",
    "banner_colour",
    "display_orientation",
    "label_colour",
    "wrap_text",
]

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
#: Banner colours of the states that are not OK and carry no warning of their own: never
#: the colour of OK (:func:`banner_colour`). The live view's theme uses the same.
NO_GUIDANCE_COLOUR = (70, 50, 100)
DEGRADED_COLOUR = (120, 90, 20)
#: RGB of the projected structure outlines when a structure has no colour of its own
#: (each is drawn in :func:`guidance.figures.structure_rgb`).
OUTLINE_COLOUR = (255, 140, 0)
#: The plan (entry -> target) and the needle found on the frame.
PLAN_COLOUR = (0, 200, 255)
NEEDLE_COLOUR = (0, 255, 0)
#: The model's focus window (``segment.focus_px``): where it looked on this frame.
FOCUS_COLOUR = (150, 150, 150)


def label_colour(value: int, name: str) -> tuple[int, int, int]:
    """RGB of a label: the segmentation classes by :data:`LABEL_COLOURS` (1 needle, 2
    nerve, 3 vessel / vertebra), a plan structure (the navigation reslice) by its
    name."""
    if name in ("needle", "nerve", "vessel", "vertebra") and value in LABEL_COLOURS:
        return LABEL_COLOURS[value]
    return structure_rgb(name)


@dataclass(frozen=True)
class Orientation:
    """How a frame is shown: the flips (:class:`~guidance.figures.DisplayFlip`), the
    patient directions of the shown image's columns and rows (LPS), the pixel size for a
    scale bar (``None``: a projection)."""

    flip: DisplayFlip
    right_lps: npt.NDArray[np.float64]
    down_lps: npt.NDArray[np.float64]
    pixel_mm: float | None


def display_orientation(result: FrameResult) -> Orientation | None:
    """Where the frame's pixels lie in the patient, as the display shows them: a CT
    slab or the navigation reslice flipped as a DICOM viewer would show it; ultrasound
    as acquired (probe at the top); fluoroscopy through the C-arm calibration's
    projection (the detector's axes; no scale bar, the magnification varies with
    depth). ``None`` when the frame is not placed in the patient."""
    img = result.image
    if img is None:
        return None
    pl = result.placement
    if pl is not None and not pl.is_projection:
        m = np.asarray(pl.ijk_to_ct, np.float64)
    elif pl is not None:
        p = np.asarray(pl.ct_to_pixel, np.float64)
        k, r = scipy.linalg.rq(p[:, :3])
        r = np.diag(np.sign(np.diag(k))) @ r  # rows: detector columns, rows, beam
        return Orientation(DisplayFlip("projection"), r[0], r[1], None)
    elif result.kind == "pose":
        m = np.asarray(img.ijk_to_lps, np.float64)  # the reslice of the planning CT
    else:
        return None
    spacing = spacing_of(m)
    if result.modality == "us":
        flip = DisplayFlip("as acquired")
    else:
        flip = display_flip(m)
    right, down = flip.axes(m)
    px = float(spacing[0]) if abs(spacing[0] - spacing[1]) < 0.01 * spacing[0] else None
    return Orientation(flip, right, down, px)


def banner_colour(state: GuidanceState, level: WarningLevel) -> tuple[int, int, int]:
    """The banner's RGB: STALE grey; else a warning's level colour (INFO and above);
    else NO_GUIDANCE and DEGRADED their own colours; the OK colour only for OK."""
    if state == GuidanceState.STALE:
        return STALE_COLOUR
    if level > WarningLevel.NONE:
        return LEVEL_COLOURS[level]
    if state == GuidanceState.NO_GUIDANCE:
        return NO_GUIDANCE_COLOUR
    if state == GuidanceState.DEGRADED:
        return DEGRADED_COLOUR
    return LEVEL_COLOURS[WarningLevel.NONE]


@functools.lru_cache(maxsize=8192)
def _text_width(s: str, scale: float) -> int:
    """Width in pixels of ``s`` in the Hershey simplex font at ``scale`` (thickness 1);
    remembered: the banner's words repeat from frame to frame (this was ~1 ms a frame)."""
    return int(cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0])


def wrap_text(text: str, width_px: int, scale: float) -> list[str]:
    """Break ``text`` at spaces into lines no wider than ``width_px`` pixels in OpenCV's
    Hershey simplex font at ``scale`` (thickness 1); a single word wider than that is
    broken inside. Nothing is dropped: the lines hold every character of ``text`` in
    order, only the spaces where a line ends are left out.

    Returns:
        At least one line.
    """
    def width(s: str) -> int:
        return _text_width(s, scale)

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
        self._shown: np.ndarray | None = None
        self._gray8: np.ndarray | None = None
        self.plan: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None
        #: a target given as a point of the frame (ultrasound), column and row.
        self.image_target_px: tuple[float, float] | None = None

    def compose(self, result: FrameResult, latency_ms: float | None = None) -> np.ndarray:
        """Draw the frame and its annotations; returns (rows, cols, 3) uint8 (a reused
        buffer: copy it to keep it).

        A frame whose place in the patient is known is shown as a DICOM viewer shows
        it (:func:`display_orientation`: flipped or transposed when stored otherwise)
        with orientation letters, a scale bar for slices, and a legend of what is
        drawn; ultrasound keeps the probe at the top (letters only)."""
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
        legend: dict[str, tuple[int, int, int]] = {}
        texts: list[tuple[str, tuple[float, float], tuple[int, int, int]]] = []
        if result.labels is not None:
            names = result.label_names
            # The labels present: a count per value (linear; np.unique sorts the frame).
            labs = result.labels if result.labels.dtype == np.uint8 else None
            present = (np.flatnonzero(np.bincount(labs.ravel(), minlength=1)) if labs is not None
                       else np.unique(result.labels))
            for lab in present:
                if lab == 0:
                    continue
                name = names[lab] if lab < len(names) else f"label {lab}"
                colour = label_colour(int(lab), name)
                m = (result.labels == lab).view(np.uint8)
                contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(rgb, contours, -1, colour, 1)
                model = result.kind != "pose"  # a model's classes, not the plan's
                legend.setdefault(f"{name} (model)" if model else name, colour)
        if result.focus_window is not None:  # the model looked only here
            x0, y0, x1, y1 = result.focus_window
            cv2.rectangle(rgb, (x0, y0), (x1 - 1, y1 - 1), FOCUS_COLOUR, 1)
            legend["model's window (needle only)"] = FOCUS_COLOUR
        self._outlines(rgb, result, legend, texts)
        if self._plan(rgb, result):
            legend["plan"] = PLAN_COLOUR
        n = result.needle
        if n is not None and n.in_image:
            hub = (round(n.hub_ij[0]), round(n.hub_ij[1]))
            tip = (round(n.tip_ij[0]), round(n.tip_ij[1]))
            cv2.line(rgb, hub, tip, NEEDLE_COLOUR, 1, cv2.LINE_AA)
            cv2.circle(rgb, tip, 5, NEEDLE_COLOUR, 2, cv2.LINE_AA)
            legend["needle (this frame)"] = NEEDLE_COLOUR
            d = result.decision
            current = result.state not in (GuidanceState.STALE, GuidanceState.NO_GUIDANCE)
            if d is not None and math.isfinite(d.tip_to_target_mm) and current:
                texts.append((f"{d.tip_to_target_mm:.1f} mm to target",
                              (float(n.tip_ij[0]) + 8.0, float(n.tip_ij[1]) - 6.0),
                              NEEDLE_COLOUR))
            if current:
                self._image_distances(result, texts)
        if self.image_target_px is not None and result.modality == "us":
            u, v = (round(x) for x in self.image_target_px)
            cv2.drawMarker(rgb, (u, v), PLAN_COLOUR, cv2.MARKER_CROSS, 14, 2, cv2.LINE_AA)
            cv2.circle(rgb, (u, v), 7, PLAN_COLOUR, 1, cv2.LINE_AA)
            legend["target"] = PLAN_COLOUR
        orient = display_orientation(result)
        shown = rgb
        if orient is not None and not orient.flip.identity:
            shown = self._shown_buffer(orient.flip.apply(rgb).shape[:2])
            np.copyto(shown, orient.flip.apply(rgb))
        scale = max(0.35, shown.shape[0] / 1100.0)
        for text, (x, y), colour in texts:
            if orient is not None:
                x, y = orient.flip.points([[x, y]], rgb.shape)[0]
            cv2.putText(shown, text, (int(x), max(int(y) - 3, 8)), cv2.FONT_HERSHEY_SIMPLEX,
                        scale, colour, 1, cv2.LINE_AA)
        top, bottom = self._banner(shown, result, latency_ms)
        if orient is not None:
            annotate(shown, orient.right_lps, orient.down_lps, orient.pixel_mm,
                     list(legend.items()), top_margin_px=top, bottom_margin_px=bottom)
        return shown

    @staticmethod
    def _image_distances(result: FrameResult,
                         texts: list[tuple[str, tuple[float, float], tuple[int, int, int]]],
                         ) -> None:
        """The tip's distance beside the closest nerve and the closest vessel the model
        sees (measured on this frame), in the class's colour."""
        for kind in ("nerve", "vessel"):
            items = [s for s in result.image_structures if s.kind == kind]
            if not items:
                continue
            near = min(items, key=lambda s: s.tip_mm)
            lab = result.label_names.index(kind) if kind in result.label_names else 0
            colour = label_colour(lab, kind)
            where = "inside" if near.tip_mm < 0 else f"{near.tip_mm:.1f} mm"
            # Below the outline (not on it, and away from the needle, which comes in from
            # the probe's side), from its left edge.
            x = float(near.contour_px[:, 0].min()) if len(near.contour_px) else \
                float(near.centroid_px[0])
            y = float(near.contour_px[:, 1].max()) + 16.0 if len(near.contour_px) else \
                float(near.centroid_px[1])
            texts.append((f"{kind} {where}", (x, y), colour))

    def _shown_buffer(self, shape: tuple[int, int]) -> np.ndarray:
        if self._shown is None or self._shown.shape[:2] != shape:
            self._shown = np.empty((*shape, 3), np.uint8)
        return self._shown

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
    def _outlines(rgb: np.ndarray, result: FrameResult,
                  legend: dict[str, tuple[int, int, int]],
                  texts: list[tuple[str, tuple[float, float], tuple[int, int, int]]]) -> None:
        """The plan's structures where the C-arm calibration projects them, each in its
        colour, named at its top (the names are drawn after any flip: ``texts``)."""
        for o in result.outlines:
            colour = structure_rgb(o.structure)
            polys = [np.round(p).astype(np.int32).reshape(-1, 1, 2) for p in o.polygons]
            cv2.polylines(rgb, polys, True, colour, 1, cv2.LINE_AA)
            top = min(o.polygons, key=lambda p: float(p[:, 1].min()))
            x, y = top[np.argmin(top[:, 1])]
            texts.append((o.structure, (float(x), float(y)), colour))
            for name, c in structure_legend([o.structure]):
                legend.setdefault(name, c)

    def _plan(self, rgb: np.ndarray, result: FrameResult) -> bool:
        """The plan where the frame's placement in the planning CT puts it (a slice: only
        when the path lies within 5 mm of its plane; a projection: always); True when
        drawn."""
        pl = result.placement
        if self.plan is None or pl is None:
            return False
        ij, off = pl.project(np.stack(self.plan))
        if not np.all(np.isfinite(ij)) or np.any(np.abs(ij) > 1e5):
            return False
        if pl.is_projection or np.all(np.abs(off) < 5.0):
            a = (round(ij[0, 0]), round(ij[0, 1]))
            b = (round(ij[1, 0]), round(ij[1, 1]))
            cv2.line(rgb, a, b, PLAN_COLOUR, 1, cv2.LINE_AA)
            cv2.drawMarker(rgb, b, PLAN_COLOUR, cv2.MARKER_CROSS, 12, 2)
            return True
        return False

    @staticmethod
    def _banner(rgb: np.ndarray, result: FrameResult,
                latency_ms: float | None = None) -> tuple[int, int]:
        """The banner (state, worst warning) at the top and the numbers at the bottom
        left; returns the rows they take (top, bottom). Numbers only from this update's
        own decision (a needle measured on it), never while STALE or NO_GUIDANCE."""
        h, w = rgb.shape[:2]
        line_h = max(18, h // 20)
        stale = result.state in (GuidanceState.STALE, GuidanceState.NO_GUIDANCE)
        colour = banner_colour(result.state, result.level)
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
        measured = result.needle is not None and result.needle.has_3d
        if d is not None and measured and not stale:
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
        return min(bh, h - 1), 6 + len(lines) * int(line_h * 0.8)
