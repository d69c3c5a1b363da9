"""Domain randomisation beyond the simulators' scenes: things that are not needles
(ultrasound; fluoroscopy: :func:`add_fluoro_distractors`).

The B-mode simulator draws one nerve-block scene through a linear probe. Real
ultrasound also has bright tissue interfaces of every shape (fascia, tendon, bone
surfaces with their shadows, heart walls), sector-shaped fields of view from curved and
phased arrays, and on-screen text, rulers and markers. A model that has only seen the
simulator takes any bright oblique line for a needle. These distractors are drawn into
the frame *after* simulation and are labelled background (what was under them keeps
its label), so the network must learn what makes a needle a needle: straight, very
bright, uniform along its length, with reverberations beneath, entering from the side.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["add_fluoro_distractors", "add_us_distractors"]

_TEXTS = ("GAIN 54", "DR 60", "12L-RS", "FR 31", "L12-5", "MI 1.1", "TIS 0.4", "2D", "CF",
          "C5-1", "DEPTH 4.0", "PWR 100%", "Nerve", "Abd", "ABD", "R", "L", "Freq 8.0")


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def _interfaces(img: np.ndarray, rng: np.random.Generator, px_per_mm: float) -> None:
    """Bright speckled curved bands (tissue interfaces), some with a shadow below."""
    h, w = img.shape
    for _ in range(int(rng.integers(1, 5))):
        length = rng.uniform(8.0, 45.0) * px_per_mm
        ang = rng.uniform(0, math.pi)
        c = rng.uniform([0.05 * w, 0.1 * h], [0.95 * w, 0.95 * h])
        d = np.array([math.cos(ang), math.sin(ang)]) * length / 2
        bend = rng.choice([-1.0, 1.0]) * rng.uniform(0.06, 0.4) * length  # never straight
        nrm = np.array([-d[1], d[0]]) / max(float(np.linalg.norm(d)), 1e-9)
        pts = _bezier(c - d, c + nrm * bend, c + d, 64)
        thick = max(1, round(rng.uniform(0.5, 3.0) * px_per_mm))
        line = np.zeros((h, w), np.uint8)
        cv2.polylines(line, [np.round(pts).astype(np.int32)], False, 255, thick)
        mask = cv2.GaussianBlur(line, (0, 0), max(0.6, thick / 3)).astype(np.float32) / 255
        speckle = rng.uniform(0.4, 1.0, (h, w)).astype(np.float32)
        level = rng.uniform(140, 255)
        out = img.astype(np.float32) * (1 - mask) + mask * level * speckle
        if rng.random() < 0.4:  # acoustic shadow below a strong reflector (bone)
            below = np.cumsum(mask > 0.5, axis=0) > 0
            out[below & (mask < 0.5)] *= rng.uniform(0.15, 0.6)
        img[...] = np.clip(out, 0, 255).astype(np.uint8)


def _sector(img: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> bool:
    """Black out everything outside a fan (curved/phased array), unless that would cut
    the needle (its label must stay whole). Returns True when applied."""
    h, w = img.shape
    apex = np.array([w / 2 + rng.uniform(-0.1, 0.1) * w, -rng.uniform(0.0, 0.6) * h])
    half = math.radians(rng.uniform(30.0, 50.0))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = np.arctan2(xx - apex[0], yy - apex[1])
    r = np.hypot(xx - apex[0], yy - apex[1])
    r0 = -apex[1] + rng.uniform(0.0, 0.08) * h
    inside = (np.abs(ang) <= half) & (r >= r0)
    if np.any((labels == 1) & ~inside):
        return False
    img[~inside] = 0
    labels[~inside] = 0
    return True


def _overlays(img: np.ndarray, rng: np.random.Generator) -> None:
    """On-screen text, a depth ruler and focus markers along the edges."""
    h, w = img.shape
    for _ in range(int(rng.integers(1, 6))):
        txt = str(rng.choice(_TEXTS))
        x = int(rng.choice([rng.integers(0, max(1, w // 8)), rng.integers(w * 3 // 4, w - 10)]))
        y = int(rng.integers(12, h - 2))
        cv2.putText(img, txt, (x, y), cv2.FONT_HERSHEY_SIMPLEX, rng.uniform(0.25, 0.5) * w / 256,
                    int(rng.integers(150, 256)), 1, cv2.LINE_AA)
    if rng.random() < 0.6:  # depth ruler with ticks
        x = int(rng.choice([rng.integers(1, 6), w - int(rng.integers(2, 8))]))
        step = max(4, int(rng.uniform(0.04, 0.1) * h))
        for y in range(step, h, step):
            cv2.line(img, (x, y), (x + int(rng.integers(2, 6)) * (1 if x < w // 2 else -1), y),
                     int(rng.integers(150, 256)), 1)
    if rng.random() < 0.4:  # focus marker triangle
        y = int(rng.integers(h // 5, 4 * h // 5))
        x = w - 6
        cv2.fillPoly(img, [np.array([[x, y], [x + 5, y - 4], [x + 5, y + 4]], np.int32)], 220)


def _blobs(img: np.ndarray, rng: np.random.Generator, px_per_mm: float) -> None:
    """Bright calcification-like spots and dark cysts/vessels in cross-section."""
    h, w = img.shape
    for _ in range(int(rng.integers(0, 4))):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        ax = (max(1, round(rng.uniform(0.5, 6.0) * px_per_mm)),
              max(1, round(rng.uniform(0.5, 6.0) * px_per_mm)))
        val = int(rng.choice([int(rng.integers(200, 256)), int(rng.integers(0, 25))]))
        cv2.ellipse(img, c, ax, float(rng.uniform(0, 180)), 0, 360, val, -1)


def add_us_distractors(image: np.ndarray, labels: np.ndarray, spacing_mm: float,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw non-needle structures into an ultrasound frame.

    Args:
        image: (rows, cols) uint8 B-mode frame.
        labels: (rows, cols) uint8 class ids (1 = needle).
        spacing_mm: pixel spacing, mm.
        rng: the only source of randomness.

    Returns:
        (image, labels): new arrays; labels change only where a sector mask blacks out
        the frame (set to background there; never applied across the needle).
    """
    if image.ndim != 2 or image.dtype != np.uint8 or labels.shape != image.shape:
        raise ValueError(f"need a 2D uint8 image and labels of its shape, got {image.shape} "
                         f"{image.dtype} and {labels.shape}")
    img = image.copy()
    lab = labels.copy()
    px_per_mm = 1.0 / max(spacing_mm, 1e-3)
    needle = lab == 1
    keep = img[needle].copy()
    if rng.random() < 0.7:
        _interfaces(img, rng, px_per_mm)
    if rng.random() < 0.4:
        _blobs(img, rng, px_per_mm)
    img[needle] = np.maximum(img[needle], keep)  # a distractor never hides the needle
    if rng.random() < 0.35:
        _sector(img, lab, rng)
    if rng.random() < 0.5:
        _overlays(img, rng)
    return img, lab


_MARKERS = ("L", "R", "A", "P", "LAO", "RAO", "AP", "LAT", "1", "2")
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
          cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN)


def _shutters(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator) -> None:
    """Collimator shutters / field padding: from 1-4 sides, a straight edge (tilted up to
    10 degrees, penumbra 0-3 px) beyond which the frame is one flat level; never across
    the needle. What lies under a shutter is invisible: labelled background."""
    h, w = img.shape
    lo, hi = float(img.min()), float(img.max())
    needle = lab == 1
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    for side in rng.permutation(4)[: int(rng.integers(1, 5))]:
        depth = rng.uniform(0.05, 0.25)
        tilt = math.radians(rng.uniform(-10.0, 10.0))
        if side in (0, 1):  # top / bottom: signed distance into the shutter, pixels
            d = (depth * h - yy if side == 0 else yy - (1 - depth) * h) \
                + (xx - w / 2) * math.tan(tilt)
        else:  # left / right
            d = (depth * w - xx if side == 2 else xx - (1 - depth) * w) \
                + (yy - h / 2) * math.tan(tilt)
        inside = d > 0
        level = float(rng.choice([lo, hi, rng.uniform(lo, hi)]))
        soft = float(rng.uniform(0.0, 3.0))
        a = np.clip(d / soft + 0.5, 0.0, 1.0) if soft > 0.3 else inside.astype(np.float32)
        if ((a > 0) & needle).any():  # penumbra included
            continue
        img[...] = img * (1 - a) + np.float32(level) * a
        lab[inside] = 0


def _lead_markers(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator,
                  px_per_mm: float, variety: bool = True) -> None:
    """Radiopaque letters and numbers (lead side markers, ruler digits), 8-25 mm high,
    never over the needle; with ``variety`` in one of five fonts, some in a frame (a
    marker holder), else in one font without frames."""
    h, w = img.shape
    lo, hi = float(img.min()), float(img.max())
    for _ in range(int(rng.integers(1, 3))):
        text = str(rng.choice(_MARKERS))
        font = int(rng.choice(_FONTS)) if variety else cv2.FONT_HERSHEY_SIMPLEX
        height_px = rng.uniform(8.0, 25.0) * px_per_mm
        scale = height_px / 22.0  # the Hershey fonts are about 22 px high at scale 1
        thick = max(1, round(rng.uniform(0.08, 0.2) * height_px))
        org = (int(rng.integers(0, max(1, w - 10))), int(rng.integers(int(height_px), h)))
        m = np.zeros((h, w), np.uint8)
        cv2.putText(m, text, org, font, scale, 1, thick, cv2.LINE_AA)
        if variety and rng.random() < 0.4:
            (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
            pad = max(2, round(0.25 * height_px))
            cv2.rectangle(m, (org[0] - pad, org[1] - th - pad), (org[0] + tw + pad, org[1] + pad),
                          1, max(1, thick // 2))
        mask = m > 0
        if (mask & (lab == 1)).any():
            continue
        img[mask] = np.float32(hi if rng.random() < 0.7 else lo)


def _bones(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator,
           px_per_mm: float) -> None:
    """Projected tubular bones (ribs, clavicles, spinous processes, long-bone cortex):
    bands 3-20 mm wide along gently curved or straight paths, 30-200 mm long, whose
    profile is a hollow cylinder's chord length (bright cortical edges, dimmer middle:
    the tram-track look of a radiograph). Added to the display image with the polarity
    the frame shows bone in (from its vertebra label), so a needle under one stays
    visible and keeps its label."""
    h, w = img.shape
    lo, hi = (float(v) for v in np.percentile(img, [1.0, 99.0]))
    vert = lab == 2
    if vert.any() and (~vert).any():
        sign = 1.0 if float(img[vert].mean()) >= float(img[~vert].mean()) else -1.0
    else:
        sign = 1.0 if rng.random() < 0.7 else -1.0
    total = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 5))):
        length = rng.uniform(30.0, 200.0) * px_per_mm
        radius = rng.uniform(1.5, 10.0) * px_per_mm
        inner = radius * rng.uniform(0.5, 0.85)
        ang = rng.uniform(0, math.pi)
        c = rng.uniform([0.0, 0.0], [w, h])
        d = np.array([math.cos(ang), math.sin(ang)]) * length / 2
        bend = rng.choice([-1.0, 1.0]) * rng.uniform(0.0, 0.25) * length
        mid = c + bend * np.array([-math.sin(ang), math.cos(ang)])
        pts = _bezier(c - d, mid, c + d, max(20, int(length)))
        line = np.full((h, w), 255, np.uint8)
        cv2.polylines(line, [np.round(pts).astype(np.int32)], False, 0, 1, cv2.LINE_AA)
        if line.min() > 127:  # the bone runs outside the frame
            continue
        dist = cv2.distanceTransform((line > 127).astype(np.uint8), cv2.DIST_L2, 5)
        chord = np.sqrt(np.maximum(radius**2 - dist**2, 0.0)) \
            - np.sqrt(np.maximum(inner**2 - dist**2, 0.0))
        total += np.float32(rng.uniform(0.1, 0.5) / radius) * chord.astype(np.float32)
    img += np.float32(sign * (hi - lo)) * total
    np.clip(img, 0.0, 65535.0, out=img)  # the 16-bit display range


def add_fluoro_distractors(image: np.ndarray, labels: np.ndarray, spacing_mm: float,
                           rng: np.random.Generator, *,
                           variety: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Draw what real fluoroscopy and radiographs show besides the simulated anatomy into
    a simulated frame: collimator shutters and field padding (long straight edges), lead
    markers (dense straight strokes) and projected tubular bones (ribs, clavicles,
    spinous processes: the one CT's DRRs show few sharp ones). All are labelled
    background; shutters and markers never cross the needle, bones add to it.

    Args:
        image: (rows, cols) display frame (any real dtype; returned as float32).
        labels: (rows, cols) uint8 class ids (1 = needle).
        spacing_mm: pixel spacing, mm.
        rng: the only source of randomness.
        variety: also projected bones, marker fonts and holders (training); False: only
            shutters and plain markers, the held-out set's distractors (fewer draws
            from ``rng``, so the held-out frames stay those the models were first
            measured on).

    Returns:
        (image float32, labels): new arrays.

    Raises:
        ValueError: not a 2D image with labels of its shape.
    """
    if image.ndim != 2 or labels.shape != image.shape:
        raise ValueError(f"need a 2D image and labels of its shape, got {image.shape} and "
                         f"{labels.shape}")
    img = image.astype(np.float32)
    lab = labels.copy()
    if variety and rng.random() < 0.6:  # under the shutters and markers
        _bones(img, lab, rng, 1.0 / max(spacing_mm, 1e-3))
    if rng.random() < 0.6:
        _shutters(img, lab, rng)
    if rng.random() < 0.5:
        _lead_markers(img, lab, rng, 1.0 / max(spacing_mm, 1e-3), variety)
    return img, lab
