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

__all__ = ["add_fluoro_distractors", "add_us_distractors", "add_us_hard_negatives"]

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


def _line_mask(h: int, w: int, pts: np.ndarray, thick_px: float) -> np.ndarray:
    """(h, w) float32 in [0, 1]: a polyline of ``thick_px``, edges blurred like the PSF."""
    line = np.zeros((h, w), np.uint8)
    cv2.polylines(line, [np.round(pts).astype(np.int32)], False, 255,
                  max(1, round(thick_px)), cv2.LINE_AA)
    m = cv2.GaussianBlur(line, (0, 0), max(0.5, thick_px / 3)).astype(np.float32) / 255
    return np.asarray(m, np.float32)


def _paint(img: np.ndarray, mask: np.ndarray, level: float, rng: np.random.Generator) -> None:
    """Blend a bright specular echo (``level``, speckled along its length) into ``img``."""
    speckle = rng.uniform(0.55, 1.0, img.shape).astype(np.float32)
    out = img.astype(np.float32) * (1 - mask) + mask * np.float32(level) * speckle
    img[...] = np.clip(np.maximum(out, img), 0, 255).astype(np.uint8)


def _shadow(img: np.ndarray, mask: np.ndarray, loss: float) -> None:
    """Darken the beam lines below a reflector (``loss``: remaining fraction)."""
    below = (np.cumsum(mask > 0.5, axis=0) > 0) & (mask < 0.5)
    img[below] = (img[below] * loss).astype(np.uint8)


def _straight_line(h: int, w: int, rng: np.random.Generator, angle_deg: float,
                   length_px: float, centre: np.ndarray, bend: float = 0.0) -> np.ndarray:
    """(n, 2) (x, y) points of a straight (``bend`` = 0) or gently curved segment."""
    a = math.radians(angle_deg)
    d = np.array([math.cos(a), math.sin(a)]) * length_px / 2
    nrm = np.array([-d[1], d[0]]) / max(float(np.linalg.norm(d)), 1e-9)
    return _bezier(centre - d, centre + nrm * bend * length_px, centre + d, 64)


def _fascia(img: np.ndarray, rng: np.random.Generator, px_per_mm: float) -> None:
    """Fascial planes and tendon sheaths: thin, straight, bright lines that cross the
    whole field (a needle ends in the picture: its tip), 0-35 degrees from the skin."""
    h, w = img.shape
    for _ in range(int(rng.integers(1, 4))):
        ang = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.0, 35.0))
        c = rng.uniform([0.3 * w, 0.08 * h], [0.7 * w, 0.9 * h])
        pts = _straight_line(h, w, rng, ang, 3.0 * max(h, w), c,
                             bend=float(rng.uniform(-0.01, 0.01)))
        m = _line_mask(h, w, pts, rng.uniform(0.15, 0.8) * px_per_mm)
        _paint(img, m, rng.uniform(150, 255), rng)


def _bone_surface(img: np.ndarray, rng: np.random.Generator, px_per_mm: float) -> None:
    """A bone's surface (lamina, transverse process, rib, humerus): a very bright,
    straight or gently curved line 8-40 mm long, -30 to 30 degrees, with a dense
    acoustic shadow beneath."""
    h, w = img.shape
    length = rng.uniform(8.0, 40.0) * px_per_mm
    c = rng.uniform([0.05 * w, 0.25 * h], [0.95 * w, 0.85 * h])
    pts = _straight_line(h, w, rng, float(rng.uniform(-30.0, 30.0)), length, c,
                         bend=float(rng.uniform(-0.08, 0.08)))
    m = _line_mask(h, w, pts, rng.uniform(0.4, 1.5) * px_per_mm)
    _shadow(img, m, float(rng.uniform(0.02, 0.25)))
    _paint(img, m, rng.uniform(200, 255), rng)


def _reverberation(img: np.ndarray, rng: np.random.Generator, px_per_mm: float) -> None:
    """Reverberation: A-lines (copies of a strong flat interface, e.g. the pleura or the
    probe's own face, at equal steps down the beam, each fainter) across the field, or a
    comet tail below a small strong reflector (short stacked dashes, the needle's
    reverberation without the needle)."""
    h, w = img.shape
    if rng.random() < 0.6:
        step = rng.uniform(3.0, 12.0) * px_per_mm
        y0 = rng.uniform(0.5, 15.0) * px_per_mm
        ang = float(rng.uniform(-4.0, 4.0))
        level = rng.uniform(140, 240)
        decay = rng.uniform(0.5, 0.9)
        x0, x1 = (0.0, float(w)) if rng.random() < 0.7 else sorted(rng.uniform(0, w, 2))
        k = 0
        while y0 + k * step < h and k < 8:
            y = y0 + k * step
            pts = np.array([[x0, y], [x1, y + (x1 - x0) * math.tan(math.radians(ang))]])
            m = _line_mask(h, w, pts, rng.uniform(0.2, 0.7) * px_per_mm)
            _paint(img, m, level * decay**k, rng)
            k += 1
    else:
        x = rng.uniform(0.1 * w, 0.9 * w)
        y = rng.uniform(0.1 * h, 0.7 * h)
        half = rng.uniform(0.5, 3.0) * px_per_mm
        step = rng.uniform(0.3, 1.0) * px_per_mm
        level = rng.uniform(180, 255)
        for k in range(int(rng.integers(4, 15))):
            yk = y + k * step
            if yk >= h:
                break
            m = _line_mask(h, w, np.array([[x - half, yk], [x + half, yk]]), 0.5 * step)
            _paint(img, m, level * 0.85**k, rng)


def _probe_artefacts(img: np.ndarray, rng: np.random.Generator, px_per_mm: float) -> None:
    """The probe's own artefacts: near-field ring-down (bright horizontal bands just
    below the face), a focal-zone band, a dead element's dark beam line, and a side-lobe
    ghost (a faint, laterally shifted copy of a bright straight echo)."""
    h, w = img.shape
    choice = rng.random()
    if choice < 0.35:  # ring-down: 1-4 full-width lines in the first 4 mm
        for k in range(int(rng.integers(1, 5))):
            y = rng.uniform(0.2, 4.0) * px_per_mm + k
            m = _line_mask(h, w, np.array([[0.0, y], [float(w), y]]),
                           rng.uniform(0.2, 0.8) * px_per_mm)
            _paint(img, m, rng.uniform(160, 255), rng)
    elif choice < 0.55:  # focal zone: a band of higher brightness
        y = rng.uniform(0.2, 0.8) * h
        band = np.exp(-0.5 * ((np.arange(h) - y) / (rng.uniform(2.0, 6.0) * px_per_mm)) ** 2)
        gain = 1.0 + rng.uniform(0.3, 0.9) * band[:, None]
        img[...] = np.clip(img * gain, 0, 255).astype(np.uint8)
    elif choice < 0.75:  # dead element(s): dark vertical stripe
        x = int(rng.integers(0, w))
        half = max(1, round(rng.uniform(0.3, 1.5) * px_per_mm))
        img[:, max(0, x - half):x + half] = (img[:, max(0, x - half):x + half]
                                             * rng.uniform(0.05, 0.4)).astype(np.uint8)
    else:  # side lobe: a bright straight echo and its faint shifted ghost
        c = rng.uniform([0.2 * w, 0.15 * h], [0.8 * w, 0.8 * h])
        ang = float(rng.uniform(-25.0, 25.0))
        length = rng.uniform(10.0, 30.0) * px_per_mm
        pts = _straight_line(h, w, rng, ang, length, c)
        thick = rng.uniform(0.4, 1.2) * px_per_mm
        _paint(img, _line_mask(h, w, pts, thick), rng.uniform(200, 255), rng)
        shift = np.array([rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 10.0) * px_per_mm, 0.0])
        _paint(img, _line_mask(h, w, pts + shift, thick), rng.uniform(70, 130), rng)


def _flat_arcs(img: np.ndarray, rng: np.random.Generator, px_per_mm: float) -> None:
    """Long, nearly straight arcs (the edge of a large vessel, a muscle belly, the
    humeral head seen close up): locally as straight as a needle over 5-10 mm."""
    h, w = img.shape
    length = rng.uniform(20.0, 60.0) * px_per_mm
    c = rng.uniform([0.05 * w, 0.1 * h], [0.95 * w, 0.95 * h])
    pts = _straight_line(h, w, rng, float(rng.uniform(0.0, 180.0)), length, c,
                         bend=float(rng.choice([-1.0, 1.0]) * rng.uniform(0.02, 0.1)))
    m = _line_mask(h, w, pts, rng.uniform(0.3, 1.5) * px_per_mm)
    if rng.random() < 0.4:
        _shadow(img, m, float(rng.uniform(0.15, 0.6)))
    _paint(img, m, rng.uniform(150, 255), rng)


_HARD = (_fascia, _bone_surface, _reverberation, _probe_artefacts, _flat_arcs)


def add_us_hard_negatives(image: np.ndarray, labels: np.ndarray, spacing_mm: float,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw 1-3 *straight* bright specular echoes that are not needles into an
    ultrasound frame: fascial planes crossing the field, bone surfaces with their
    shadow, reverberation (A-lines, a comet tail without a needle), the probe's own
    artefacts (ring-down, focal band, a dead element, a side-lobe ghost) and nearly
    straight arcs. Unlike :func:`add_us_distractors` (curved interfaces only) these are
    as straight as a needle over its visible length, so the network must use what else
    makes a needle: it ends in the picture (tip), is brighter than tissue all along,
    has its comet tail beneath, and is not parallel to the skin across the whole field.

    All are labelled background; the needle's pixels keep at least their brightness
    (a hard negative never hides the needle), and labels are returned unchanged.

    Args:
        image: (rows, cols) uint8 B-mode frame.
        labels: (rows, cols) uint8 class ids (1 = needle).
        spacing_mm: pixel spacing, mm.
        rng: the only source of randomness.

    Returns:
        (image, labels): new arrays.

    Raises:
        ValueError: not a 2D uint8 image with labels of its shape.
    """
    if image.ndim != 2 or image.dtype != np.uint8 or labels.shape != image.shape:
        raise ValueError(f"need a 2D uint8 image and labels of its shape, got {image.shape} "
                         f"{image.dtype} and {labels.shape}")
    img = image.copy()
    needle = labels == 1
    keep = img[needle].copy()
    px_per_mm = 1.0 / max(spacing_mm, 1e-3)
    for k in rng.choice(len(_HARD), size=int(rng.integers(1, 4)), replace=False):
        _HARD[int(k)](img, rng, px_per_mm)
    img[image == 0] = 0  # nothing echoes outside the field of view (sector, footprint)
    img[needle] = np.maximum(img[needle], keep)
    return img, labels.copy()


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
