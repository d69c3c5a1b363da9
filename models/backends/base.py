"""What every inference backend is: the protocol, its options, and its two ways to fail.

A backend runs one exported network (the ONNX file a model card names) on one device:
``run`` takes the model-grid tensor (1, 1, H, W) float32 and returns the softmax
probabilities (1, C, H, W) float32. Loading can fail two ways, and the difference
matters for the DEGRADED state (see :mod:`models.backends.chain`):

- :class:`BackendUnavailable`: the backend is not on this machine (package not
  installed, no GPU). Expected; the "auto" chain skips it quietly.
- :class:`BackendFailed`: the backend is here but does not work (engine build or
  deserialisation error, weights that do not fit, wrong output on the smoke run).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Backend",
    "BackendFailed",
    "BackendOptions",
    "BackendUnavailable",
    "check_output",
    "default_threads",
    "trt_cache_dir",
]


class BackendUnavailable(Exception):
    """The backend is not on this machine (package missing, no GPU); ``str()`` says why."""


class BackendFailed(Exception):
    """The backend is on this machine but could not load or run the model; ``str()``
    says why."""


@runtime_checkable
class Backend(Protocol):
    """One loaded network on one device. Not thread-safe: one caller at a time.

    Attributes:
        name: registry name, e.g. ``"onnxruntime-cpu"``, ``"torch-cuda"``, ``"tensorrt"``.
    """

    name: str

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run the network.

        Args:
            x: (1, 1, H, W) float32, C-contiguous, normalised model input.

        Returns:
            (1, C, H, W) float32 softmax probabilities. May be a buffer the backend
            reuses: valid until the next ``run``.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """Versions, device, threads and precision, JSON-ready (for logs and benches)."""
        ...


def default_threads() -> int:
    """Intra-op threads when none are given: the CPUs this process may use, at most 8
    (the network is small; more threads only add synchronisation)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def trt_cache_dir() -> Path:
    """Where TensorRT engines are cached: ``$GUIDANCE_TRT_CACHE`` or
    ``~/.cache/guidance/trt``."""
    env = os.environ.get("GUIDANCE_TRT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "guidance" / "trt"


@dataclass(frozen=True)
class BackendOptions:
    """How to load a backend (every backend reads only the fields it needs).

    Attributes:
        threads: CPU intra-op threads (ONNX Runtime, torch CPU); None:
            :func:`default_threads`.
        fp16: GPU backends compute in half precision (torch CUDA, TensorRT); outputs
            stay float32.
        device_id: CUDA device index.
        trt_cache_dir: TensorRT engine cache folder; None: :func:`trt_cache_dir`.
        trt_workspace_mb: TensorRT builder workspace limit, MiB.
        io_binding: ONNX Runtime writes into a preallocated output (see
            :mod:`models.backends.ort`).
    """

    threads: int | None = None
    fp16: bool = True
    device_id: int = 0
    trt_cache_dir: Path | None = None
    trt_workspace_mb: int = 1024
    io_binding: bool = True

    def __post_init__(self) -> None:
        if self.threads is not None and (isinstance(self.threads, bool)
                                         or not isinstance(self.threads, int)
                                         or not 1 <= self.threads <= 256):
            raise ValueError(f"threads must be an int in 1..256 or None, got {self.threads!r}")
        if isinstance(self.device_id, bool) or not isinstance(self.device_id, int) \
                or self.device_id < 0:
            raise ValueError(f"device_id must be an int >= 0, got {self.device_id!r}")
        if not isinstance(self.trt_workspace_mb, int) or not 16 <= self.trt_workspace_mb:
            raise ValueError(f"trt_workspace_mb must be an int >= 16, got "
                             f"{self.trt_workspace_mb!r}")

    @property
    def n_threads(self) -> int:
        """The thread count to use."""
        return self.threads if self.threads is not None else default_threads()

    @property
    def engine_dir(self) -> Path:
        """The TensorRT cache folder to use."""
        return self.trt_cache_dir if self.trt_cache_dir is not None else trt_cache_dir()


def check_output(name: str, out: Any, n_classes: int, shape: tuple[int, int]) -> None:
    """Check one backend output against the card.

    Raises:
        BackendFailed: not a (1, n_classes, *shape) float32 array of finite values.
    """
    if not isinstance(out, np.ndarray):
        raise BackendFailed(f"{name}: output is {type(out).__name__}, not a numpy array")
    want = (1, n_classes, *shape)
    if out.shape != want:
        raise BackendFailed(f"{name}: output shape {out.shape} does not match the card "
                            f"(1, n_classes={n_classes}, {shape[0]}, {shape[1]})")
    if out.dtype != np.float32:
        raise BackendFailed(f"{name}: output dtype {out.dtype}, expected float32")
    if not np.isfinite(out).all():
        raise BackendFailed(f"{name}: output has NaN or infinite values")
    total = float(out[0, :, 0, 0].sum())
    if not math.isclose(total, 1.0, abs_tol=1e-2):
        raise BackendFailed(f"{name}: output is not a softmax over classes "
                            f"(sums to {total:.4f} at pixel 0, 0)")
