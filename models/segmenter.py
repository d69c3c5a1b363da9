"""The segmenter: one model card, one backend, frames in, label maps out.

:class:`Segmenter` loads a card (hash checked), picks a backend through the fallback
chain (:mod:`models.backends`), and per frame resamples and normalises it to the model
grid (:class:`models.preprocess.ModelInput`), runs the network and takes the arg-max
class per pixel. Every buffer is sized at load (or when the frame shape changes), so
``segment`` allocates nothing large per frame; the records it returns point into those
buffers and are valid until the next call.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.backends import (
    Backend,
    BackendOptions,
    Fallback,
    degraded_reason,
    load_backend_chain,
)
from models.card import ModelCard, load_card
from models.preprocess import GridMap, InputError, ModelInput

__all__ = ["FOCUS_BACKENDS", "InputError", "Segmentation", "Segmenter", "argmax_labels"]

log = logging.getLogger(__name__)

#: Backends that run a focus window (any input size): the CPU ones.
FOCUS_BACKENDS = ("onnxruntime-cpu", "torch-cpu")


@dataclass(frozen=True)
class Segmentation:
    """One segmented frame. ``labels`` and ``probs`` are the segmenter's buffers:
    valid until its next ``segment`` call; copy them to keep them.

    Attributes:
        labels: (R, C) uint8 class id per model-grid pixel (arg-max of ``probs``); only
            ``labels[:grid.used_shape[0], :grid.used_shape[1]]`` covers the frame (see
            :meth:`GridMap.labels_to_frame`).
        probs: (n_classes, R, C) float32 softmax probabilities (a view of the backend's
            output).
        grid: how the frame maps onto the model grid.
        backend: name of the backend that ran.
        infer_ms: time in the backend's ``run``, ms.
        total_ms: time of the whole ``segment`` call (resample, normalise, network,
            arg-max), ms.
        spacing_ok: the frame's model-grid spacing lies in the card's
            ``spacing_range_mm`` (True when the spacing is unknown).
        image: (R, C) float32 the network's input (resampled, normalised; a view of
            the segmenter's input buffer), for checks on the picture itself
            (:func:`trackers.needle_fit.flank_asymmetry`).
        window: ``(r0, c0, r1, c1)`` of the model grid where the network ran when it ran
            on a focus window only (``segment(..., focus_ij=...)``): outside it
            ``probs`` is background 1.0 and ``labels`` 0, i.e. not looked at; None: the
            whole grid.
    """

    labels: np.ndarray
    probs: np.ndarray
    grid: GridMap
    backend: str
    infer_ms: float
    total_ms: float
    spacing_ok: bool
    image: np.ndarray
    window: tuple[int, int, int, int] | None = None


def argmax_labels(probs: np.ndarray, out: np.ndarray, scratch: np.ndarray,
                  mask: np.ndarray, consts: Sequence[np.ndarray]) -> np.ndarray:
    """Arg-max over classes into a uint8 map, ties to the lower class (as ``np.argmax``).

    A compare chain in OpenCV: about 20x faster than ``np.argmax(axis=0)`` on a
    (4, 256, 256) array, which reduces along the slow axis and returns int64.

    Args:
        probs: (C, R, W) float32, each plane C-contiguous.
        out: (R, W) uint8, written.
        scratch: (R, W) float32 work buffer (running maximum).
        mask: (R, W) uint8 work buffer.
        consts: C planes (R, W) uint8, plane c filled with c.

    Returns:
        ``out``.
    """
    out.fill(0)
    np.copyto(scratch, probs[0])
    for c in range(1, probs.shape[0]):
        cv2.compare(probs[c], scratch, cv2.CMP_GT, dst=mask)
        cv2.copyTo(consts[c], mask, dst=out)
        cv2.max(scratch, probs[c], dst=scratch)
    return out


class Segmenter:
    """A model card loaded on the best working backend of a chain. Not thread-safe:
    one caller (the pipeline's segment stage) at a time.

    Args:
        card_path: the model card (JSON) beside its ONNX file.
        chain: backend chain, ``"auto"`` or names (see
            :func:`models.backends.load_backend_chain`).
        threads: CPU threads for ONNX Runtime / torch CPU (None: default); ignored when
            ``options`` is given.
        options: full backend options.
        input_shape: run the network on this (rows, cols) grid instead of the card's
            (multiples of 16); for benchmarks, the network was trained on the card's.
        focus_px: side of the focus window, model-grid pixels (a multiple of 16 smaller
            than the grid; 0: none): ``segment(..., focus_ij=p)`` then runs the network
            on that window of the model grid around ``p`` only (the same resampled,
            normalised input as the whole frame, cropped: a fully convolutional
            network sees the same pixels). CPU backends only (``onnxruntime-cpu``,
            ``torch-cpu``): a TensorRT engine's profile starts at the card's grid, and a
            GPU does not need it.

    Attributes:
        card: the model card (with ``input_shape`` overridden if asked).
        onnx_path: its ONNX file.
        backend: the backend in use.
        fallbacks: backends of the chain skipped before it, with reasons.
        degraded: the pipeline must show DEGRADED (see :mod:`models.backends.chain`).
        degraded_reason: why, one line (None when not degraded).

    Raises:
        models.card.CardError: unreadable or invalid card, missing ONNX file, hash
            mismatch.
        ValueError, TypeError: a bad chain or input_shape.
        models.backends.NoBackendError: no backend of the chain works.
    """

    def __init__(self, card_path: Path | str, chain: str | Sequence[str] = "auto", *,
                 threads: int | None = None, options: BackendOptions | None = None,
                 input_shape: tuple[int, int] | None = None, focus_px: int = 0) -> None:
        card, onnx_path = load_card(card_path)
        if input_shape is not None:
            shape = tuple(input_shape)
            if len(shape) != 2 or not all(isinstance(v, int) and v >= 16 and v % 16 == 0
                                          for v in shape):
                raise ValueError(f"input_shape must be two multiples of 16 (>= 16), "
                                 f"got {input_shape!r}")
            card = dataclasses.replace(card, input_shape=(shape[0], shape[1]))
        self.card: ModelCard = card
        self.onnx_path = onnx_path
        opts = options if options is not None else BackendOptions(threads=threads)
        backend, fallbacks = load_backend_chain(onnx_path, card, chain, opts)
        self.backend: Backend = backend
        self.fallbacks: list[Fallback] = fallbacks
        self.degraded_reason: str | None = degraded_reason(fallbacks)
        self.degraded = self.degraded_reason is not None
        self._input = ModelInput(card)
        rows, cols = card.input_shape
        self._out_shape = (1, card.n_classes, rows, cols)
        self._labels = np.zeros((rows, cols), np.uint8)
        self._scratch = np.empty((rows, cols), np.float32)
        self._mask = np.empty((rows, cols), np.uint8)
        self._consts = [np.full((rows, cols), c, np.uint8) for c in range(card.n_classes)]
        lo, hi = card.spacing_range_mm
        self._spacing_lo, self._spacing_hi = lo, hi
        if isinstance(focus_px, bool) or not isinstance(focus_px, int) or focus_px < 0 \
                or focus_px % 16 or (focus_px and focus_px >= min(rows, cols)):
            raise ValueError(f"focus_px must be 0 or a multiple of 16 below the grid "
                             f"{rows}x{cols}, got {focus_px!r}")
        #: The focus window's side (model pixels); 0 where the backend cannot take it.
        self.focus_px = focus_px if backend.name in FOCUS_BACKENDS else 0
        if self.focus_px:
            f = self.focus_px
            self._focus_in = np.zeros((1, 1, f, f), np.float32)
            self._probs = np.zeros((card.n_classes, rows, cols), np.float32)
        log.info("segmenter %s %s on %s%s", card.name, card.version, backend.name,
                 f" (DEGRADED: {self.degraded_reason})" if self.degraded else "")

    def segment(self, plane: np.ndarray, spacing_mm: float = math.nan,
                focus_ij: np.ndarray | None = None) -> Segmentation:
        """Segment one frame, or only the focus window around ``focus_ij``.

        Args:
            plane: (rows, cols) grey or (rows, cols, 3|4) colour frame, any real dtype.
            spacing_mm: the frame's pixel spacing, mm (NaN: unknown).
            focus_ij: (2,) frame pixel (column, row) to centre the focus window on
                (clamped into the grid); None, or a segmenter without ``focus_px``: the
                whole frame.

        Returns:
            The segmentation on the model grid (buffers valid until the next call).

        Raises:
            models.preprocess.InputError: a frame the model cannot take (wrong
                dimensions or dtype, empty).
            RuntimeError: the backend returned an output of the wrong shape.
        """
        t0 = time.perf_counter_ns()
        grid = self._input(plane, spacing_mm)
        window = None
        if focus_ij is not None and self.focus_px:
            window = self._window(grid, focus_ij)
        t1 = time.perf_counter_ns()
        if window is None:
            out = self.backend.run(self._input.tensor)
            t2 = time.perf_counter_ns()
            if out.shape != self._out_shape:
                raise RuntimeError(f"{self.backend.name} returned shape {out.shape}, "
                                   f"expected {self._out_shape}")
            probs = out[0]
        else:
            probs = self._run_window(window)
            t2 = time.perf_counter_ns()
        argmax_labels(probs, self._labels, self._scratch, self._mask, self._consts)
        sp = grid.model_spacing_mm
        spacing_ok = math.isnan(sp) or self._spacing_lo <= sp <= self._spacing_hi
        t3 = time.perf_counter_ns()
        return Segmentation(self._labels, probs, grid, self.backend.name,
                            (t2 - t1) * 1e-6, (t3 - t0) * 1e-6, spacing_ok,
                            self._input.tensor[0, 0], window)

    def _window(self, grid: GridMap, focus_ij: np.ndarray) -> tuple[int, int, int, int]:
        """The focus window ``(r0, c0, r1, c1)`` on the model grid around a frame pixel,
        clamped into the grid."""
        f = self.focus_px
        rows, cols = self.card.input_shape
        c, r = grid.to_model_ij(np.asarray(focus_ij, np.float64).reshape(2))
        r0 = int(min(max(round(r) - f // 2, 0), rows - f))
        c0 = int(min(max(round(c) - f // 2, 0), cols - f))
        return r0, c0, r0 + f, c0 + f

    def _run_window(self, window: tuple[int, int, int, int]) -> np.ndarray:
        """The network on the window of the prepared input; the whole grid's
        probabilities with background 1 outside it. Returns (C, R, C) float32."""
        r0, c0, r1, c1 = window
        np.copyto(self._focus_in[0, 0], self._input.tensor[0, 0, r0:r1, c0:c1])
        out = self.backend.run(self._focus_in)
        f = self.focus_px
        if out.shape != (1, self.card.n_classes, f, f):
            raise RuntimeError(f"{self.backend.name} returned shape {out.shape} for the "
                               f"focus window, expected {(1, self.card.n_classes, f, f)}")
        probs = self._probs
        probs.fill(0.0)
        probs[0].fill(1.0)
        probs[:, r0:r1, c0:c1] = out[0]
        return probs

    def describe(self) -> dict[str, Any]:
        """Model, backend (versions, device, threads, precision), fallbacks, DEGRADED."""
        return {"model": self.card.name, "version": self.card.version,
                "onnx_sha256": self.card.onnx_sha256, "input_shape": list(self.card.input_shape),
                "backend": self.backend.describe(),
                "fallbacks": [dataclasses.asdict(f) for f in self.fallbacks],
                "degraded": self.degraded, "degraded_reason": self.degraded_reason}
