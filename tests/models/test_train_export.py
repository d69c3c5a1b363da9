"""Training is deterministic, the fused network equals the trained one, and the exported
ONNX (read by ONNX Runtime) equals torch; the card round-trips and refuses bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.card import CardError, load_card
from tests.models.conftest import require
from tests.models.model_factory import synthetic_batch


def _data(n: int = 24, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    imgs, labels = synthetic_batch(np.random.default_rng(3), n, size, n_classes=3)
    return imgs[:, 0], labels.astype(np.uint8)


def _cfg(**kw: object):  # type: ignore[no-untyped-def]
    from models.train import TrainConfig

    base = dict(steps=12, batch=4, crop=48, threads=1,
                architecture={"name": "lite-unet", "widths": [8, 12, 16], "refine_width": 4})
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_training_is_deterministic_and_learns() -> None:
    torch = require("torch")
    from models.train import train

    x, y = _data()
    a = train(x, y, 3, _cfg(steps=40))
    b = train(x, y, 3, _cfg(steps=40))
    for (ka, va), (kb, vb) in zip(a.net.state_dict().items(), b.net.state_dict().items(),
                                  strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    assert np.array_equal(a.losses, b.losses)
    assert a.losses[-8:].mean() < a.losses[:8].mean()  # it learns something
    c = train(x, y, 3, _cfg(steps=40, seed=1))
    assert not np.array_equal(a.losses, c.losses)
    assert not torch.are_deterministic_algorithms_enabled()  # global state restored


def test_fused_export_matches_torch_and_card_round_trips(tmp_path: Path) -> None:
    torch = require("torch")
    require("onnx")
    import onnxruntime as ort

    from models.export import export_model
    from models.net import fuse_batchnorm
    from models.train import train

    x, y = _data()
    res = train(x, y, 3, _cfg(steps=20))
    card, card_path = export_model(
        res.net, tmp_path, name="t-seg", modality="us", version="0.1.0",
        labels=("background", "needle", "disk"), input_shape=(64, 64), pixel_spacing_mm=0.2,
        spacing_range_mm=(0.1, 0.3), normalisation={"method": "zscore"},
        training=res.summary())
    inp = torch.from_numpy(x[:2, None].copy())
    with torch.no_grad():
        ref = res.net(inp).numpy()
        fused = fuse_batchnorm(res.net)(inp).numpy()
    assert np.abs(ref - fused).max() < 1e-4
    sess = ort.InferenceSession(str(tmp_path / card.onnx_file), providers=["CPUExecutionProvider"])
    out = sess.run(["probs"], {"image": x[:2, None].copy()})[0]
    assert out.shape == (2, 3, 64, 64)
    assert np.abs(out - ref).max() < 1e-4
    # Dynamic grid: another multiple of 16 runs too.
    assert sess.run(["probs"], {"image": np.zeros((1, 1, 96, 128), np.float32)})[0].shape \
        == (1, 3, 96, 128)
    loaded, onnx_path = load_card(card_path)
    assert loaded == card and onnx_path == (tmp_path / "t-seg.onnx").resolve()
    assert loaded.training["config"]["steps"] == 20


def test_card_errors_name_file_and_field(tmp_path: Path) -> None:
    from models.card import ModelCard

    good = ModelCard(name="x", modality="us", version="1", labels=("background", "needle"),
                     input_shape=(64, 64), pixel_spacing_mm=0.2, spacing_range_mm=(0.1, 0.3),
                     normalisation={"method": "zscore"}, architecture={"name": "lite-unet"},
                     onnx_file="x.onnx", onnx_sha256="0" * 64, opset=17)
    (tmp_path / "x.onnx").write_bytes(b"not a model")
    path = tmp_path / "x.json"
    good.save(path)
    with pytest.raises(CardError, match="SHA-256"):
        load_card(path)
    assert load_card(path, check_hash=False)[0] == good
    cases = {
        "labels": (["needle", "background"], "background"),
        "modality": ("mri", "modality"),
        "spacing_range_mm": ([0.3, 0.4], "spacing"),
        "input_shape": ([64], "input_shape"),
        "normalisation": ({"method": "magic"}, "normalisation"),
        "onnx_file": ("../x.onnx", "onnx_file"),
        "bogus": (1, "unknown field"),
    }
    for key, (value, needle) in cases.items():
        raw = json.loads(path.read_text())
        raw[key] = value
        bad = tmp_path / f"bad-{key}.json"
        bad.write_text(json.dumps(raw))
        with pytest.raises(CardError, match=needle) as e:
            load_card(bad, check_hash=False)
        assert str(bad) in str(e.value)
    raw = json.loads(path.read_text())
    del raw["labels"]
    (tmp_path / "missing.json").write_text(json.dumps(raw))
    with pytest.raises(CardError, match="missing field"):
        load_card(tmp_path / "missing.json", check_hash=False)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(CardError, match="not valid JSON"):
        load_card(tmp_path / "broken.json")
    with pytest.raises(CardError, match="cannot read"):
        load_card(tmp_path / "absent.json")


def test_train_refuses_bad_arrays() -> None:
    require("torch")
    from models.train import train

    x, y = _data(4)
    with pytest.raises(ValueError, match="same shape"):
        train(x, y[:, :10], 3, _cfg())
    with pytest.raises(ValueError, match="n_classes"):
        train(x, y + 5, 3, _cfg())
    with pytest.raises(ValueError, match="crop"):
        _cfg(crop=50)
    with pytest.raises(ValueError, match="steps"):
        _cfg(steps=0)
