"""ONNX Runtime backends: ``onnxruntime-cpu`` (the default everywhere) and
``onnxruntime-cuda`` (only where the CUDA execution provider is installed).

CPU settings are chosen for latency on a machine that also runs the rest of the
pipeline: a fixed intra-op thread count, **no thread spinning** (spinning workers burn
whole cores between frames and starve the tracker and the GUI), all graph optimisations,
sequential execution. With ``io_binding`` the output goes to a buffer allocated once per
input shape instead of a fresh array per frame.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from models.backends.base import BackendFailed, BackendOptions, BackendUnavailable
from models.card import ModelCard

__all__ = ["OrtBackend", "load_ort_cpu", "load_ort_cuda"]

log = logging.getLogger(__name__)

INPUT = "image"
OUTPUT = "probs"


class OrtBackend:
    """One ONNX Runtime session (see module docstring). Not thread-safe.

    Args:
        onnx_path: the model's ONNX file.
        card: its model card.
        options: threads and io_binding.
        provider: ``"CPUExecutionProvider"`` or ``"CUDAExecutionProvider"``.

    Raises:
        BackendFailed: the session cannot be created, the graph lacks the ``image`` /
            ``probs`` tensors, or the requested provider was not used.
    """

    def __init__(self, onnx_path: Path, card: ModelCard, options: BackendOptions,
                 provider: str = "CPUExecutionProvider") -> None:
        self.provider = provider
        self.name = "onnxruntime-cuda" if provider == "CUDAExecutionProvider" else "onnxruntime-cpu"
        self.threads = options.n_threads
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.log_severity_level = 3
        providers: list[Any] = [provider]
        if provider == "CUDAExecutionProvider":
            providers = [(provider, {"device_id": options.device_id}), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=so,
                                                providers=providers)
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph...)
            raise BackendFailed(f"{self.name}: cannot load {onnx_path.name}: {e}") from e
        if self.session.get_providers()[0] != provider:
            # ORT silently falls back to CPU when the CUDA libraries do not load.
            raise BackendFailed(f"{self.name}: ONNX Runtime did not enable {provider} "
                                f"(providers in use: {self.session.get_providers()})")
        ins = {i.name: i for i in self.session.get_inputs()}
        outs = {o.name: o for o in self.session.get_outputs()}
        if set(ins) != {INPUT} or OUTPUT not in outs:
            raise BackendFailed(f"{self.name}: {onnx_path.name} must have input {INPUT!r} and "
                                f"output {OUTPUT!r}, has inputs {sorted(ins)} and outputs "
                                f"{sorted(outs)}")
        if ins[INPUT].type != "tensor(float)" or outs[OUTPUT].type != "tensor(float)":
            raise BackendFailed(f"{self.name}: {onnx_path.name} tensors must be float32, got "
                                f"{ins[INPUT].type} -> {outs[OUTPUT].type}")
        channels = outs[OUTPUT].shape[1] if len(outs[OUTPUT].shape) == 4 else None
        if isinstance(channels, int) and channels != card.n_classes:
            raise BackendFailed(f"{self.name}: {onnx_path.name} outputs {channels} classes, the "
                                f"card has {card.n_classes} labels {list(card.labels)}")
        self.n_classes = card.n_classes
        self.io_binding = options.io_binding
        self._binding = self.session.io_binding() if self.io_binding else None
        self._shape: tuple[int, ...] | None = None
        self._out: np.ndarray | None = None

    def run(self, x: np.ndarray) -> np.ndarray:
        """(1, 1, H, W) float32 -> (1, C, H, W) float32 probabilities; with io_binding a
        reused buffer, valid until the next call."""
        if self._binding is None:
            out = self.session.run([OUTPUT], {INPUT: x})[0]
            assert isinstance(out, np.ndarray)
            return out
        if x.shape != self._shape:
            self._shape = x.shape
            self._out = np.empty((x.shape[0], self.n_classes, *x.shape[2:]), np.float32)
            self._binding.clear_binding_outputs()
            self._binding.bind_output(OUTPUT, "cpu", 0, np.float32, list(self._out.shape),
                                      self._out.ctypes.data)
        assert self._out is not None
        self._binding.bind_cpu_input(INPUT, x)
        self.session.run_with_iobinding(self._binding)
        return self._out

    def describe(self) -> dict[str, Any]:
        """ONNX Runtime version, provider, threads, precision."""
        return {"backend": self.name, "onnxruntime": ort.__version__,
                "provider": self.provider, "threads": self.threads, "spinning": False,
                "io_binding": self.io_binding, "precision": "fp32"}


def load_ort_cpu(onnx_path: Path, card: ModelCard, options: BackendOptions) -> OrtBackend:
    """Loader of ``onnxruntime-cpu`` (always available: onnxruntime is required)."""
    return OrtBackend(onnx_path, card, options, "CPUExecutionProvider")


def load_ort_cuda(onnx_path: Path, card: ModelCard, options: BackendOptions) -> OrtBackend:
    """Loader of ``onnxruntime-cuda``.

    Raises:
        BackendUnavailable: this onnxruntime build has no CUDA execution provider.
    """
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendUnavailable("onnxruntime-cuda: this onnxruntime has no CUDA execution "
                                 "provider (install onnxruntime-gpu on an NVIDIA machine)")
    return OrtBackend(onnx_path, card, options, "CUDAExecutionProvider")
