"""The segmenter: frames in, label maps out; the card checks on load and on input."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.card import CardError
from models.preprocess import InputError
from models.segmenter import Segmentation, Segmenter, argmax_labels
from tests.models.conftest import GRID, copy_model

# ---- arg-max ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_classes", [2, 3, 4, 7])
def test_argmax_labels_matches_numpy_ties_to_lower_class(rng: np.random.Generator,
                                                         n_classes: int) -> None:
    probs = rng.random((n_classes, 40, 56)).astype(np.float32)
    probs[:, :5, :] = 0.25  # ties everywhere in the first rows
    probs[n_classes - 1, 5:8, :] = probs[0, 5:8, :]  # ties between first and last
    out = np.full((40, 56), 99, np.uint8)
    consts = [np.full((40, 56), c, np.uint8) for c in range(n_classes)]
    res = argmax_labels(probs, out, np.empty((40, 56), np.float32),
                        np.empty((40, 56), np.uint8), consts)
    assert res is out
    np.testing.assert_array_equal(out, np.argmax(probs, axis=0))


# ---- segment ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmenter(model_card: Path) -> Segmenter:
    return Segmenter(model_card, ["onnxruntime-cpu"], threads=1)


def _frame(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any = np.uint8) -> np.ndarray:
    return (rng.random(shape) * 200).astype(dtype)


def test_segment_record(segmenter: Segmenter, rng: np.random.Generator) -> None:
    r = segmenter.segment(_frame(rng, (128, 128)), 0.1)
    assert isinstance(r, Segmentation)
    assert r.labels.shape == GRID and r.labels.dtype == np.uint8
    assert r.probs.shape == (4, *GRID) and r.probs.dtype == np.float32
    np.testing.assert_array_equal(r.labels, np.argmax(r.probs, axis=0))
    np.testing.assert_allclose(r.probs.sum(0), 1.0, atol=1e-4)
    assert r.backend == "onnxruntime-cpu"
    assert 0 < r.infer_ms <= r.total_ms
    assert r.grid.frame_shape == (128, 128) and r.grid.used_shape == GRID
    assert r.grid.scale == 2.0 and r.grid.model_spacing_mm == pytest.approx(0.2)
    assert r.spacing_ok
    assert not segmenter.degraded and segmenter.degraded_reason is None
    json.dumps(segmenter.describe())


def test_segment_reuses_its_buffers(segmenter: Segmenter, rng: np.random.Generator) -> None:
    a = segmenter.segment(_frame(rng, (64, 64)))
    b = segmenter.segment(_frame(rng, (64, 64)))
    assert a.labels is b.labels
    assert np.shares_memory(a.probs, b.probs)


def test_segment_finds_the_synthetic_structures(segmenter: Segmenter) -> None:
    from tests.models.model_factory import synthetic_batch

    x, y = synthetic_batch(np.random.default_rng(5), 3, GRID[0])
    for k in range(3):
        r = segmenter.segment(x[k, 0])
        assert (r.labels == y[k]).mean() > 0.9
        assert (r.labels == 1).any()  # the needle


@pytest.mark.parametrize("shape, dtype, used", [
    ((64, 64), np.uint8, (64, 64)),
    ((480, 640), np.uint16, (48, 64)),  # wider than tall: fills the columns
    ((300, 100), np.float32, (64, 21)),
    ((32, 32), np.int16, (64, 64)),  # smaller than the grid: enlarged
    ((60, 80, 3), np.uint8, (48, 64)),  # colour
    ((60, 80, 4), np.float64, (48, 64)),  # colour with alpha
])
def test_segment_accepts_frames(segmenter: Segmenter, rng: np.random.Generator,
                                shape: tuple[int, ...], dtype: Any,
                                used: tuple[int, int]) -> None:
    r = segmenter.segment(_frame(rng, shape, dtype))
    assert r.grid.used_shape == used
    assert r.labels.shape == GRID
    back = r.grid.labels_to_frame(r.labels)
    assert back.shape == shape[:2]


@pytest.mark.parametrize("frame, words", [
    (np.zeros(100, np.uint8), "2D frame"),
    (np.zeros((2, 64, 64), np.uint8), "2D frame"),
    (np.zeros((64, 64, 2), np.uint8), "2D frame"),
    (np.zeros((1, 1, 64, 64), np.float32), "2D frame"),
    (np.zeros((64, 64), bool), "not numeric"),
    (np.zeros((64, 64), np.complex64), "not numeric"),
    (np.zeros((64, 64), object), "not numeric"),
    (np.zeros((0, 64), np.uint8), "too small"),
    (np.zeros((1, 64), np.uint8), "too small"),
])
def test_segment_rejects_bad_frames(segmenter: Segmenter, frame: np.ndarray,
                                    words: str) -> None:
    with pytest.raises(InputError, match=words):
        segmenter.segment(frame)
    segmenter.segment(np.zeros((64, 64), np.uint8))  # still works afterwards


@pytest.mark.parametrize("frame_size, spacing_mm, ok", [
    (128, math.nan, True),  # unknown spacing: cannot judge
    (128, 0.1, True),  # model grid 0.2 mm: the card's nominal spacing
    (128, 0.05, True),  # 0.1 mm: the range's lower end
    (128, 0.2, True),  # 0.4 mm: the range's upper end
    (128, 0.03, False),  # 0.06 mm: finer than training
    (64, 0.5, False),  # 0.5 mm: coarser than training
])
def test_segment_spacing_against_the_card(segmenter: Segmenter, frame_size: int,
                                          spacing_mm: float, ok: bool) -> None:
    r = segmenter.segment(np.zeros((frame_size, frame_size), np.uint8), spacing_mm)
    assert r.spacing_ok is ok


# ---- loading ---------------------------------------------------------------------------


def _edit_card(card_path: Path, dst: Path, how: str) -> Path:
    path = copy_model(card_path, dst)
    raw = json.loads(path.read_text())
    if how == "wrong hash":
        raw["onnx_sha256"] = "f" * 64
    elif how == "missing onnx":
        (path.parent / raw["onnx_file"]).unlink()
    elif how == "malformed json":
        path.write_text(path.read_text()[:-20])
        return path
    elif how == "unknown field":
        raw["threshold"] = 0.5
    elif how == "missing field":
        del raw["labels"]
    elif how == "bad labels":
        raw["labels"] = ["needle", "background", "a", "b"]
    elif how == "modality":
        raw["modality"] = "mri"
    elif how == "rule not an object":
        raw["needle_rule"] = [0.55]
    elif how == "unknown rule limit":
        raw["needle_rule"] = {"threshold": 0.1}
    elif how == "bad rule limit":
        raw["needle_rule"] = {"max_flank_asymmetry": "wide"}
    path.write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize("how, words", [
    ("wrong hash", ["SHA-256", "weights changed or corrupt"]),
    ("missing onnx", ["not found", ".onnx"]),
    ("malformed json", ["not valid JSON"]),
    ("unknown field", ["unknown field", "threshold"]),
    ("missing field", ["missing field", "labels"]),
    ("bad labels", ["background"]),
    ("modality", ["modality", "mri"]),
    ("rule not an object", ["needle_rule must be a JSON object"]),
    ("unknown rule limit", ["needle_rule.threshold: unknown limit", "max_flank_asymmetry"]),
    ("bad rule limit", ["needle_rule.max_flank_asymmetry must be a positive number", "wide"]),
])
def test_bad_cards_are_refused(model_card: Path, tmp_path: Path, how: str,
                               words: list[str]) -> None:
    path = _edit_card(model_card, tmp_path, how)
    with pytest.raises(CardError) as ei:
        Segmenter(path, ["onnxruntime-cpu"])
    for w in [str(path.name), *words]:
        assert w in str(ei.value)


def test_missing_card_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CardError, match="cannot read"):
        Segmenter(tmp_path / "nope.json")


def test_unknown_backend_is_named(model_card: Path) -> None:
    with pytest.raises(ValueError, match="'tensorrtx'"):
        Segmenter(model_card, "tensorrtx")


def test_explicit_torch_cuda_without_gpu_shows_degraded(model_card: Path) -> None:
    from tests.models.conftest import require

    torch = require("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    seg = Segmenter(model_card, ["torch-cuda", "onnxruntime-cpu"], threads=1)
    assert seg.backend.name == "onnxruntime-cpu"
    assert seg.degraded
    assert seg.degraded_reason is not None and "CUDA" in seg.degraded_reason
    assert seg.describe()["fallbacks"][0]["backend"] == "torch-cuda"


@pytest.mark.parametrize("shape, ok", [
    ((128, 128), True), ((32, 96), True), ((100, 100), False), ((8, 8), False),
    ((64,), False), ((64.0, 64.0), False),
])
def test_input_shape_override(model_card: Path, shape: Any, ok: bool) -> None:
    if not ok:
        with pytest.raises(ValueError, match="multiples of 16"):
            Segmenter(model_card, ["onnxruntime-cpu"], input_shape=shape)
        return
    seg = Segmenter(model_card, ["onnxruntime-cpu"], threads=1, input_shape=shape)
    r = seg.segment(np.zeros((200, 200), np.uint8))
    assert r.labels.shape == shape and r.probs.shape == (4, *shape)
