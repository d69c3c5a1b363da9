"""torch backends: ``torch-cpu`` and ``torch-cuda``, weights read from the ONNX file.

The ONNX file holds the fused network (BatchNorm folded into the convs) exported
without constant folding, so its initializer names are the ``state_dict`` keys of
``models.net.build_net(card.architecture, n_classes, fused=True)``: the torch backend
rebuilds that network and loads the very weights ONNX Runtime runs, no second file.

torch and onnx are optional (the ``train`` extra); they are imported when a loader is
called, never when this module is imported.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.backends.base import BackendFailed, BackendOptions, BackendUnavailable
from models.card import ModelCard

if TYPE_CHECKING:
    import torch

__all__ = ["TorchBackend", "load_torch_cpu", "load_torch_cuda", "onnx_weights"]

log = logging.getLogger(__name__)


def _import_torch(name: str) -> Any:
    try:
        import torch
    except ImportError as e:
        raise BackendUnavailable(f"{name}: torch is not installed (the 'train' extra)") from e
    return torch


def onnx_weights(onnx_path: Path) -> dict[str, np.ndarray]:
    """The initializers of an ONNX file by name (numpy arrays, the file's dtypes).

    Raises:
        BackendUnavailable: the ``onnx`` package is not installed.
        BackendFailed: the file cannot be parsed.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise BackendUnavailable("the onnx package is not installed (the 'train' extra)") from e
    try:
        model = onnx.load(str(onnx_path))
    except Exception as e:  # onnx raises DecodeError, OSError, ...
        raise BackendFailed(f"cannot read {onnx_path.name} with onnx: {e}") from e
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


class TorchBackend:
    """The card's network in torch, weights from the ONNX file. Not thread-safe.

    On CUDA with ``fp16`` the network runs in half precision (channels-last, cuDNN
    autotuned) and the softmax in float32; the output is copied into a pinned host
    buffer reused per input shape.

    Args:
        onnx_path: the model's ONNX file.
        card: its model card (architecture, classes).
        options: threads (CPU: ``torch.set_num_threads``, which is process-wide),
            fp16 and device_id (CUDA).
        device: ``"cpu"`` or ``"cuda"``.

    Raises:
        BackendUnavailable: torch/onnx missing, or CUDA asked for but not available.
        BackendFailed: unknown architecture, or ONNX weights that do not fit it.
    """

    _d_in: torch.Tensor | None
    _h_out: torch.Tensor | None

    def __init__(self, onnx_path: Path, card: ModelCard, options: BackendOptions,
                 device: str = "cpu") -> None:
        self.name = f"torch-{device}"
        torch = _import_torch(self.name)
        self._torch = torch
        if device == "cuda":
            if not torch.cuda.is_available():
                raise BackendUnavailable(
                    f"{self.name}: CUDA is not available (torch {torch.__version__}, "
                    f"CUDA build {torch.version.cuda or 'none'}, "
                    f"{torch.cuda.device_count()} CUDA device(s))")
            if options.device_id >= torch.cuda.device_count():
                raise BackendUnavailable(f"{self.name}: no CUDA device {options.device_id} "
                                         f"({torch.cuda.device_count()} present)")
            self.device = torch.device("cuda", options.device_id)
            self.fp16 = options.fp16
            torch.backends.cudnn.benchmark = True
            self.threads = torch.get_num_threads()
        else:
            self.device = torch.device("cpu")
            self.fp16 = False
            self.threads = options.n_threads
            torch.set_num_threads(self.threads)
        from models.net import build_net

        try:
            net = build_net(card.architecture, card.n_classes, fused=True)
        except ValueError as e:
            raise BackendFailed(f"{self.name}: {e}") from e
        weights = onnx_weights(onnx_path)
        state = net.state_dict()
        missing = sorted(set(state) - set(weights))
        if missing:
            raise BackendFailed(
                f"{self.name}: {onnx_path.name} lacks {len(missing)} weight(s) of the card's "
                f"architecture, e.g. {missing[:3]} (was it exported fused, without constant "
                f"folding?)")
        for k, v in state.items():
            if tuple(weights[k].shape) != tuple(v.shape):
                raise BackendFailed(
                    f"{self.name}: weight {k} has shape {tuple(weights[k].shape)} in "
                    f"{onnx_path.name}, the card's network (n_classes={card.n_classes}) needs "
                    f"{tuple(v.shape)}")
        net.load_state_dict({k: torch.from_numpy(np.array(weights[k], np.float32))
                             for k in state})
        net.eval()
        if self.device.type == "cuda":
            net = net.to(self.device)
            # channels-last feeds the tensor cores; Module.to takes it, its stubs do not.
            net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            if self.fp16:
                net = net.half()
        self.net = net
        self._shape: tuple[int, ...] | None = None
        self._d_in = None
        self._h_out = None
        self._h_out_np: np.ndarray | None = None

    def run(self, x: np.ndarray) -> np.ndarray:
        """(1, 1, H, W) float32 -> (1, C, H, W) float32 probabilities (CUDA: a reused
        pinned buffer, valid until the next call)."""
        torch = self._torch
        if self.device.type == "cpu":
            with torch.inference_mode():
                out: np.ndarray = self.net(torch.from_numpy(x)).numpy()
            return out
        if x.shape != self._shape:
            self._shape = x.shape
            dtype = torch.float16 if self.fp16 else torch.float32
            self._d_in = torch.empty(x.shape, dtype=dtype, device=self.device)
            self._h_out = torch.empty((x.shape[0], self.net.n_classes, *x.shape[2:]),
                                      dtype=torch.float32, pin_memory=True)
            self._h_out_np = self._h_out.numpy()
        assert self._d_in is not None and self._h_out is not None
        assert self._h_out_np is not None
        with torch.inference_mode():
            self._d_in.copy_(torch.from_numpy(x))
            logits = self.net.logits(self._d_in.contiguous(memory_format=torch.channels_last))
            probs = torch.softmax(logits.float(), dim=1)
            self._h_out.copy_(probs)  # device -> pinned host; synchronises
        return self._h_out_np

    def describe(self) -> dict[str, Any]:
        """torch version, device, threads, precision."""
        torch = self._torch
        d: dict[str, Any] = {"backend": self.name, "torch": torch.__version__,
                             "device": str(self.device), "threads": self.threads,
                             "precision": "fp16" if self.fp16 else "fp32"}
        if self.device.type == "cuda":
            d["gpu"] = torch.cuda.get_device_name(self.device)
            d["cuda"] = torch.version.cuda
            d["cudnn"] = torch.backends.cudnn.version()
        return d


def load_torch_cpu(onnx_path: Path, card: ModelCard, options: BackendOptions) -> TorchBackend:
    """Loader of ``torch-cpu``."""
    return TorchBackend(onnx_path, card, options, "cpu")


def load_torch_cuda(onnx_path: Path, card: ModelCard, options: BackendOptions) -> TorchBackend:
    """Loader of ``torch-cuda`` (fp16 unless ``options.fp16`` is False)."""
    return TorchBackend(onnx_path, card, options, "cuda")
