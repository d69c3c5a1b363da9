"""Inference backends: parity between ONNX Runtime, torch (and TensorRT where present),
the fallback chain and its DEGRADED rule, loader checks against the card."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.backends import (
    AUTO_CHAIN,
    BACKENDS,
    BackendFailed,
    BackendOptions,
    BackendUnavailable,
    NoBackendError,
    degraded_reason,
    load_backend_chain,
    parse_chain,
)
from models.backends.trt import engine_file_name, profile_shapes
from models.card import ModelCard, load_card
from tests.models.conftest import GRID, copy_model, dice, require
from tests.models.model_factory import synthetic_batch

ROOT = Path(__file__).resolve().parents[2]


def _inputs(n: int, size: int, seed: int) -> list[np.ndarray]:
    x, _ = synthetic_batch(np.random.default_rng(seed), n, size)
    return [np.ascontiguousarray(x[k : k + 1]) for k in range(n)]


def _assert_same_masks(a: np.ndarray, b: np.ndarray, seen: set[int]) -> None:
    la, lb = np.argmax(a[0], 0), np.argmax(b[0], 0)
    for c in range(a.shape[1]):
        if (la == c).any() or (lb == c).any():
            seen.add(c)
            d = dice(la == c, lb == c)
            assert d >= 0.99, f"class {c}: Dice {d:.4f}"


# ---- import hygiene -----------------------------------------------------------------

def test_importing_backends_pulls_no_optional_package() -> None:
    code = ("import sys, models.backends, models.segmenter, models.shipped; "
            "bad = [m for m in ('torch', 'tensorrt', 'onnx') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# ---- chain parsing --------------------------------------------------------------------

@pytest.mark.parametrize("chain, names, explicit", [
    ("auto", AUTO_CHAIN, False),
    (" auto ", AUTO_CHAIN, False),
    ("torch-cpu,onnxruntime-cpu", ("torch-cpu", "onnxruntime-cpu"), True),
    ("torch-cpu, onnxruntime-cpu", ("torch-cpu", "onnxruntime-cpu"), True),
    (["onnxruntime-cpu"], ("onnxruntime-cpu",), True),
    (("tensorrt", "onnxruntime-cpu"), ("tensorrt", "onnxruntime-cpu"), True),
])
def test_parse_chain_valid(chain: Any, names: tuple[str, ...], explicit: bool) -> None:
    assert parse_chain(chain) == (names, explicit)


@pytest.mark.parametrize("chain, exc, words", [
    ("tensorrtt", ValueError, ["'tensorrtt'", "onnxruntime-cpu"]),
    (["onnxruntime-cpu", "openvino"], ValueError, ["'openvino'"]),
    ("", ValueError, ["empty"]),
    ([], ValueError, ["empty"]),
    (["torch-cpu", "torch-cpu"], ValueError, ["twice"]),
    (3, TypeError, ["3"]),
    ([1, 2], TypeError, ["chain"]),
])
def test_parse_chain_invalid(chain: Any, exc: type[Exception], words: list[str]) -> None:
    with pytest.raises(exc) as ei:
        parse_chain(chain)
    for w in words:
        assert w in str(ei.value)


def test_auto_chain_names_are_registered_and_cpu_last() -> None:
    assert set(AUTO_CHAIN) <= set(BACKENDS)
    assert AUTO_CHAIN[-1] == "onnxruntime-cpu"


@pytest.mark.parametrize("kwargs, words", [
    ({"threads": 0}, "threads"),
    ({"threads": 2.0}, "threads"),
    ({"threads": True}, "threads"),
    ({"device_id": -1}, "device_id"),
    ({"trt_workspace_mb": 1}, "trt_workspace_mb"),
])
def test_backend_options_invalid(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        BackendOptions(**kwargs)


def test_trt_cache_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GUIDANCE_TRT_CACHE", str(tmp_path / "engines"))
    assert BackendOptions().engine_dir == tmp_path / "engines"
    assert BackendOptions(trt_cache_dir=tmp_path).engine_dir == tmp_path
    monkeypatch.delenv("GUIDANCE_TRT_CACHE")
    assert BackendOptions().engine_dir.parts[-3:] == (".cache", "guidance", "trt")


# ---- the DEGRADED rule, with fake backends --------------------------------------------

class _Fake:
    def __init__(self, name: str, n_classes: int, shape: tuple[int, int],
                 channels: int | None = None) -> None:
        self.name = name
        c = n_classes if channels is None else channels
        self.out = np.full((1, c, *shape), 1.0 / c, np.float32)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.out

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}


def _card(n_classes: int = 3) -> ModelCard:
    return ModelCard(name="fake", modality="us", version="0", labels=("background", "a", "b"),
                     input_shape=(32, 48), pixel_spacing_mm=0.2, spacing_range_mm=(0.1, 0.3),
                     normalisation={"method": "zscore"}, architecture={}, onnx_file="f.onnx",
                     onnx_sha256="0" * 64, opset=17)


def _loader(behaviour: str) -> Any:
    def load(path: Path, card: ModelCard, options: BackendOptions) -> Any:
        if behaviour == "unavailable":
            raise BackendUnavailable("not installed here")
        if behaviour == "failed":
            raise BackendFailed("engine does not deserialise")
        if behaviour == "crash":
            raise RuntimeError("CUDA error: out of memory")
        if behaviour == "bad-shape":
            return _Fake("x", card.n_classes, card.input_shape, channels=2)
        if behaviour == "run-crash":
            f = _Fake("x", card.n_classes, card.input_shape)
            f.run = lambda x: (_ for _ in ()).throw(RuntimeError("kernel launch failed"))  # type: ignore[method-assign]
            return f
        return _Fake("ok", card.n_classes, card.input_shape)
    return load


@pytest.mark.parametrize("explicit, behaviours, kinds, degraded, reason_has", [
    # auto: what is not on this machine is skipped quietly
    (False, ["unavailable", "unavailable", "unavailable", "ok"], ["unavailable"] * 3, False, None),
    # auto: present but broken degrades
    (False, ["failed", "unavailable", "unavailable", "ok"], ["failed", "unavailable",
                                                              "unavailable"], True, "deserialise"),
    (False, ["unavailable", "crash", "unavailable", "ok"], ["unavailable", "failed",
                                                             "unavailable"], True, "out of memory"),
    (False, ["bad-shape", "ok", "ok", "ok"], ["failed"], True, "output shape"),
    (False, ["run-crash", "ok", "ok", "ok"], ["failed"], True, "smoke run"),
    (False, ["ok", "failed", "failed", "failed"], [], False, None),
    # explicit: the first choice missing degrades, later ones only if they fail
    (True, ["unavailable", "ok"], ["unavailable"], True, "not installed"),
    (True, ["failed", "ok"], ["failed"], True, "deserialise"),
    (True, ["ok", "failed"], [], False, None),
])
def test_chain_degraded_rule(explicit: bool, behaviours: list[str], kinds: list[str],
                             degraded: bool, reason_has: str | None) -> None:
    names = list(AUTO_CHAIN) if not explicit else [f"b{i}" for i in range(len(behaviours))]
    registry = {n: _loader(b) for n, b in zip(names, behaviours, strict=True)}
    card = _card()
    backend, fallbacks = load_backend_chain(Path("f.onnx"), card,
                                            names if explicit else "auto", registry=registry)
    assert backend.name == "ok"
    assert [f.kind for f in fallbacks] == kinds
    assert [f.backend for f in fallbacks] == names[: len(kinds)]
    reason = degraded_reason(fallbacks)
    assert (reason is not None) == degraded
    if reason_has:
        assert reason is not None and reason_has in reason


def test_chain_all_fail_lists_every_reason() -> None:
    registry = {"a": _loader("unavailable"), "b": _loader("failed"), "c": _loader("bad-shape")}
    with pytest.raises(NoBackendError) as ei:
        load_backend_chain(Path("m.onnx"), _card(), ["a", "b", "c"], registry=registry)
    msg = str(ei.value)
    for w in ("m.onnx", "not installed", "deserialise", "output shape"):
        assert w in msg
    assert [f.backend for f in ei.value.fallbacks] == ["a", "b", "c"]


# ---- real backends --------------------------------------------------------------------

def test_auto_chain_here_is_not_degraded(model_card: Path) -> None:
    card, onnx_path = load_card(model_card)
    backend, fallbacks = load_backend_chain(onnx_path, card, "auto")
    assert backend.name in AUTO_CHAIN
    assert all(f.kind == "unavailable" and not f.degrades for f in fallbacks), fallbacks
    assert degraded_reason(fallbacks) is None


def test_ort_session_settings(model_card: Path) -> None:
    from models.backends.ort import OrtBackend

    card, onnx_path = load_card(model_card)
    be = OrtBackend(onnx_path, card, BackendOptions(threads=1))
    so = be.session.get_session_options()
    assert so.intra_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    d = be.describe()
    assert d["threads"] == 1 and d["spinning"] is False and d["precision"] == "fp32"


def test_ort_io_binding_same_output_and_reused_buffer(model_card: Path) -> None:
    from models.backends.ort import OrtBackend

    card, onnx_path = load_card(model_card)
    bound = OrtBackend(onnx_path, card, BackendOptions(threads=1, io_binding=True))
    plain = OrtBackend(onnx_path, card, BackendOptions(threads=1, io_binding=False))
    xs = _inputs(2, GRID[0], seed=1) + _inputs(1, 96, seed=2)
    first = bound.run(xs[0])
    np.testing.assert_array_equal(first, plain.run(xs[0]))
    second = bound.run(xs[1])
    assert second is first  # one buffer per shape
    np.testing.assert_array_equal(second, plain.run(xs[1]))
    np.testing.assert_array_equal(bound.run(xs[2]), plain.run(xs[2]))  # new shape, new buffer


def test_ort_and_torch_give_the_same_masks(model_card: Path) -> None:
    require("torch")
    card, onnx_path = load_card(model_card)
    ort_be, _ = load_backend_chain(onnx_path, card, ["onnxruntime-cpu"])
    torch_be, fb = load_backend_chain(onnx_path, card, ["torch-cpu"], BackendOptions(threads=1))
    assert not fb and torch_be.name == "torch-cpu"
    seen: set[int] = set()
    for x in _inputs(4, GRID[0], seed=11) + _inputs(2, 128, seed=12):  # card grid and larger
        a = ort_be.run(x).copy()
        b = torch_be.run(x)
        assert np.abs(a - b).max() < 1e-4
        _assert_same_masks(a, b, seen)
    assert seen == set(range(card.n_classes)), f"classes seen {seen}: masks too trivial"


def test_explicit_torch_cuda_without_gpu_degrades_mentioning_cuda(model_card: Path) -> None:
    torch = require("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    card, onnx_path = load_card(model_card)
    backend, fallbacks = load_backend_chain(onnx_path, card, ["torch-cuda", "onnxruntime-cpu"])
    assert backend.name == "onnxruntime-cpu"
    assert [(f.backend, f.kind, f.degrades) for f in fallbacks] == [
        ("torch-cuda", "unavailable", True)]
    reason = degraded_reason(fallbacks)
    assert reason is not None and "CUDA" in reason


@pytest.mark.parametrize("backend, words", [
    ("onnxruntime-cpu", ["outputs 3 classes", "4 labels"]),
    ("torch-cpu", ["shape (3, 8, 1, 1)", "n_classes=4"]),
])
def test_onnx_with_other_class_count_than_card_fails(wrong_classes_card: Path, backend: str,
                                                      words: list[str]) -> None:
    if backend.startswith("torch"):
        require("torch")
    card, onnx_path = load_card(wrong_classes_card)
    with pytest.raises(NoBackendError) as ei:
        load_backend_chain(onnx_path, card, [backend])
    assert [f.kind for f in ei.value.fallbacks] == ["failed"]
    for w in words:
        assert w in str(ei.value)


def test_torch_rejects_onnx_of_another_architecture(model_card: Path, tmp_path: Path) -> None:
    require("torch")
    import dataclasses

    card, onnx_path = load_card(model_card)
    other = dataclasses.replace(card, architecture={**card.architecture, "widths": [8, 16]})
    with pytest.raises(NoBackendError, match=r"lacks|shape"):
        load_backend_chain(onnx_path, other, ["torch-cpu"])
    unknown = dataclasses.replace(card, architecture={"name": "vit"})
    with pytest.raises(NoBackendError, match="unknown architecture"):
        load_backend_chain(onnx_path, unknown, ["torch-cpu"])


def test_ort_rejects_a_file_that_is_not_onnx(model_card: Path, tmp_path: Path) -> None:
    card, _ = load_card(copy_model(model_card, tmp_path))
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(NoBackendError, match=r"garbage\.onnx"):
        load_backend_chain(bad, card, ["onnxruntime-cpu"])


# ---- TensorRT -------------------------------------------------------------------------

def test_engine_file_name_keys_everything_it_depends_on() -> None:
    sha = "ab" * 32
    name = engine_file_name(sha, "NVIDIA H100 80GB HBM3", (9, 0), "10.3.0", "fp16", (256, 256))
    assert name == "abababababababab-nvidia-h100-80gb-hbm3-sm90-trt10.3.0-fp16-256x256-n64.engine"
    others = {engine_file_name("cd" * 32, "NVIDIA H100 80GB HBM3", (9, 0), "10.3.0", "fp16",
                               (256, 256)),
              engine_file_name(sha, "NVIDIA A100", (8, 0), "10.3.0", "fp16", (256, 256)),
              engine_file_name(sha, "NVIDIA H100 80GB HBM3", (9, 0), "10.4.0", "fp16",
                               (256, 256)),
              engine_file_name(sha, "NVIDIA H100 80GB HBM3", (9, 0), "10.3.0", "fp32",
                               (256, 256)),
              engine_file_name(sha, "NVIDIA H100 80GB HBM3", (9, 0), "10.3.0", "fp16",
                               (512, 512))}
    assert name not in others and len(others) == 5


@pytest.mark.parametrize("grid, expect", [
    ((256, 256), ((1, 1, 128, 128), (1, 1, 256, 256), (64, 1, 512, 512))),
    ((64, 96), ((1, 1, 32, 48), (1, 1, 64, 96), (64, 1, 128, 192))),
    ((16, 16), ((1, 1, 16, 16), (1, 1, 16, 16), (64, 1, 32, 32))),
])
def test_profile_shapes(grid: tuple[int, int], expect: tuple[Any, ...]) -> None:
    assert profile_shapes(grid) == expect


@pytest.mark.gpu
def test_tensorrt_agrees_with_ort_and_caches_its_engine(model_card: Path,
                                                       tmp_path: Path) -> None:
    """Selected with ``-m gpu`` only (pyproject's addopts deselect it): where it is asked
    for, a missing TensorRT or GPU is a failure, not a skip."""
    import importlib.util

    assert importlib.util.find_spec("tensorrt") is not None, (
        "TensorRT not installed: pip install -e '.[tensorrt]' on the NVIDIA machine")
    torch = require("torch")
    assert torch.cuda.is_available(), "no CUDA GPU: the gpu tests need one"
    card, onnx_path = load_card(model_card)
    opts = BackendOptions(trt_cache_dir=tmp_path / "trt")
    trt_be, fb = load_backend_chain(onnx_path, card, ["tensorrt"], opts)
    assert not fb and trt_be.describe()["built_now"] is True
    engines = list((tmp_path / "trt").glob("*.engine"))
    assert len(engines) == 1 and engines[0].name.startswith(card.onnx_sha256[:16])
    ort_be, _ = load_backend_chain(onnx_path, card, ["onnxruntime-cpu"])
    seen: set[int] = set()
    for x in _inputs(4, GRID[0], seed=21):
        a = ort_be.run(x).copy()
        b = trt_be.run(x)
        assert np.abs(a - b).max() < 2e-2  # fp16
        _assert_same_masks(a, b, seen)
    # A CT control slab's slices in one call (the profile's batch dimension).
    batch = np.concatenate(list(_inputs(5, GRID[0], seed=22)), axis=0)
    assert np.abs(ort_be.run(batch).copy() - trt_be.run(batch)).max() < 2e-2
    again, _ = load_backend_chain(onnx_path, card, ["tensorrt"], opts)
    assert again.describe()["built_now"] is False  # from the cache
    engines[0].write_bytes(b"truncated")
    rebuilt, fb = load_backend_chain(onnx_path, card, ["tensorrt"], opts)
    assert not fb and rebuilt.describe()["built_now"] is True
