"""Shared fixtures for the model tests: small trained models exported as shipped ones.

Making them needs torch and onnx (the ``train`` extra): missing, the tests that need a
model skip on a developer machine and fail in CI (``CI`` set), where they are installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from models.card import file_sha256
from tests.peers import require_module

#: The fixture model's grid: small, so the tests stay fast.
GRID = (64, 64)


def require(module: str) -> ModuleType:
    """Import an optional dependency: skip locally when missing, fail in CI."""
    mod = require_module(module, f"{module} (the 'train' extra: pip install .[train])")
    assert isinstance(mod, ModuleType)
    return mod


@pytest.fixture(scope="session")
def model_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Card of a 4-class LiteUNet (default architecture) trained 60 steps (48 px) on the
    synthetic task of :mod:`tests.models.model_factory`, grid 64 x 64."""
    require("torch")
    require("onnx")
    from tests.models.model_factory import make_model

    return make_model(tmp_path_factory.mktemp("model"), n_classes=4, steps=60, size=48,
                      input_shape=GRID, seed=3)


@pytest.fixture(scope="session")
def wrong_classes_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A card that says 4 labels beside an ONNX file whose network outputs 3 classes."""
    require("torch")
    require("onnx")
    from tests.models.model_factory import LABELS, make_model

    path = make_model(tmp_path_factory.mktemp("wrong"), n_classes=3, steps=0, size=32,
                      input_shape=GRID, seed=4)
    raw = json.loads(path.read_text())
    raw["labels"] = list(LABELS)
    path.write_text(json.dumps(raw))
    return path


def copy_model(card_path: Path, dst: Path) -> Path:
    """Copy a card and its ONNX file into ``dst``; returns the new card path."""
    raw = json.loads(card_path.read_text())
    dst.mkdir(parents=True, exist_ok=True)
    (dst / raw["onnx_file"]).write_bytes((card_path.parent / raw["onnx_file"]).read_bytes())
    out = dst / card_path.name
    out.write_text(card_path.read_text())
    assert file_sha256(dst / raw["onnx_file"]) == raw["onnx_sha256"]
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


@pytest.fixture
def rng() -> np.random.Generator:
    """Seeded generator: every test is reproducible."""
    return np.random.default_rng(20240611)
