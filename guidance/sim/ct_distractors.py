"""What a CT slice shows besides the needle, drawn so that "bright" never means "needle".

:func:`draw_distractors` draws radio-opaque skin markers (dots on the posterior skin with
small streaks of their own), calcifications, a contrast-filled vessel segment and a
positioning device in the room air (:func:`draw_shell`: head holder, couch top,
immobilisation shell). :func:`head_slice_hu` is a whole synthetic axial head slice: the
real CT has no skull, and a model that never saw one takes the straight stretches of its
tables for needles.

All draw in place on a (size, size) float32 HU image of a :class:`PixelGrid`, with
partial volume at the edges; randomness only from the ``rng`` passed in.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from guidance.sim.ct_needle_render import PixelGrid, star
from guidance.sim.ct_slice_params import AIR_HU, MIN_HU

__all__ = ["draw_distractors", "draw_shell", "head_slice_hu", "room_air"]

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]


def draw_distractors(
    grid: PixelGrid,
    probability: float,
    img: F32,
    rng: np.random.Generator,
    target: F64,
    u: F64,
    v: F64,
    centre: F64,
    spacing: float,
) -> tuple[str, ...]:
    """Bright non-needle things, each kind with chance ``probability``, drawn in place.

    Args:
        grid: the image's pixels.
        probability: chance, per kind, that it is drawn.
        img: (size, size) float32 HU, changed in place.
        rng: the frame's random generator.
        target: (3,) LPS mm, where the skin markers are sought from (towards posterior).
        u, v: (3,) the image's column and row directions, LPS unit vectors.
        centre: (3,) LPS mm of the image centre.
        spacing: pixel spacing, mm.

    Returns:
        The names of the kinds drawn (``skin_markers``, ``calcification``,
        ``contrast_vessel``, ``positioning_device``), in that order.
    """
    names: list[str] = []
    c = (grid.size - 1) / 2.0
    di, dj = grid.di, grid.dj
    if rng.random() < probability:
        # Radio-opaque skin grid / markers: dots on the posterior skin.
        start = np.array([c + (target - centre) @ u / spacing,
                          c + (target - centre) @ v / spacing])
        post = np.array([u[1], v[1]])  # posterior (+y) in pixel coordinates
        base = math.atan2(post[1], post[0]) + rng.uniform(-1.0, 1.0)
        gap_rad = rng.uniform(5.0, 10.0) / 70.0
        n_dots = int(rng.integers(3, 10))
        radius = float(rng.uniform(0.4, 1.2))
        hu = float(rng.uniform(800.0, 3071.0))
        drawn = 0
        for k in range(n_dots):
            ang = base + (k - n_dots / 2) * gap_rad
            pos = _skin_in_image(grid, img, start, np.array([math.cos(ang), math.sin(ang)]))
            if pos is None:
                continue
            d = np.hypot(di - np.float32(pos[0] - c), dj - np.float32(pos[1] - c)) * spacing
            f = np.clip(radius - d + 0.5 * spacing, 0.0, spacing) / spacing
            img += f.astype(np.float32) * (np.float32(hu) - img)
            star(grid, img, rng, pos, 0.04 * hu * radius, spacing)
            drawn += 1
        if drawn:
            names.append("skin_markers")
    soft = (img > -50) & (img < 150)
    if rng.random() < probability and soft.any():
        for _ in range(int(rng.integers(1, 4))):
            _blob(grid, img, rng, soft, (0.7, 2.5), (400.0, 1500.0), spacing)
        names.append("calcification")
    if rng.random() < probability and soft.any():
        _blob(grid, img, rng, soft, (2.0, 7.0), (150.0, 400.0), spacing)
        names.append("contrast_vessel")
    air = room_air(img)
    if rng.random() < probability and air.any():
        draw_shell(grid, img, rng, air, spacing)
        names.append("positioning_device")
    return tuple(names)


def head_slice_hu(grid: PixelGrid, rng: np.random.Generator, spacing: float) -> F32:
    """A synthetic axial head slice, (size, size) float32 HU: an irregular ellipse
    (semi-axes 60-82 x 72-100 mm, placed anywhere in the field) of scalp (2-7 mm,
    up to 14 mm more at the temples, 15-65 HU), skull (outer table 0.8-2.5 mm and
    inner table 0.7-2.2 mm of 900-2000 HU, diploe 0-7 mm of 250-900 HU, all varying
    around the head, thinning at the temples to one plate without diploe), CSF
    (0.3-3 mm, 0-15 HU) and textured brain (22-45 HU, often with two ventricles), in
    air."""
    x0 = grid.di * np.float32(spacing)
    y0 = grid.dj * np.float32(spacing)
    fov = spacing * grid.size
    cx, cy = rng.uniform(-0.3, 0.3, size=2) * fov
    ang = rng.uniform(-0.5, 0.5)
    ca, sa = np.float32(math.cos(ang)), np.float32(math.sin(ang))
    x = (x0 - np.float32(cx)) * ca + (y0 - np.float32(cy)) * sa
    y = -(x0 - np.float32(cx)) * sa + (y0 - np.float32(cy)) * ca
    a, b = rng.uniform(60.0, 82.0), rng.uniform(72.0, 100.0)
    theta = np.arctan2(y / np.float32(b), x / np.float32(a))

    def harmonics(amp: float) -> F32:
        out = np.ones_like(theta)
        for k in range(2, 6):
            out += np.float32(rng.uniform(-amp, amp) / k) * np.cos(
                np.float32(k) * theta + np.float32(rng.uniform(0, 2 * np.pi)))
        return out

    rho = np.hypot(x / np.float32(a), y / np.float32(b)) / harmonics(0.06)
    depth = (1.0 - rho) * np.float32(0.5 * (a + b))  # mm inside the skull's outer surface
    # Temporal squama: the skull thins towards the sides to a single thin plate
    # without diploe, under the thick temporalis muscle.
    side = np.abs(np.cos(theta)) ** np.float32(rng.uniform(2.0, 6.0))
    thin = 1.0 - np.float32(rng.uniform(0.3, 0.85)) * side
    outer = rng.uniform(0.8, 2.5) * harmonics(0.6) * thin
    diploe = np.maximum(rng.uniform(0.0, 7.0) * harmonics(1.2), 0.0) * (1.0 - side)
    inner = rng.uniform(0.7, 2.2) * harmonics(0.6) * thin
    csf = rng.uniform(0.3, 3.0)
    scalp = rng.uniform(2.0, 7.0) + np.float32(rng.uniform(0.0, 14.0)) * side
    bounds = [-scalp, 0.0, outer, outer + diploe,
              outer + diploe + inner, outer + diploe + inner + csf]
    noise = rng.standard_normal((grid.size, grid.size)).astype(np.float32)
    texture = np.asarray(cv2.GaussianBlur(noise, (0, 0), max(2.0 / spacing, 0.5)),
                         dtype=np.float32)
    texture /= max(float(texture.std()), 1e-6)
    cortex = rng.uniform(900.0, 2000.0)
    hu_layers: list[F32 | np.float32] = [
        np.float32(rng.uniform(15.0, 65.0)),  # scalp and temporalis
        np.float32(cortex) * (1 + 0.05 * texture),  # outer table
        np.float32(rng.uniform(250.0, 900.0)) + np.float32(120.0) * texture,  # diploe
        np.float32(cortex * rng.uniform(0.85, 1.15)) * (1 + 0.05 * texture),  # inner
        np.float32(rng.uniform(0.0, 15.0)),  # CSF
        np.float32(rng.uniform(22.0, 45.0)) + np.float32(4.0) * texture,  # brain
    ]
    img = np.full(x.shape, np.float32(MIN_HU + 24.0))
    half_px = np.float32(0.5 * spacing)
    for edge, hu in zip(bounds, hu_layers, strict=True):
        # Partial volume: the share of the pixel deeper than this boundary.
        f = np.clip((depth - np.asarray(edge, np.float32) + half_px) / np.float32(spacing),
                    0.0, 1.0)
        img += f * (hu - img)
    if rng.random() < 0.6:  # lateral ventricles
        for lr in (-1.0, 1.0):
            vx = x - np.float32(lr * rng.uniform(4.0, 10.0))
            vy = y - np.float32(rng.uniform(-15.0, 5.0))
            r = np.hypot(vx / np.float32(rng.uniform(3.0, 8.0)),
                         vy / np.float32(rng.uniform(12.0, 25.0)))
            f = np.clip((1.0 - r) * np.float32(3.0 / spacing), 0.0, 1.0)
            img += f * (np.float32(rng.uniform(0.0, 12.0)) - img)
    return img


def room_air(img: F32) -> np.ndarray:
    """(size, size) bool: the air around the patient: dark regions that reach the
    image border and are as dark as room air on average (lungs are not)."""
    lab, n = ndimage.label(img < -500.0)
    if n == 0:
        return np.zeros(img.shape, bool)
    ids = np.arange(1, n + 1)
    mean = np.asarray(ndimage.mean(img, lab, ids))
    edge = np.zeros(n + 1, bool)
    edge[np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])] = True
    keep = np.zeros(n + 1, bool)
    keep[ids] = (mean < -950.0) & edge[ids]
    return keep[lab]


def draw_shell(grid: PixelGrid, img: F32, rng: np.random.Generator, air: np.ndarray,
               spacing: float) -> None:
    """A positioning device outside the patient (head holder, couch top,
    immobilisation shell): a thin curved plastic or carbon shell, 0.7-3 mm thick,
    150-1200 HU, radius 60-300 mm, drawn in air only."""
    jj, ii = np.nonzero(air)
    k = int(rng.integers(len(ii)))
    c = (grid.size - 1) / 2.0
    radius = rng.uniform(60.0, 300.0)
    phi = rng.uniform(0.0, 2.0 * np.pi)
    cx = ii[k] - c + radius / spacing * math.cos(phi)  # centre, offset pixels
    cy = jj[k] - c + radius / spacing * math.sin(phi)
    x = (grid.di - np.float32(cx)) * np.float32(spacing)
    y = (grid.dj - np.float32(cy)) * np.float32(spacing)
    dist = np.abs(np.hypot(x, y) - np.float32(radius))
    half = np.float32(0.5 * rng.uniform(0.7, 3.0))
    f = np.clip(half - dist + np.float32(0.5 * spacing), 0.0, spacing) / np.float32(spacing)
    # Only an arc of it, centred on the chosen air pixel.
    ang = np.arctan2(-y, -x) - np.float32(phi)
    ang = np.abs((ang + np.float32(np.pi)) % np.float32(2 * np.pi) - np.float32(np.pi))
    f[ang > np.float32(math.radians(rng.uniform(20.0, 80.0)))] = 0.0
    f[~air] = 0.0
    img += f.astype(np.float32) * (np.float32(rng.uniform(150.0, 1200.0)) - img)


def _blob(
    grid: PixelGrid,
    img: F32,
    rng: np.random.Generator,
    where: np.ndarray,
    radius_mm: tuple[float, float],
    hu: tuple[float, float],
    spacing: float,
) -> None:
    """An ellipse of ``radius_mm`` semi-axes and ``hu`` HU (ranges) centred on a pixel
    of ``where``, drawn in place with a soft edge."""
    jj, ii = np.nonzero(where)
    k = int(rng.integers(len(ii)))
    c = (grid.size - 1) / 2.0
    ra, rb = rng.uniform(*radius_mm), rng.uniform(*radius_mm)
    ang = rng.uniform(0, np.pi)
    x = (grid.di - np.float32(ii[k] - c)) * np.float32(spacing)
    y = (grid.dj - np.float32(jj[k] - c)) * np.float32(spacing)
    ca, sa = np.float32(math.cos(ang)), np.float32(math.sin(ang))
    xr, yr = x * ca + y * sa, -x * sa + y * ca
    rho = np.sqrt((xr / np.float32(ra)) ** 2 + (yr / np.float32(rb)) ** 2)
    # Soft edge about one pixel wide.
    f = np.clip((1.0 - rho) * np.float32(min(ra, rb) / spacing) + 0.5, 0.0, 1.0)
    img += f * (np.float32(rng.uniform(*hu)) - img)


def _skin_in_image(grid: PixelGrid, img: F32, start: F64, direction: F64) -> F64 | None:
    """Pixel (col, row) just outside the skin walking from ``start``; None if none."""
    steps = np.arange(0.0, 2.0 * grid.size, 1.0)
    pts = start[None, :] + steps[:, None] * direction[None, :]
    ii, jj = np.rint(pts[:, 0]).astype(int), np.rint(pts[:, 1]).astype(int)
    ok = (ii >= 0) & (ii < grid.size) & (jj >= 0) & (jj < grid.size)
    if not ok.all():
        n_ok = int(np.argmin(ok)) if ok[0] else 0
        ii, jj = ii[:n_ok], jj[:n_ok]
    if len(ii) < 6:
        return None
    air = img[jj, ii] < AIR_HU
    body = np.flatnonzero(~air)
    if len(body) == 0:
        return None
    after = np.flatnonzero(air[body[0]:]) + body[0]
    if len(after) == 0:
        return None
    k = int(after[0])
    pos: F64 = pts[k] + 0.5 * direction  # sit on the skin, not in it
    return pos
