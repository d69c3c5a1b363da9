"""The live picture of a CT control scan (no Qt): numpy/cv2 -> RGB arrays.

Two panels side by side (:func:`render_ct_view`):

- **axial**: the slab's slice nearest the needle tip (the middle slice without a
  needle), CT window, radiological orientation from the slab's own ``ijk_to_lps``
  (:func:`guidance.figures.display_flip`: the patient's left on the right, anterior up
  for a supine patient, whatever the storage order), L/R/A/P letters, a scale bar, the
  fitted needle projected on the slice with its tip, the plan's path and target and the
  planning structures' outlines mapped into the slab through ``inv(slab_to_ct)``;
- **reformat**: the oblique plane containing the needle axis and the in-slice direction
  perpendicular to it (hub at the top, deeper downwards), sampled from the slab with
  ``scipy.ndimage.map_coordinates``. Outside the slab there is no data (dark blue); a
  plane the thin slab cuts short is stretched along its rows, and says by how much, with
  a scale bar along each axis.

Below them one line per number: depth to target, to the structure ahead, the patient's
motion (CAUTION colour above :data:`MOTION_CAUTION_MM`) and the slab's message. Frames:
panel points are in the slab's (scanner's) LPS mm; the plan and the structures are in
the planning CT's LPS mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from guidance.ctscan.result import CtScanResult
from guidance.figures import (
    display_flip,
    edge_letters,
    scale_bar_mm,
    structure_legend,
    structure_rgb,
)
from guidance.planning.structures import StructureSet

__all__ = ["CT_WINDOW", "MOTION_CAUTION_MM", "CtPanel", "CtView", "ct_to_slab",
           "render_ct_view", "tip_slice"]

F64 = npt.NDArray[np.float64]

#: Default display window (centre, width) HU: soft tissue, bone still told apart.
CT_WINDOW = (40.0, 400.0)
#: Patient motion above this (mm) is shown in the CAUTION colour.
MOTION_CAUTION_MM = 2.0

NEEDLE_RGB = (0, 255, 120)
PLAN_RGB = (0, 220, 255)
CAUTION_RGB = (255, 170, 30)
TEXT_RGB = (235, 235, 235)
LETTER_RGB = (255, 255, 120)
NO_DATA_RGB = (22, 24, 48)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True, eq=False)
class CtPanel:
    """One rendered panel.

    Attributes:
        name: ``axial`` or ``reformat``.
        rgb: (H, W, 3) uint8 with overlays, letters, scale bars.
        gray: (H, W) uint8, the windowed image alone (no overlays).
        right_lps, down_lps: (3,) LPS directions of the columns and rows.
        letters: edge -> orientation letter; letter_boxes: edge -> (x0, y0, x1, y1).
        mm_per_px: (along columns, along rows) mm per displayed pixel.
        needle_px: (2, 2) displayed (x, y) of the needle's hub and tip, or ``None``.
        slice_index: the slab slice shown (axial), -1 for the reformat.
        notes: what the panel says in words ("tip beyond the slab", ...).
    """

    name: str
    rgb: np.ndarray
    gray: np.ndarray
    right_lps: F64
    down_lps: F64
    letters: dict[str, str]
    letter_boxes: dict[str, tuple[int, int, int, int]]
    mm_per_px: tuple[float, float]
    needle_px: F64 | None = None
    slice_index: int = -1
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class CtView:
    """The whole CT picture: ``rgb`` is the two panels over the lines of numbers."""

    axial: CtPanel
    reformat: CtPanel | None
    lines: tuple[tuple[str, tuple[int, int, int]], ...]
    rgb: np.ndarray = field(repr=False)

    def save_png(self, path: str | Path) -> Path:
        """Write :attr:`rgb` as a PNG; returns the path."""
        p = Path(path)
        if not cv2.imwrite(str(p), cv2.cvtColor(self.rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {p}")
        return p


def ct_to_slab(result: CtScanResult) -> F64:
    """(4, 4) planning CT LPS mm -> the slab's LPS mm (identity without a registration:
    both are the scanner's frame as long as the patient did not move)."""
    if result.motion is None:
        return np.eye(4)
    return np.asarray(np.linalg.inv(result.motion.slab_to_ct), np.float64)


def _ijk(result: CtScanResult, pts_lps: npt.ArrayLike) -> F64:
    m = result.slab.lps_to_ijk
    p = np.atleast_2d(np.asarray(pts_lps, np.float64))
    out: F64 = p @ m[:3, :3].T + m[:3, 3]
    return out


def _apply(m: F64, pts: npt.ArrayLike) -> F64:
    p = np.atleast_2d(np.asarray(pts, np.float64))
    out: F64 = p @ m[:3, :3].T + m[:3, 3]
    return out


def tip_slice(result: CtScanResult) -> int:
    """The slab slice (k) nearest the needle tip; the middle slice without a needle."""
    nk = result.slab.voxels.shape[0]
    tip = result.needle.tip_lps
    if not result.needle.found or not np.all(np.isfinite(tip)):
        return nk // 2
    k = float(_ijk(result, tip)[0, 2])
    return int(np.clip(round(k), 0, nk - 1))


def _window(vals: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    c, w = window
    g = (np.asarray(vals, np.float32) - (c - w / 2.0)) * (255.0 / max(w, 1e-3))
    return np.clip(np.nan_to_num(g, nan=0.0), 0, 255).astype(np.uint8)


def _text(rgb: np.ndarray, text: str, org: tuple[int, int], scale: float,
          colour: tuple[int, int, int] = TEXT_RGB) -> tuple[int, int, int, int]:
    """Outlined text; returns its box (x0, y0, x1, y1)."""
    th = max(1, round(scale * 2))
    (tw, tht), base = cv2.getTextSize(text, _FONT, scale, th)
    cv2.putText(rgb, text, org, _FONT, scale, (0, 0, 0), th + 2, cv2.LINE_AA)
    cv2.putText(rgb, text, org, _FONT, scale, colour, th, cv2.LINE_AA)
    return org[0], org[1] - tht, org[0] + tw, org[1] + base


_Box = tuple[int, int, int, int]


def _letters(rgb: np.ndarray, right: F64, down: F64) -> tuple[dict[str, str], dict[str, _Box]]:
    h, w = rgb.shape[:2]
    letters = edge_letters(right, down)
    scale = max(0.55, min(h, w) / 450.0)
    boxes: dict[str, tuple[int, int, int, int]] = {}
    for edge, t in letters.items():
        (lw, lh), _ = cv2.getTextSize(t, _FONT, scale, 2)
        org = {"left": (6, h // 2 + lh // 2), "right": (w - lw - 6, h // 2 + lh // 2),
               "top": (w // 2 - lw // 2, lh + 8), "bottom": (w // 2 - lw // 2, h - 8)}[edge]
        boxes[edge] = _text(rgb, t, org, scale, LETTER_RGB)
    return letters, boxes


def _scale_bar(rgb: np.ndarray, mm_per_px: float, vertical: bool = False) -> None:
    """A round-length bar (10 or 50 mm... from the pixel size): bottom right, or along
    the right edge when ``vertical``."""
    h, w = rgb.shape[:2]
    length = h if vertical else w
    bar = scale_bar_mm(length * mm_per_px)
    n = max(2, round(bar / mm_per_px))
    label = f"{bar:g} mm"
    if vertical:
        x, y1 = w - 14, h - 40
        cv2.line(rgb, (x, y1 - n), (x, y1), (0, 0, 0), 4)
        cv2.line(rgb, (x, y1 - n), (x, y1), (255, 255, 255), 2)
        _text(rgb, label, (max(0, x - 60), y1 - n - 6), 0.45)
        return
    x1, y = w - 16, h - 14
    cv2.line(rgb, (x1 - n, y), (x1, y), (0, 0, 0), 4)
    cv2.line(rgb, (x1 - n, y), (x1, y), (255, 255, 255), 2)
    _text(rgb, label, (x1 - n, y - 8), 0.45)


def _outlines(rgb: np.ndarray, inside: list[tuple[str, np.ndarray]]) -> list[str]:
    drawn = []
    for name, mask in inside:
        m = cv2.resize(mask.astype(np.uint8), (rgb.shape[1], rgb.shape[0]),
                       interpolation=cv2.INTER_NEAREST)
        if m.any():
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(rgb, contours, -1, structure_rgb(name), 2)
            drawn.append(name)
    return drawn


def _inside(structures: StructureSet | None, pts_slab: F64, slab_to_ct: np.ndarray,
            shape: tuple[int, int]) -> list[tuple[str, np.ndarray]]:
    """(name, mask of ``shape``) where the planning structures hold the points."""
    if structures is None:
        return []
    sd = structures.sample(_apply(slab_to_ct, pts_slab))
    with np.errstate(invalid="ignore"):
        return [(st.name, (sd[s] < 0).reshape(shape))
                for s, st in enumerate(structures.structures)]


def _legend(rgb: np.ndarray, names: list[str]) -> None:
    y = 44
    for label, colour in structure_legend(names):
        cv2.line(rgb, (8, y - 5), (28, y - 5), colour, 3)
        _text(rgb, label, (34, y), 0.42, colour)
        y += 18


def _pt(xy: F64) -> tuple[int, int]:
    return round(float(xy[0])), round(float(xy[1]))


def _cross(rgb: np.ndarray, xy: F64, colour: tuple[int, int, int], r: int, solid: bool) -> None:
    c = _pt(xy)
    cv2.circle(rgb, c, r, colour, 2 if solid else 1, cv2.LINE_AA)
    cv2.line(rgb, (c[0] - 2 * r, c[1]), (c[0] + 2 * r, c[1]), colour, 1, cv2.LINE_AA)
    cv2.line(rgb, (c[0], c[1] - 2 * r), (c[0], c[1] + 2 * r), colour, 1, cv2.LINE_AA)


def _dashed(rgb: np.ndarray, a: F64, b: F64, colour: tuple[int, int, int], dash: int = 8) -> None:
    d = b - a
    n = float(np.hypot(*d))
    steps = max(1, int(n // dash))
    for s in range(0, steps, 2):
        cv2.line(rgb, _pt(a + d * s / steps), _pt(a + d * min(s + 1, steps) / steps), colour,
                 2, cv2.LINE_AA)


def _axial(result: CtScanResult, window: tuple[float, float], plan: tuple[F64, F64] | None,
           structures: StructureSet | None, size_px: int) -> CtPanel:
    slab = result.slab
    m = slab.ijk_to_lps
    k = tip_slice(result)
    plane = slab.voxels[k]
    rows, cols = plane.shape[:2]
    flip = display_flip(m)
    right, down = flip.axes(m)
    sx, sy = float(slab.spacing_mm[0]), float(slab.spacing_mm[1])
    gray = np.ascontiguousarray(flip.apply(_window(plane, window)))
    drows, dcols = gray.shape
    if flip.transpose:
        sx, sy = sy, sx
    pix = max(dcols * sx, drows * sy) / size_px
    wd, hd = max(1, round(dcols * sx / pix)), max(1, round(drows * sy / pix))
    fx, fy = wd / dcols, hd / drows
    gray = cv2.resize(gray, (wd, hd), interpolation=cv2.INTER_LINEAR)
    rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)

    def to_px(pts_slab: npt.ArrayLike) -> tuple[F64, F64]:
        ijk = _ijk(result, pts_slab)
        d = flip.points(ijk[:, :2], (rows, cols))
        return np.stack([(d[:, 0] + 0.5) * fx - 0.5, (d[:, 1] + 0.5) * fy - 0.5], 1), \
            ijk[:, 2] - k

    jj, ii = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    pts = np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, k)], 1).astype(np.float64)
    pts = _apply(m, pts)
    slab_to_ct = np.linalg.inv(ct_to_slab(result))
    inside = [(n, np.ascontiguousarray(flip.apply(mk)))
              for n, mk in _inside(structures, pts, slab_to_ct, (rows, cols))]
    drawn = _outlines(rgb, inside)
    dz = abs(float(slab.spacing_mm[2]))
    if plan is not None:
        pe = _apply(ct_to_slab(result), np.stack(plan))
        xy, off = to_px(pe)
        _dashed(rgb, xy[0], xy[1], PLAN_RGB)
        _cross(rgb, xy[1], PLAN_RGB, 7, abs(off[1]) * dz < 2.0)
        _text(rgb, f"target ({abs(off[1]) * dz:.0f} mm off slice)" if abs(off[1]) * dz >= 2.0
              else "target", _pt(xy[1] + (12, -10)), 0.45, PLAN_RGB)
    notes: list[str] = []
    needle_px = None
    n = result.needle
    if n.found and np.all(np.isfinite(n.tip_lps)):
        hub = n.hub_lps if np.all(np.isfinite(n.hub_lps)) else n.tip_lps - 20 * n.axis_lps
        xy, _ = to_px(np.stack([hub, n.tip_lps]))
        needle_px = xy
        cv2.line(rgb, _pt(xy[0]), _pt(xy[1]), NEEDLE_RGB, 2, cv2.LINE_AA)
        cv2.circle(rgb, _pt(xy[1]), 6, NEEDLE_RGB, 2, cv2.LINE_AA)
        if math.isfinite(result.depth_to_target_mm) and result.depth_to_target_mm > 0:
            ahead, _ = to_px(n.tip_lps + n.axis_lps * result.depth_to_target_mm)
            _dashed(rgb, xy[1], ahead[0], NEEDLE_RGB, 6)
        if not n.tip_in_slab:
            notes.append("tip beyond the slab")
            _text(rgb, "tip beyond the slab", _pt(xy[1] + (10, 18)), 0.5, CAUTION_RGB)
    else:
        notes.append(n.message or "no needle in the slab")
        _text(rgb, notes[-1], (10, hd - 40), 0.6, CAUTION_RGB)
    _legend(rgb, drawn)
    letters, boxes = _letters(rgb, right, down)
    _scale_bar(rgb, pix)
    _text(rgb, f"axial, slice {k + 1} of {slab.voxels.shape[0]}", (10, 22), 0.55)
    return CtPanel("axial", rgb, gray, right, down, letters, boxes, (pix, pix), needle_px, k,
                   tuple(notes))


def _reformat(result: CtScanResult, window: tuple[float, float],
              plan: tuple[F64, F64] | None, structures: StructureSet | None,
              height_px: int) -> CtPanel | None:
    n = result.needle
    if not (n.found and np.all(np.isfinite(n.tip_lps)) and np.all(np.isfinite(n.axis_lps))):
        return None
    slab = result.slab
    m = slab.ijk_to_lps
    a = n.axis_lps / np.linalg.norm(n.axis_lps)
    normal = np.cross(m[:3, 0], m[:3, 1])
    normal /= np.linalg.norm(normal)
    w = np.cross(normal, a)
    if np.linalg.norm(w) < 1e-3:  # the needle along the slab's normal
        w = m[:3, 0] - a * float(a @ m[:3, 0])
    w /= np.linalg.norm(w)
    if (abs(w[0]) > 0.1 and w[0] < 0) or (abs(w[0]) <= 0.1 and w[1] < 0):
        w = -w  # the patient's left (or posterior) to the right
    hub = n.hub_lps if np.all(np.isfinite(n.hub_lps)) else n.tip_lps - 20 * a
    length = max(float((n.tip_lps - hub) @ a), 5.0)
    ahead = result.depth_to_target_mm if math.isfinite(result.depth_to_target_mm) else 20.0
    ahead = float(np.clip(ahead + 10.0, 20.0, 80.0))
    pix = float(np.clip(min(slab.spacing_mm[:2]), 0.3, 1.0))
    s = np.arange(-length - 10.0, ahead + pix / 2, pix)
    t = np.arange(-30.0, 30.0 + pix / 2, pix)
    ss, tt = np.meshgrid(s, t, indexing="ij")
    pts = n.tip_lps + ss.reshape(-1, 1) * a + tt.reshape(-1, 1) * w
    ijk = _ijk(result, pts)
    vals = ndimage.map_coordinates(slab.voxels, ijk[:, ::-1].T, order=1, mode="nearest",
                                   output=np.float32).reshape(ss.shape)
    size = np.array(slab.size_ijk, np.float64)
    valid = np.all((ijk > -0.5) & (ijk < size - 0.5), axis=1).reshape(ss.shape)
    keep = np.flatnonzero(valid.any(axis=1))
    if keep.size == 0:
        return None
    r0, r1 = int(keep[0]), int(keep[-1]) + 1
    vals, valid, ss_c = vals[r0:r1], valid[r0:r1], s[r0:r1]
    h_mm, w_mm = len(ss_c) * pix, len(t) * pix
    stretch = max(1.0, (w_mm / 2.5) / max(h_mm, 1e-6))
    kx = min(height_px * 0.75 / w_mm, height_px / (h_mm * stretch))  # px per mm
    ky = kx * stretch
    wd, hd = max(2, round(w_mm * kx)), max(2, round(h_mm * ky))
    gray = cv2.resize(_window(vals, window), (wd, hd), interpolation=cv2.INTER_LINEAR)
    ok = cv2.resize(valid.astype(np.uint8), (wd, hd), interpolation=cv2.INTER_NEAREST) > 0
    rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    rgb[~ok] = NO_DATA_RGB
    gray = np.where(ok, gray, 0).astype(np.uint8)

    def to_px(pts_slab: npt.ArrayLike) -> tuple[F64, F64]:
        rel = np.atleast_2d(np.asarray(pts_slab, np.float64)) - n.tip_lps
        x = (rel @ w - t[0]) * kx
        y = (rel @ a - ss_c[0]) * ky
        return np.stack([x, y], 1), rel @ np.cross(a, w)

    slab_to_ct = np.linalg.inv(ct_to_slab(result))
    inside = _inside(structures, pts.reshape(len(s), len(t), 3)[r0:r1].reshape(-1, 3),
                     slab_to_ct, vals.shape)
    drawn = _outlines(rgb, [(nm, mk & valid) for nm, mk in inside])
    if plan is not None:
        xy, off = to_px(_apply(ct_to_slab(result), np.stack(plan)))
        _dashed(rgb, xy[0], xy[1], PLAN_RGB)
        _cross(rgb, xy[1], PLAN_RGB, 7, abs(off[1]) < 2.0)
        _text(rgb, "target" if abs(off[1]) < 2.0 else f"target ({abs(off[1]):.0f} mm off)",
              _pt(xy[1] + (12, -10)), 0.45, PLAN_RGB)
    xy, _ = to_px(np.stack([hub, n.tip_lps]))
    # The fitted line beside the needle (not over it): two thin ticks left and right.
    for dx in (-7, 7):
        cv2.line(rgb, _pt(xy[0] + (dx, 0)), _pt(xy[1] + (dx, 0)), NEEDLE_RGB, 1, cv2.LINE_AA)
    cv2.circle(rgb, _pt(xy[1]), 6, NEEDLE_RGB, 2, cv2.LINE_AA)
    notes = []
    if not n.tip_in_slab:
        notes.append("tip beyond the slab")
        _text(rgb, "tip beyond the slab", _pt(xy[1] + (12, 18)), 0.45, CAUTION_RGB)
    _legend(rgb, drawn)
    letters, boxes = _letters(rgb, w, a)
    _scale_bar(rgb, 1.0 / kx)
    if stretch > 1.05:
        _scale_bar(rgb, 1.0 / ky, vertical=True)
        notes.append(f"rows stretched x{stretch:.1f}")
    _text(rgb, "along the needle" + (f" (rows x{stretch:.1f})" if stretch > 1.05 else ""),
          (8, 22), 0.5)
    return CtPanel("reformat", rgb, gray, w.copy(), a.copy(), letters, boxes,
                   (1.0 / kx, 1.0 / ky), xy, -1, tuple(notes))


def _fmt(v: float, unit: str) -> str:
    if math.isinf(v) and v > 0:
        return "none ahead"
    return f"{v:.1f} {unit}" if math.isfinite(v) else "-"


def _lines(result: CtScanResult) -> tuple[tuple[str, tuple[int, int, int]], ...]:
    out = [(f"depth to target {_fmt(result.depth_to_target_mm, 'mm')}", TEXT_RGB)]
    what = f" ({result.structure_ahead})" if result.structure_ahead else ""
    out.append((f"to nearest structure ahead{what} "
                f"{_fmt(result.depth_to_structure_mm, 'mm')}", TEXT_RGB))
    mo = result.motion
    if mo is None:
        out.append(("patient motion: no planning CT to register to", TEXT_RGB))
    else:
        caution = not mo.ok or mo.translation_mm > MOTION_CAUTION_MM
        txt = f"patient motion {mo.translation_mm:.1f} mm / {mo.rotation_deg:.1f} deg"
        if not mo.ok and mo.reason:
            txt += f" ({mo.reason})"
        out.append((txt, CAUTION_RGB if caution else TEXT_RGB))
    out.append((f"scan {result.scan_number}: {result.needle.message}",
                TEXT_RGB if result.needle.found and result.needle.tip_in_slab
                else CAUTION_RGB))
    return tuple(out)


def render_ct_view(result: CtScanResult, *, window: tuple[float, float] = CT_WINDOW,
                   plan: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
                   structures: StructureSet | None = None, size_px: int = 512,
                   banner: tuple[str, tuple[int, int, int]] | None = None) -> CtView:
    """The CT control scan's picture.

    Args:
        result: the control scan.
        window: (centre, width) HU.
        plan: (entry_lps, target_lps) of the plan, planning CT LPS mm, or ``None``.
        structures: the plan's structures (planning CT) for outlines, or ``None``.
        size_px: the axial panel's longer side, pixels.
        banner: (text, RGB) of a state banner on top (the PNG; the live view draws its
            own).
    """
    pl = None if plan is None else (np.asarray(plan[0], np.float64).reshape(3),
                                    np.asarray(plan[1], np.float64).reshape(3))
    ax = _axial(result, window, pl, structures, size_px)
    h = ax.rgb.shape[0]
    ref = _reformat(result, window, pl, structures, h)
    if ref is not None:
        right = np.full((h, ref.rgb.shape[1], 3), 18, np.uint8)
        y0 = (h - ref.rgb.shape[0]) // 2
        right[y0:y0 + ref.rgb.shape[0]] = ref.rgb
    else:
        right = np.full((h, h * 3 // 5, 3), 18, np.uint8)
        _text(right, "no needle: no reformat", (12, h // 2), 0.55, CAUTION_RGB)
    gap = np.full((h, 6, 3), 18, np.uint8)
    top = np.concatenate([ax.rgb, gap, right], axis=1)
    lines = _lines(result)
    strip = np.full((26 * len(lines) + 12, top.shape[1], 3), 18, np.uint8)
    for i, (txt, colour) in enumerate(lines):
        cv2.putText(strip, txt, (12, 28 + 26 * i), _FONT, 0.6, colour, 1, cv2.LINE_AA)
    parts = [top, strip]
    if banner is not None:
        b = np.zeros((44, top.shape[1], 3), np.uint8)
        b[...] = banner[1]
        _text(b, banner[0], (12, 30), 0.75, (255, 255, 255))
        parts.insert(0, b)
    return CtView(ax, ref, lines, np.ascontiguousarray(np.concatenate(parts, axis=0)))
