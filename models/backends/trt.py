"""TensorRT backend (``tensorrt``): an FP16 engine built from the shipped ONNX file.

Building an engine takes tens of seconds, so engines are cached on disk under a name
that says everything the engine depends on: the ONNX file's hash, the GPU (name and
compute capability), the TensorRT version, the precision and the model grid. A cached
engine that does not deserialise (TensorRT upgraded in place, a truncated file) is
rebuilt, with the reason logged. Buffers are torch CUDA tensors (so the ``tensorrt``
extra needs torch with CUDA); one stream, pinned host buffers sized once per shape.

tensorrt and torch are imported when the loader is called, never at module import.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.backends.base import BackendFailed, BackendOptions, BackendUnavailable
from models.card import ModelCard

__all__ = ["TensorRTBackend", "engine_file_name", "load_tensorrt", "profile_shapes"]

log = logging.getLogger(__name__)

INPUT = "image"
OUTPUT = "probs"


#: Largest batch an engine takes: a CT control slab's slices (at most 64) in one call.
MAX_BATCH = 64


def engine_file_name(onnx_sha256: str, gpu_name: str, capability: tuple[int, int],
                     trt_version: str, precision: str, input_shape: tuple[int, int]) -> str:
    """Cache file name of an engine: everything the engine is only valid for.

    Args:
        onnx_sha256: hex SHA-256 of the ONNX file (the first 16 digits are used).
        gpu_name: CUDA device name, e.g. ``"NVIDIA H100 80GB HBM3"``.
        capability: CUDA compute capability (major, minor).
        trt_version: ``tensorrt.__version__``.
        precision: ``"fp16"`` or ``"fp32"``.
        input_shape: (rows, cols) of the model grid the profile is centred on.
    """
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower() or "gpu"
    ver = re.sub(r"[^A-Za-z0-9.]+", "-", trt_version)
    rows, cols = input_shape
    return (f"{onnx_sha256[:16]}-{gpu}-sm{capability[0]}{capability[1]}-trt{ver}-"
            f"{precision}-{rows}x{cols}-n{MAX_BATCH}.engine")


def profile_shapes(input_shape: tuple[int, int]) -> tuple[tuple[int, int, int, int], ...]:
    """(min, opt, max) input shapes of the optimisation profile: the model grid is the
    optimum; half and double of it (multiples of 16) are the limits; batches of 1 (a
    frame) to :data:`MAX_BATCH` (the slices of a CT control slab, one call)."""
    rows, cols = input_shape

    def m16(v: float) -> int:
        return max(16, round(v / 16.0) * 16)

    return ((1, 1, m16(rows / 2), m16(cols / 2)), (1, 1, rows, cols),
            (MAX_BATCH, 1, m16(rows * 2), m16(cols * 2)))


class TensorRTBackend:
    """A TensorRT engine for one model on one GPU (see module docstring). Not
    thread-safe.

    Args:
        onnx_path: the model's ONNX file (the engine is built from it).
        card: its model card (hash and grid for the cache key and the profile).
        options: fp16, device_id, trt_cache_dir, trt_workspace_mb.

    Raises:
        BackendUnavailable: tensorrt or torch not installed, or no CUDA GPU.
        BackendFailed: the ONNX file does not parse or the engine cannot be built or
            run.
    """

    def __init__(self, onnx_path: Path, card: ModelCard, options: BackendOptions) -> None:
        self.name = "tensorrt"
        try:
            import tensorrt as trt
        except ImportError as e:
            raise BackendUnavailable("tensorrt: not installed (the 'tensorrt' extra, "
                                     "NVIDIA machines only)") from e
        try:
            import torch
        except ImportError as e:
            raise BackendUnavailable("tensorrt: needs torch with CUDA for its buffers "
                                     "(the 'train' extra)") from e
        if not torch.cuda.is_available():
            raise BackendUnavailable(f"tensorrt: CUDA is not available (torch "
                                     f"{torch.__version__}, CUDA build "
                                     f"{torch.version.cuda or 'none'})")
        if options.device_id >= torch.cuda.device_count():
            raise BackendUnavailable(f"tensorrt: no CUDA device {options.device_id}")
        self._trt = trt
        self._torch = torch
        self.device = torch.device("cuda", options.device_id)
        torch.cuda.set_device(self.device)
        self.gpu_name = torch.cuda.get_device_name(self.device)
        cap = torch.cuda.get_device_capability(self.device)
        self.capability = (int(cap[0]), int(cap[1]))
        self.precision = "fp16" if options.fp16 else "fp32"
        self.n_classes = card.n_classes
        self.profile = profile_shapes(card.input_shape)
        self.engine_path = options.engine_dir / engine_file_name(
            card.onnx_sha256, self.gpu_name, self.capability, trt.__version__, self.precision,
            card.input_shape)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.built = False
        self.build_s = float("nan")
        engine = self._load_cached()
        if engine is None:
            engine = self._deserialise(self._build(onnx_path, card, options), "fresh build")
            if engine is None:
                raise BackendFailed(f"tensorrt: the engine just built for {onnx_path.name} "
                                    f"does not deserialise")
        self.engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        if set(names) != {INPUT, OUTPUT}:
            raise BackendFailed(f"tensorrt: engine tensors are {names}, expected "
                                f"{[INPUT, OUTPUT]}")
        for n in names:
            if engine.get_tensor_dtype(n) != trt.float32:
                raise BackendFailed(f"tensorrt: engine tensor {n} is "
                                    f"{engine.get_tensor_dtype(n)}, expected float32")
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendFailed("tensorrt: cannot create an execution context")
        self.stream = torch.cuda.Stream(self.device)
        self._shape: tuple[int, ...] | None = None
        self._d_in: Any = None
        self._d_out: Any = None
        self._h_in: Any = None
        self._h_out: Any = None
        self._h_in_np: np.ndarray | None = None
        self._h_out_np: np.ndarray | None = None

    def _deserialise(self, data: bytes, what: str) -> Any:
        try:
            engine = self._runtime.deserialize_cuda_engine(data)
        except Exception as e:  # TensorRT raises RuntimeError/TypeError across versions
            log.warning("tensorrt: %s does not deserialise: %s", what, e)
            return None
        if engine is None:
            log.warning("tensorrt: %s does not deserialise (see the TensorRT log above)", what)
        return engine

    def _load_cached(self) -> Any:
        p = self.engine_path
        if not p.is_file():
            log.info("tensorrt: no cached engine at %s; building one", p)
            return None
        try:
            data = p.read_bytes()
        except OSError as e:
            log.warning("tensorrt: cannot read cached engine %s (%s); rebuilding", p, e)
            return None
        engine = self._deserialise(data, f"cached engine {p}")
        if engine is None:
            log.warning("tensorrt: rebuilding %s", p.name)
        else:
            log.info("tensorrt: loaded cached engine %s", p)
        return engine

    def _build(self, onnx_path: Path, card: ModelCard, options: BackendOptions) -> bytes:
        trt = self._trt
        t0 = time.monotonic()
        builder = trt.Builder(self._logger)
        flags = 0
        if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the default from 10
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendFailed(f"tensorrt: cannot parse {onnx_path.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                     options.trt_workspace_mb << 20)
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        lo, opt, hi = self.profile
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT, lo, opt, hi)
        config.add_optimization_profile(profile)
        log.info("tensorrt: building %s engine for %s on %s (profile %s..%s, opt %s)",
                 self.precision, onnx_path.name, self.gpu_name, lo, hi, opt)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendFailed(f"tensorrt: engine build failed for {onnx_path.name} "
                                f"(see the TensorRT log)")
        data = bytes(memoryview(serialized))
        self.built = True
        self.build_s = time.monotonic() - t0
        log.info("tensorrt: built in %.1f s, %d bytes", self.build_s, len(data))
        self._save(data)
        return data

    def _save(self, data: bytes) -> None:
        p = self.engine_path
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename: a crash mid-write never leaves a truncated cache file.
            fd, tmp = tempfile.mkstemp(prefix=p.name, suffix=".tmp", dir=p.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, p)
        except OSError as e:
            log.warning("tensorrt: cannot cache the engine at %s (%s); it will be rebuilt "
                        "next time", p, e)

    def _bind(self, shape: tuple[int, ...]) -> None:
        torch = self._torch
        if not self.context.set_input_shape(INPUT, shape):
            lo, _, hi = self.profile
            raise ValueError(f"tensorrt: input shape {shape} is outside the engine's "
                             f"optimisation profile {lo}..{hi}")
        out_shape = tuple(self.context.get_tensor_shape(OUTPUT))
        self._d_in = torch.empty(shape, dtype=torch.float32, device=self.device)
        self._d_out = torch.empty(out_shape, dtype=torch.float32, device=self.device)
        self._h_in = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        self._h_out = torch.empty(out_shape, dtype=torch.float32, pin_memory=True)
        self._h_in_np = self._h_in.numpy()
        self._h_out_np = self._h_out.numpy()
        self.context.set_tensor_address(INPUT, self._d_in.data_ptr())
        self.context.set_tensor_address(OUTPUT, self._d_out.data_ptr())
        torch.cuda.synchronize(self.device)
        self._shape = shape

    def run(self, x: np.ndarray) -> np.ndarray:
        """(N, 1, H, W) float32 -> (N, C, H, W) float32 probabilities (N <= MAX_BATCH), a
        reused pinned buffer valid until the next call.

        Raises:
            ValueError: H, W outside the engine's profile (see :func:`profile_shapes`).
            RuntimeError: the engine failed to enqueue.
        """
        torch = self._torch
        if x.shape != self._shape:
            self._bind(tuple(x.shape))
        assert self._h_in_np is not None and self._h_out_np is not None
        np.copyto(self._h_in_np, x)
        with torch.cuda.stream(self.stream):
            self._d_in.copy_(self._h_in, non_blocking=True)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("tensorrt: execute_async_v3 failed (see the TensorRT log)")
            self._h_out.copy_(self._d_out, non_blocking=True)
        self.stream.synchronize()
        return self._h_out_np

    def describe(self) -> dict[str, Any]:
        """TensorRT version, GPU, precision, engine file and whether it was built now."""
        return {"backend": self.name, "tensorrt": self._trt.__version__,
                "torch": self._torch.__version__, "gpu": self.gpu_name,
                "compute_capability": f"{self.capability[0]}.{self.capability[1]}",
                "precision": self.precision, "engine": str(self.engine_path),
                "built_now": self.built,
                "build_s": round(self.build_s, 1) if self.built else None}


def load_tensorrt(onnx_path: Path, card: ModelCard, options: BackendOptions) -> TensorRTBackend:
    """Loader of ``tensorrt``."""
    return TensorRTBackend(onnx_path, card, options)
