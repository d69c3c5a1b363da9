"""Contact sheet of simulated frames with their ground truth drawn on, for a person to look at."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from guidance.sim.frames import SimFrame

__all__ = ["contact_sheet", "write_contact_sheet"]

log = logging.getLogger(__name__)

#: BGR outline colour per class name.
_COLOURS: dict[str, tuple[int, int, int]] = {
    "needle": (0, 255, 255),
    "nerve": (0, 200, 0),
    "vessel": (0, 0, 255),
    "vertebra": (255, 160, 0),
}


def _to_bgr8(frame: SimFrame) -> np.ndarray:
    img = frame.image.voxels[0]
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(img, dtype=np.uint8), cv2.COLOR_GRAY2BGR)


def contact_sheet(frames: Sequence[SimFrame], columns: int = 3, outline: bool = True) -> np.ndarray:
    """Tile frames side by side, each shown twice: plain, then with the ground truth
    (class outlines, tip as a circle, axis as a line behind the tip).

    Args:
        frames: frames of one size.
        columns: frames per row (each frame takes two tiles).
        outline: draw the ground truth on the second tile.

    Returns:
        (H, W, 3) uint8 BGR image.
    """
    if not frames:
        raise ValueError("frames must not be empty")
    tiles = []
    for f in frames:
        plain = _to_bgr8(f)
        drawn = plain.copy()
        if outline:
            t = f.truth
            for cid, name in enumerate(t.label_names):
                if name not in _COLOURS:
                    continue
                mask = (t.labels == cid).astype(np.uint8)
                contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(drawn, contours, -1, _COLOURS[name], 1)
            if t.needle_in_view and np.all(np.isfinite(t.tip_ij)):
                tip = (round(t.tip_ij[0]), round(t.tip_ij[1]))
                cv2.circle(drawn, tip, 5, (255, 0, 255), 1)
                if np.all(np.isfinite(t.axis_ij)):
                    back = t.tip_ij - 30.0 * t.axis_ij
                    cv2.line(drawn, tip, (round(back[0]), round(back[1])), (255, 0, 255), 1)
        label = f"#{f.index} t={f.t_s:.1f}s {'tip' if f.truth.needle_in_view else 'no tip'}"
        cv2.putText(drawn, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        tiles.append(np.hstack([plain, drawn]))
    h, w = tiles[0].shape[:2]
    rows = []
    for r in range(0, len(tiles), columns):
        row = tiles[r : r + columns]
        row += [np.zeros((h, w, 3), np.uint8)] * (columns - len(row))
        rows.append(np.hstack(row))
    return np.vstack(rows)


def write_contact_sheet(path: str | Path, frames: Sequence[SimFrame], columns: int = 3) -> Path:
    """Write :func:`contact_sheet` of ``frames`` as a PNG; returns the path."""
    p = Path(path)
    if not cv2.imwrite(str(p), contact_sheet(frames, columns)):
        raise OSError(f"{p}: could not write PNG")
    log.info("wrote contact sheet %s (%d frames)", p, len(frames))
    return p
