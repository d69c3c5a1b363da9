"""The backend registry and the fallback chain, as data.

A chain is an ordered list of registry names; the first that loads and passes a smoke
run (a zero frame through the network, output checked against the card) is used.

The DEGRADED rule (what the pipeline shows):

- chain ``"auto"`` (:data:`AUTO_CHAIN`): a backend that is not on this machine
  (:class:`BackendUnavailable`) is skipped quietly (info log) and does not degrade;
  on a laptop without a GPU, ONNX Runtime on the CPU *is* the expected backend.
- an explicit chain: if its first backend (the one the user asked for) is unavailable
  or fails, the result is degraded.
- any backend that is present but fails (:class:`BackendFailed`, an error during load,
  a bad smoke run) degrades, in any chain: something that should work does not.

Every skipped backend is recorded as a :class:`Fallback` with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from models.backends.base import (
    Backend,
    BackendFailed,
    BackendOptions,
    BackendUnavailable,
    check_output,
)
from models.backends.ort import load_ort_cpu, load_ort_cuda
from models.backends.torch_backend import load_torch_cpu, load_torch_cuda
from models.backends.trt import load_tensorrt
from models.card import ModelCard

__all__ = [
    "AUTO_CHAIN",
    "BACKENDS",
    "Fallback",
    "Loader",
    "NoBackendError",
    "degraded_reason",
    "load_backend_chain",
    "parse_chain",
]

log = logging.getLogger(__name__)

#: ``load(onnx_path, card, options) -> Backend``; raises BackendUnavailable/BackendFailed.
Loader = Callable[[Path, ModelCard, BackendOptions], Backend]

#: Every backend by name. Loaders import their optional packages only when called.
BACKENDS: dict[str, Loader] = {
    "tensorrt": load_tensorrt,
    "torch-cuda": load_torch_cuda,
    "onnxruntime-cuda": load_ort_cuda,
    "onnxruntime-cpu": load_ort_cpu,
    "torch-cpu": load_torch_cpu,
}

#: The chain ``"auto"`` stands for: fastest first, ONNX Runtime on the CPU last (it is
#: always installed).
AUTO_CHAIN: tuple[str, ...] = ("tensorrt", "torch-cuda", "onnxruntime-cuda", "onnxruntime-cpu")


class NoBackendError(RuntimeError):
    """No backend of the chain could run the model; the message lists every reason."""

    def __init__(self, message: str, fallbacks: list[Fallback]) -> None:
        super().__init__(message)
        self.fallbacks = fallbacks


@dataclass(frozen=True)
class Fallback:
    """A backend of the chain that was not used.

    Attributes:
        backend: its registry name.
        reason: why, one line.
        kind: ``"unavailable"`` (not on this machine) or ``"failed"`` (present, broken).
        degrades: whether it makes the result DEGRADED (see module docstring).
    """

    backend: str
    reason: str
    kind: Literal["unavailable", "failed"]
    degrades: bool


def parse_chain(chain: str | Sequence[str],
                registry: Mapping[str, Loader] | None = None) -> tuple[tuple[str, ...], bool]:
    """Names of a chain and whether it is explicit.

    Args:
        chain: ``"auto"``, a comma-separated string (``"torch-cpu,onnxruntime-cpu"``)
            or a sequence of names.
        registry: the known backends (default :data:`BACKENDS`).

    Returns:
        (names, explicit): explicit is False only for ``"auto"``.

    Raises:
        TypeError: chain is neither a string nor a sequence of strings.
        ValueError: empty chain, unknown name (the message names it and lists the known
            ones), or a name given twice.
    """
    reg = BACKENDS if registry is None else registry
    if isinstance(chain, str):
        if chain.strip() == "auto":
            return AUTO_CHAIN, False
        names = tuple(s.strip() for s in chain.split(",") if s.strip())
    elif isinstance(chain, Sequence) and all(isinstance(s, str) for s in chain):
        names = tuple(chain)
    else:
        raise TypeError(f"backend chain must be 'auto', a comma-separated string or a list "
                        f"of names, got {chain!r}")
    if not names:
        raise ValueError("backend chain is empty (use 'auto' or name backends)")
    for n in names:
        if n not in reg:
            raise ValueError(f"unknown backend {n!r} in chain {list(names)}; known: "
                             f"{sorted(reg)} or 'auto'")
    if len(set(names)) != len(names):
        raise ValueError(f"backend chain names a backend twice: {list(names)}")
    return names, True


def _smoke_run(backend: Backend, card: ModelCard) -> None:
    rows, cols = card.input_shape
    out = backend.run(np.zeros((1, 1, rows, cols), np.float32))
    check_output(backend.name, out, card.n_classes, (rows, cols))


def load_backend_chain(onnx_path: Path, card: ModelCard, chain: str | Sequence[str] = "auto",
                       options: BackendOptions | None = None,
                       registry: Mapping[str, Loader] | None = None,
                       ) -> tuple[Backend, list[Fallback]]:
    """Load the first backend of the chain that works (see module docstring).

    Args:
        onnx_path: the model's ONNX file (already checked against the card's hash).
        card: its model card.
        chain: see :func:`parse_chain`.
        options: backend options (default :class:`BackendOptions()`).
        registry: backends by name (default :data:`BACKENDS`; tests pass fakes).

    Returns:
        (backend, fallbacks): the loaded backend, smoke-run on a zero frame of the card's
        grid, and the backends skipped before it, in chain order.

    Raises:
        ValueError, TypeError: a bad chain (see :func:`parse_chain`).
        NoBackendError: none of the chain's backends works; lists every reason.
    """
    reg = BACKENDS if registry is None else registry
    names, explicit = parse_chain(chain, reg)
    opts = BackendOptions() if options is None else options
    fallbacks: list[Fallback] = []
    for i, name in enumerate(names):
        kind: Literal["unavailable", "failed"]
        try:
            backend = reg[name](Path(onnx_path), card, opts)
            try:
                _smoke_run(backend, card)
            except BackendFailed:
                raise
            except Exception as e:
                raise BackendFailed(f"{name}: smoke run on a zero frame failed: "
                                    f"{type(e).__name__}: {e}") from e
        except BackendUnavailable as e:
            kind, reason = "unavailable", str(e)
        except BackendFailed as e:
            kind, reason = "failed", str(e)
        except Exception as e:  # a broken optional backend must not stop the others
            kind, reason = "failed", f"{name}: {type(e).__name__}: {e}"
        else:
            return backend, fallbacks
        degrades = kind == "failed" or (explicit and i == 0)
        fb = Fallback(name, reason, kind, degrades)
        fallbacks.append(fb)
        nxt = names[i + 1] if i + 1 < len(names) else None
        then = f"; trying {nxt}" if nxt else ""
        if degrades:
            log.warning("backend %s %s: %s%s", name, kind, reason, then)
        else:
            log.info("backend %s skipped (%s): %s%s", name, kind, reason, then)
    raise NoBackendError(
        f"no backend could run {Path(onnx_path).name} (chain {list(names)}): "
        + "; ".join(f.reason for f in fallbacks), fallbacks)


def degraded_reason(fallbacks: Sequence[Fallback]) -> str | None:
    """The reason a loaded chain is DEGRADED (the degrading fallbacks' reasons joined),
    or None when it is not."""
    reasons = [f.reason for f in fallbacks if f.degrades]
    return "; ".join(reasons) if reasons else None
