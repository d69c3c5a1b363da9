"""Frames to the model's grid and results back: resampling and normalisation.

A frame of any size is scaled (aspect kept) so that it fits the model grid, placed at
the grid's top-left corner, and the rest is padded with the normalised mean (0). Model
pixel centre (c, r) sits at frame pixel ``((c + 0.5) * scale - 0.5, (r + 0.5) * scale
- 0.5)``; :class:`GridMap` does both directions. Buffers are sized once per frame shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from models.card import ModelCard

__all__ = ["GridMap", "GridSpec", "InputError", "ModelInput", "normalise"]


class InputError(ValueError):
    """A frame the model cannot take (wrong dimensions, dtype, or empty)."""


@dataclass(frozen=True)
class GridSpec:
    """The part of a model card preprocessing needs (for data made before a card exists).

    Attributes:
        name: model name (for messages).
        input_shape: (rows, cols) of the model grid.
        normalisation: as :attr:`models.card.ModelCard.normalisation`.
    """

    name: str
    input_shape: tuple[int, int]
    normalisation: dict[str, object]


def normalise(img: np.ndarray, card: ModelCard | GridSpec,
              out: np.ndarray | None = None) -> np.ndarray:
    """Normalise a float32 2D image as the card says (``zscore`` or ``ct_window``).

    Args:
        img: (rows, cols) float32 image.
        card: the model card.
        out: optional float32 array of the same shape to write into.

    Returns:
        (rows, cols) float32.
    """
    out = np.empty_like(img, dtype=np.float32) if out is None else out
    norm = card.normalisation
    if norm["method"] == "zscore":
        mean, std = cv2.meanStdDev(img)
        np.subtract(img, np.float32(mean[0, 0]), out=out)
        out *= np.float32(1.0 / max(float(std[0, 0]), 1e-6))
    else:  # ct_window: HU window to [-1, 1]
        c, w = float(norm["center_hu"]), float(norm["width_hu"])  # type: ignore[arg-type]
        np.clip(img, c - w / 2, c + w / 2, out=out)
        out -= np.float32(c)
        out *= np.float32(2.0 / w)
    return out


@dataclass(frozen=True)
class GridMap:
    """How a frame maps onto the model grid.

    Attributes:
        frame_shape: (rows, cols) of the frame.
        used_shape: (rows, cols) of the part of the model grid the frame fills.
        scale: frame pixels per model pixel (> 1: the frame was shrunk).
        model_spacing_mm: model-grid spacing for this frame, mm per pixel (NaN when the
            frame's spacing is unknown).
    """

    frame_shape: tuple[int, int]
    used_shape: tuple[int, int]
    scale: float
    model_spacing_mm: float

    def to_frame_ij(self, model_ij: npt.ArrayLike) -> np.ndarray:
        """(..., 2) model-grid pixel coordinates (col, row) -> frame pixel coordinates."""
        return (np.asarray(model_ij, np.float64) + 0.5) * self.scale - 0.5

    def to_model_ij(self, frame_ij: npt.ArrayLike) -> np.ndarray:
        """(..., 2) frame pixel coordinates (col, row) -> model-grid pixel coordinates."""
        return (np.asarray(frame_ij, np.float64) + 0.5) / self.scale - 0.5

    def labels_to_frame(self, labels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(R, C) uint8 model-grid labels -> (rows, cols) uint8 on the frame grid
        (nearest neighbour)."""
        ur, uc = self.used_shape
        rows, cols = self.frame_shape
        if out is None:
            out = np.empty((rows, cols), np.uint8)
        src = np.ascontiguousarray(labels[:ur, :uc])
        if (ur, uc) == (rows, cols):
            out[...] = src
        else:
            cv2.resize(src, (cols, rows), dst=out, interpolation=cv2.INTER_NEAREST)
        return out


class ModelInput:
    """Turns frames into the network's input tensor, reusing one buffer.

    Args:
        card: the model card (grid shape and normalisation), or a :class:`GridSpec`.
    """

    def __init__(self, card: ModelCard | GridSpec) -> None:
        self.card = card
        rows, cols = card.input_shape
        self.tensor = np.zeros((1, 1, rows, cols), np.float32)
        self._key: tuple[object, ...] | None = None
        self._gray: np.ndarray | None = None
        self._small: np.ndarray | None = None
        self._map: GridMap | None = None

    def __call__(self, plane: np.ndarray, spacing_mm: float = math.nan) -> GridMap:
        """Fill :attr:`tensor` (1, 1, R, C) float32 from one frame.

        Args:
            plane: (rows, cols) grey or (rows, cols, 3|4) colour frame, any real dtype.
            spacing_mm: the frame's pixel spacing, mm (NaN: unknown).

        Returns:
            The frame -> model grid mapping.

        Raises:
            InputError: not a 2D image (or colour image), empty, or not a real dtype.
        """
        if plane.ndim == 3 and plane.shape[2] in (3, 4):
            colour = True
        elif plane.ndim == 2:
            colour = False
        else:
            raise InputError(f"model {self.card.name} takes a 2D frame (rows, cols) or colour "
                             f"(rows, cols, 3|4), got shape {plane.shape}")
        if plane.size == 0 or min(plane.shape[:2]) < 2:
            raise InputError(f"model {self.card.name}: frame too small, shape {plane.shape}")
        if plane.dtype.kind not in "uif":
            raise InputError(f"model {self.card.name}: frame dtype {plane.dtype} is not numeric")
        rows, cols = plane.shape[:2]
        R, C = self.card.input_shape
        scale = max(rows / R, cols / C)
        ur, uc = min(R, max(1, round(rows / scale))), min(C, max(1, round(cols / scale)))
        key = (plane.shape, plane.dtype.str, float(spacing_mm))
        if key != self._key:
            self._key = key
            self._gray = np.empty((rows, cols), np.float32)
            self._small = np.empty((ur, uc), np.float32)
            sp = float(spacing_mm) * scale if math.isfinite(spacing_mm) else math.nan
            self._map = GridMap((rows, cols), (ur, uc), float(scale), sp)
            self.tensor.fill(0.0)
        assert self._gray is not None and self._small is not None and self._map is not None
        if colour:
            np.mean(plane[..., :3], axis=2, dtype=np.float32, out=self._gray)
        else:
            self._gray[...] = plane
        if (ur, uc) == (rows, cols):
            self._small[...] = self._gray
        else:
            interp = cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR
            cv2.resize(self._gray, (uc, ur), dst=self._small, interpolation=interp)
        normalise(self._small, self.card, out=self.tensor[0, 0, :ur, :uc])
        return self._map
