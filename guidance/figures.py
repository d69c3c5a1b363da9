"""How every image of the project is oriented and annotated (no Qt): one place.

The convention is the one a DICOM viewer shows on the scanner console (radiological):

- **axial**: seen from the feet; the patient's left on the image's right; a supine
  patient anterior up (rows run anterior -> posterior, the spine at the bottom); a
  prone patient, when the caller says so, as acquired, the back up (the image turned by
  180 degrees);
- **coronal**: seen from the front; the patient's left on the image's right, head up;
- **sagittal**: seen from the patient's left; anterior on the image's left, head up.

:func:`display_axes` gives, for a view, the LPS directions of the image's columns (to
the right) and rows (downwards); :func:`view_plane` a square plane of pixels with those
axes; :func:`display_flip` the transpose and flips that show a frame's pixel grid
(``ijk_to_lps``) that way; :func:`annotate` burns the orientation letters (from the
plane's own axes, so oblique planes get the right ones too), a scale bar in mm and a
legend of the structures' colours into an RGB image. The report's key images, the
headless overlay, the navigation reslice and the Qt views all go through here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from guidance.geometry import ImageVolume
from guidance.planning.structures import StructureSet

__all__ = [
    "VIEWS",
    "DisplayFlip",
    "PlaneSpec",
    "annotate",
    "display_axes",
    "display_flip",
    "edge_letters",
    "legend_panel",
    "oriented_plane",
    "render_plane",
    "sample_plane",
    "scale_bar_mm",
    "structure_legend",
    "structure_rgb",
    "view_plane",
]

F64 = npt.NDArray[np.float64]

VIEWS = ("axial", "coronal", "sagittal")

_X, _Y, _Z = np.eye(3)

#: Structure outline colours (RGB) by a part of the structure's name, and the legend's
#: name of the group; first match wins.
_STRUCT_GROUPS: tuple[tuple[str, str, tuple[int, int, int]], ...] = (
    ("spinal_cord", "spinal cord", (255, 60, 60)),
    ("nerve", "nerve roots", (255, 150, 0)),
    ("aorta", "aorta", (255, 80, 200)),
    ("iliac", "iliac arteries", (255, 80, 200)),
    ("vena", "venae cavae", (80, 120, 255)),
    ("vessel", "large vessels", (190, 100, 255)),
    ("kidney", "kidneys", (200, 130, 60)),
    ("lung", "lungs", (170, 230, 170)),
    ("bowel", "bowel", (170, 170, 60)),
    ("colon", "bowel", (170, 170, 60)),
    ("liver", "liver", (170, 110, 80)),
    ("spleen", "spleen", (150, 90, 170)),
    ("vertebra", "vertebrae", (90, 200, 255)),
    ("rib", "ribs", (90, 200, 255)),
)


def structure_rgb(name: str) -> tuple[int, int, int]:
    """Outline colour (RGB) of a planning structure, by its name."""
    for key, _, rgb in _STRUCT_GROUPS:
        if key in name:
            return rgb
    return (200, 200, 200)


def structure_legend(names: Sequence[str]) -> list[tuple[str, tuple[int, int, int]]]:
    """Legend entries (group name, RGB) for the structures drawn, one per group, in the
    order first drawn; ``(derived)`` kept where the group's structures are derived."""
    out: dict[str, tuple[int, int, int]] = {}
    for name in names:
        label = next((g for key, g, _ in _STRUCT_GROUPS if key in name), name)
        if "(derived)" in name:
            label += " (derived)"
        out.setdefault(label, structure_rgb(name))
    return list(out.items())


def display_axes(view: str, prone: bool = False) -> tuple[F64, F64]:
    """(right_lps, down_lps): the LPS unit directions of the image's columns (to the
    right) and rows (downwards) for ``view``.

    Args:
        view: ``axial``, ``coronal`` or ``sagittal``.
        prone: a prone acquisition (axial only: shown as acquired, the back up).

    Raises:
        ValueError: an unknown view.
    """
    if view == "axial":
        return (-_X, -_Y) if prone else (_X.copy(), _Y.copy())
    if view == "coronal":
        return _X.copy(), -_Z
    if view == "sagittal":
        return _Y.copy(), -_Z
    raise ValueError(f"view must be one of {VIEWS}, got {view!r}")


@dataclass(frozen=True, eq=False)
class PlaneSpec:
    """A square plane of pixels in LPS mm.

    Attributes:
        name: ``axial``, ``coronal``, ``sagittal`` or ``trajectory``.
        centre_lps: (3,) LPS mm at the centre of the image.
        u_lps: (3,) unit vector along the columns (to the right); v_lps: along the rows
            (downwards).
        size_px: pixels per side; pixel_mm: pixel size, mm.
    """

    name: str
    centre_lps: F64
    u_lps: F64
    v_lps: F64
    size_px: int
    pixel_mm: float

    def points_lps(self) -> F64:
        """(size_px * size_px, 3) LPS mm of the pixel centres, row-major."""
        n = self.size_px
        c = (np.arange(n) - (n - 1) / 2.0) * self.pixel_mm
        vv, uu = np.meshgrid(c, c, indexing="ij")
        pts: F64 = (self.centre_lps + uu.reshape(-1, 1) * self.u_lps
                    + vv.reshape(-1, 1) * self.v_lps)
        return pts

    def to_px(self, points_lps: npt.ArrayLike) -> tuple[F64, F64]:
        """(N, 3) LPS mm -> ((N, 2) pixel (column, row), (N,) distance from the plane, mm)."""
        rel = np.atleast_2d(np.asarray(points_lps, np.float64)) - self.centre_lps
        n = (self.size_px - 1) / 2.0
        col = rel @ self.u_lps / self.pixel_mm + n
        row = rel @ self.v_lps / self.pixel_mm + n
        normal = np.cross(self.u_lps, self.v_lps)
        return np.stack([col, row], axis=1), rel @ normal

    def to_lps(self, col: float, row: float) -> F64:
        """Pixel (column, row) -> (3,) LPS mm."""
        n = (self.size_px - 1) / 2.0
        out: F64 = (self.centre_lps + (col - n) * self.pixel_mm * self.u_lps
                    + (row - n) * self.pixel_mm * self.v_lps)
        return out


def view_plane(view: str, centre_lps: npt.ArrayLike, fov_mm: float = 160.0,
               size_px: int = 256, prone: bool = False) -> PlaneSpec:
    """The ``view`` plane through ``centre_lps`` (LPS mm), ``fov_mm`` wide, in display
    orientation (:func:`display_axes`)."""
    if not fov_mm > 0 or size_px < 2:
        raise ValueError(f"need fov_mm > 0 and size_px >= 2, got {fov_mm}, {size_px}")
    u, v = display_axes(view, prone)
    c = np.asarray(centre_lps, np.float64).reshape(3)
    return PlaneSpec(view, c, u, v, int(size_px), float(fov_mm) / size_px)


def oriented_plane(name: str, centre_lps: npt.ArrayLike, a_lps: npt.ArrayLike,
                   b_lps: npt.ArrayLike, fov_mm: float = 160.0,
                   size_px: int = 256) -> PlaneSpec:
    """The plane through ``centre_lps`` spanned by the directions ``a_lps`` and
    ``b_lps`` (an oblique reformat), shown as the standard view it is closest to (its
    columns and rows as near as the plane allows to :func:`display_axes`).

    Raises:
        ValueError: ``a`` and ``b`` (nearly) parallel.
    """
    a = np.asarray(a_lps, np.float64).reshape(3)
    b = np.asarray(b_lps, np.float64).reshape(3)
    n = np.cross(a, b)
    scale = float(np.linalg.norm(a) * np.linalg.norm(b))
    if float(np.linalg.norm(n)) < 1e-6 * max(scale, 1e-12):
        raise ValueError("a_lps and b_lps are parallel: they span no plane")
    n /= np.linalg.norm(n)
    view = VIEWS[int(np.argmax(np.abs(n)[[2, 1, 0]]))]
    right, down = display_axes(view)
    u = right - n * float(n @ right)
    if np.linalg.norm(u) < 1e-6:
        u = down - n * float(n @ down)
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    if v @ down < 0:
        v = -v
    return PlaneSpec(name, np.asarray(centre_lps, np.float64).reshape(3), u, v,
                     int(size_px), float(fov_mm) / size_px)


def sample_plane(voxels: np.ndarray, lps_to_ijk: npt.ArrayLike, spec: PlaneSpec,
                 order: int = 1, cval: float = -1024.0) -> npt.NDArray[np.float32]:
    """A volume ``voxels[k, j, i]`` resampled on ``spec``: (size, size) float32.

    Args:
        voxels: the volume (HU, or a label map with ``order=0``).
        lps_to_ijk: (4, 4) the volume's LPS -> voxel matrix.
        spec: the plane.
        order: 1 trilinear (images), 0 nearest (labels).
        cval: value outside the volume.
    """
    m = np.asarray(lps_to_ijk, np.float64)
    pts = spec.points_lps()
    ijk = pts @ m[:3, :3].T + m[:3, 3]
    n = spec.size_px
    out: npt.NDArray[np.float32] = ndimage.map_coordinates(
        voxels, ijk[:, ::-1].T, order=order, mode="constant", cval=cval,
        output=np.float32).reshape(n, n)
    return out


@dataclass(frozen=True)
class DisplayFlip:
    """How to show a 2D pixel grid in display orientation: transpose first, then flip.

    Attributes:
        view: the standard view the grid is closest to.
        transpose: swap rows and columns.
        flip_rows: upside down (after the transpose); flip_cols: left-right.
    """

    view: str
    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @property
    def identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_cols)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The image (rows, cols[, c]) in display orientation (a view, not a copy)."""
        out = image.swapaxes(0, 1) if self.transpose else image
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        return out

    def points(self, col_row: npt.ArrayLike, shape: tuple[int, ...]) -> F64:
        """(N, 2) pixel (column, row) of the original grid of ``shape`` (rows, cols) ->
        the same points in the displayed image."""
        p = np.atleast_2d(np.asarray(col_row, np.float64)).copy()
        rows, cols = shape[0], shape[1]
        if self.transpose:
            p = p[:, ::-1]
            rows, cols = cols, rows
        if self.flip_rows:
            p[:, 1] = rows - 1 - p[:, 1]
        if self.flip_cols:
            p[:, 0] = cols - 1 - p[:, 0]
        return p

    def axes(self, ijk_to_lps: npt.ArrayLike) -> tuple[F64, F64]:
        """(right_lps, down_lps) unit directions of the displayed image."""
        m = np.asarray(ijk_to_lps, np.float64)
        c = m[:3, 0] / np.linalg.norm(m[:3, 0])
        r = m[:3, 1] / np.linalg.norm(m[:3, 1])
        if self.transpose:
            c, r = r, c
        return (-c if self.flip_cols else c), (-r if self.flip_rows else r)


def display_flip(ijk_to_lps: npt.ArrayLike, prone: bool = False) -> DisplayFlip:
    """The transpose and flips that show a frame's pixel grid (``i`` = column, ``j`` =
    row) as a DICOM viewer shows that slice.

    The view is the standard one whose normal is closest to the grid's normal; of the 8
    ways to show the grid, the one whose axes come closest to :func:`display_axes` is
    taken (an oblique grid: the nearest).

    Args:
        ijk_to_lps: (4, 4) the frame's geometry (LPS mm).
        prone: a prone patient (axial: the back up). Not inferred from the storage: a
            NIfTI volume of a supine patient stored RAS (columns to the right, rows
            to anterior) looks exactly like a scanner's prone storage.
    """
    m = np.asarray(ijk_to_lps, np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"ijk_to_lps must be a finite 4x4 matrix, got shape {m.shape}")
    c, r = m[:3, 0], m[:3, 1]
    if np.linalg.norm(c) < 1e-9 or np.linalg.norm(r) < 1e-9:
        raise ValueError("ijk_to_lps has a zero column: no pixel grid")
    c, r = c / np.linalg.norm(c), r / np.linalg.norm(r)
    view = VIEWS[int(np.argmax(np.abs(np.cross(c, r))[[2, 1, 0]]))]
    right, down = display_axes(view, prone)
    best, best_score = DisplayFlip(view), -np.inf
    for t in (False, True):
        for fr in (False, True):
            for fc in (False, True):
                cand = DisplayFlip(view, t, fr, fc)
                u, v = cand.axes(m)
                score = float(u @ right + v @ down)
                if score > best_score + 1e-9:
                    best, best_score = cand, score
    return best


_LETTERS = (("L", _X), ("R", -_X), ("P", _Y), ("A", -_Y), ("S", _Z), ("I", -_Z))


def _letter(direction: F64) -> str:
    """The patient direction(s) of a unit vector: the dominant one, and a second one
    when it is at least half as strong (an oblique plane: ``LP``)."""
    d = np.asarray(direction, np.float64)
    scores = sorted(((float(d @ v), name) for name, v in _LETTERS), reverse=True)
    out = scores[0][1]
    if scores[1][0] >= 0.5 * scores[0][0] and scores[1][0] > 0.3:
        out += scores[1][1]
    return out


def edge_letters(right_lps: npt.ArrayLike, down_lps: npt.ArrayLike) -> dict[str, str]:
    """Orientation letters for the four edges of an image whose columns run along
    ``right_lps`` and rows along ``down_lps``: ``{"left": "R", "right": "L", "top": "A",
    "bottom": "P"}`` for a supine axial slice."""
    u = np.asarray(right_lps, np.float64)
    v = np.asarray(down_lps, np.float64)
    return {"left": _letter(-u), "right": _letter(u), "top": _letter(-v),
            "bottom": _letter(v)}


def scale_bar_mm(width_mm: float) -> float:
    """A round scale-bar length near a fifth of the image width, mm (1, 2, 5 x 10^n)."""
    if not width_mm > 0:
        raise ValueError(f"width_mm must be > 0, got {width_mm}")
    target = width_mm / 5.0
    base = 10.0 ** np.floor(np.log10(target))
    for k in (5.0, 2.0, 1.0):
        if k * base <= target:
            return float(k * base)
    return float(base)


_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT = (255, 255, 255)


def _text(rgb: np.ndarray, text: str, org: tuple[int, int], scale: float,
          colour: tuple[int, int, int] = _TEXT) -> None:
    """Text with a dark outline (readable on bone and on air)."""
    th = max(1, round(scale * 2))
    cv2.putText(rgb, text, org, _FONT, scale, (0, 0, 0), th + 2, cv2.LINE_AA)
    cv2.putText(rgb, text, org, _FONT, scale, colour, th, cv2.LINE_AA)


def annotate(rgb: np.ndarray, right_lps: npt.ArrayLike, down_lps: npt.ArrayLike,
             pixel_mm: float | None, legend: Sequence[tuple[str, tuple[int, int, int]]] = (),
             *, top_margin_px: int = 0, bottom_margin_px: int = 0) -> np.ndarray:
    """Burn orientation letters, a scale bar and a legend into ``rgb`` (in place).

    Args:
        rgb: (rows, cols, 3) uint8, already in display orientation.
        right_lps, down_lps: LPS directions of its columns and rows.
        pixel_mm: pixel size, mm (``None``: no scale bar, e.g. a projection whose
            magnification varies with depth).
        legend: (name, RGB) of what is drawn, listed top left.
        top_margin_px, bottom_margin_px: rows kept free (a banner, numbers).

    Returns:
        ``rgb``.
    """
    h, w = rgb.shape[:2]
    scale = max(0.35, min(h, w) / 700.0)
    pad = max(3, w // 100)
    (_, th), _ = cv2.getTextSize("M", _FONT, scale * 1.3, 2)
    if legend:
        # Top left under any banner, on a dark box; the letters go on top of it.
        small = scale * 0.6
        (_, lh), _ = cv2.getTextSize("Mg", _FONT, small, 1)
        line_h = int(lh * 1.7) + 2
        widths = [cv2.getTextSize(name, _FONT, small, 1)[0][0] for name, _ in legend]
        box_w = 3 * lh + max(widths) + 2 * pad
        y0 = top_margin_px + pad
        y1 = min(y0 + line_h * len(legend) + pad, h - bottom_margin_px)
        roi = rgb[y0:y1, pad:min(pad + box_w, w)]
        roi[...] = (roi * 0.35).astype(np.uint8)
        y = y0 + pad // 2 + lh + 2
        for name, colour in legend:
            if y > y1:
                break
            rgb_c = (int(colour[0]), int(colour[1]), int(colour[2]))
            cv2.line(rgb, (2 * pad, y - lh // 2), (2 * pad + 2 * lh, y - lh // 2), rgb_c,
                     max(2, round(scale * 3)))
            cv2.putText(rgb, name, (2 * pad + 3 * lh, y), _FONT, small, rgb_c, 1, cv2.LINE_AA)
            y += line_h
    for edge, text in edge_letters(right_lps, down_lps).items():
        (lw, _), _ = cv2.getTextSize(text, _FONT, scale * 1.3, 2)
        if edge == "left":
            org = (pad, h // 2 + th // 2)
        elif edge == "right":
            org = (w - lw - pad, h // 2 + th // 2)
        elif edge == "top":
            org = (w // 2 - lw // 2, top_margin_px + th + pad)
        else:
            org = (w // 2 - lw // 2, h - bottom_margin_px - pad)
        _text(rgb, text, org, scale * 1.3, (255, 255, 120))
    if pixel_mm is not None and pixel_mm > 0:
        bar = scale_bar_mm(w * pixel_mm)
        n = round(bar / pixel_mm)
        y = h - bottom_margin_px - pad - th // 2
        x1 = w - 2 * pad
        x0 = x1 - n
        thick = max(1, round(scale * 2))
        cv2.line(rgb, (x0, y), (x1, y), (0, 0, 0), thick + 2)
        cv2.line(rgb, (x0, y), (x1, y), _TEXT, thick)
        for x in (x0, x1):
            cv2.line(rgb, (x, y - th // 2), (x, y + th // 2), _TEXT, thick)
        label = f"{bar:g} mm"
        (bw, _), _ = cv2.getTextSize(label, _FONT, scale, 1)
        _text(rgb, label, ((x0 + x1) // 2 - bw // 2, y - th // 2 - 4), scale)
    return rgb


def legend_panel(height_px: int, legend: Sequence[tuple[str, tuple[int, int, int]]],
                 width_px: int = 190, title: str = "") -> np.ndarray:
    """A legend beside an image (nothing of the picture hidden): (height, width, 3)
    uint8 RGB, dark, one line per (name, RGB), the optional title first."""
    panel = np.full((int(height_px), int(width_px), 3), 24, np.uint8)
    scale = 0.45
    (_, lh), _ = cv2.getTextSize("Mg", _FONT, scale, 1)
    y = 10 + lh
    if title:
        cv2.putText(panel, title, (8, y), _FONT, scale, _TEXT, 1, cv2.LINE_AA)
        y += int(lh * 2.2)
    for name, colour in legend:
        rgb_c = (int(colour[0]), int(colour[1]), int(colour[2]))
        cv2.line(panel, (8, y - lh // 2), (26, y - lh // 2), rgb_c, 3)
        cv2.putText(panel, name, (32, y), _FONT, scale, rgb_c, 1, cv2.LINE_AA)
        y += int(lh * 1.9)
    return panel


def render_plane(ct: ImageVolume, spec: PlaneSpec, window: tuple[float, float],
                 structures: StructureSet | None = None, annotated: bool = True) -> np.ndarray:
    """The CT resampled on ``spec`` with structure outlines: (size, size, 3) uint8 RGB.

    Args:
        ct: the CT (HU).
        spec: the plane.
        window: (centre, width) in HU.
        structures: outlines where each structure's signed distance crosses 0.
        annotated: burn in orientation letters, a scale bar and the outlines' legend.
    """
    pts = spec.points_lps()
    n = spec.size_px
    vals = sample_plane(ct.voxels, ct.lps_to_ijk, spec)
    c, w = window
    gray = np.clip((vals - (c - w / 2)) * (255.0 / w), 0, 255).astype(np.uint8)
    rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    drawn: list[str] = []
    if structures is not None:
        sd = structures.sample(pts)
        for s, st in enumerate(structures.structures):
            inside = (sd[s] < 0).reshape(n, n).astype(np.uint8)
            if inside.any():
                contours, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL,
                                               cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(rgb, contours, -1, structure_rgb(st.name), 1)
                drawn.append(st.name)
    if annotated:
        annotate(rgb, spec.u_lps, spec.v_lps, spec.pixel_mm, structure_legend(drawn))
    return rgb
