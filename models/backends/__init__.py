"""Inference backends for the segmentation networks: ONNX Runtime (CPU, CUDA), torch
(CPU, CUDA) and TensorRT, behind one :class:`Backend` protocol, chosen by a fallback
chain that is data (:data:`AUTO_CHAIN`, or a list of names).

Only onnxruntime is required; torch, onnx and tensorrt are imported when a backend that
needs them is loaded, never when this package is imported.
"""

from models.backends.base import (
    Backend,
    BackendFailed,
    BackendOptions,
    BackendUnavailable,
    default_threads,
    trt_cache_dir,
)
from models.backends.chain import (
    AUTO_CHAIN,
    BACKENDS,
    Fallback,
    Loader,
    NoBackendError,
    degraded_reason,
    load_backend_chain,
    parse_chain,
)

__all__ = [
    "AUTO_CHAIN",
    "BACKENDS",
    "Backend",
    "BackendFailed",
    "BackendOptions",
    "BackendUnavailable",
    "Fallback",
    "Loader",
    "NoBackendError",
    "default_threads",
    "degraded_reason",
    "load_backend_chain",
    "parse_chain",
    "trt_cache_dir",
]
