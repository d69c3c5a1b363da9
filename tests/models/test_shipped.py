"""Locating the shipped models."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import shipped


@pytest.mark.parametrize("modality", shipped.SHIPPED_MODALITIES)
def test_missing_shipped_card_says_how_to_make_it(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path, modality: str) -> None:
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError) as ei:
        shipped.shipped_card(modality)
    msg = str(ei.value)
    assert str(tmp_path / f"{modality}-seg.json") in msg
    assert f"guidance train --modality {modality}" in msg


def test_shipped_card_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path)
    (tmp_path / "us-seg.json").write_text("{}")
    assert shipped.shipped_card("us") == tmp_path / "us-seg.json"


@pytest.mark.parametrize("modality", ["mri", "US", ""])
def test_unknown_modality(modality: str) -> None:
    with pytest.raises(ValueError, match="modality must be one of"):
        shipped.shipped_card(modality)


def test_weights_dir_is_in_the_package() -> None:
    assert shipped.WEIGHTS_DIR == Path(shipped.__file__).parent / "weights"


@pytest.mark.parametrize("modality", shipped.SHIPPED_MODALITIES)
def test_shipped_model_loads_and_backends_agree(modality: str) -> None:
    """Each shipped model: card valid (hash), ONNX <= 5 MB, ONNX Runtime and torch give
    the same masks on simulated frames."""
    import numpy as np

    from models.card import load_card
    from models.segmenter import Segmenter
    from tests.models.conftest import dice, require
    from tests.peers import missing

    try:
        path = shipped.shipped_card(modality)
    except FileNotFoundError as e:
        missing(f"the shipped {modality} model ({e})")
        raise  # not reached: missing() skips or fails
    card, onnx_path = load_card(path)
    assert card.modality == modality
    assert onnx_path.stat().st_size <= 5 * 2**20
    ort_seg = Segmenter(path, ["onnxruntime-cpu"], threads=1)
    require("torch")
    torch_seg = Segmenter(path, ["torch-cpu"], threads=1)
    from guidance.sim import make_scanner

    scanner = make_scanner("us", size=card.input_shape[0], seed=5)
    for i in range(2):
        frame = scanner.frame(i, i / 15.0).image.voxels[0]
        a = ort_seg.segment(frame)
        la, pa = a.labels.copy(), a.probs.copy()
        b = torch_seg.segment(frame)
        assert np.abs(pa - b.probs).max() < 1e-4
        for c in range(card.n_classes):
            if (la == c).any() or (b.labels == c).any():
                assert dice(la == c, b.labels == c) >= 0.99, (modality, c)


@pytest.mark.parametrize("modality", shipped.SHIPPED_MODALITIES)
def test_shipped_metrics_were_measured_under_the_current_needle_rule(modality: str) -> None:
    """A card's metrics are stale when the needle-reporting rule changed after they were
    measured: run ``guidance eval --modality M --update-card`` again."""
    import dataclasses
    import json

    from models.card import load_card
    from trackers.needle_fit import NeedleRule

    card, _ = load_card(shipped.shipped_card(modality))
    real = card.metrics["real_needle_free"]
    rule = json.loads(json.dumps(dataclasses.asdict(NeedleRule.for_model(card.needle_rule))))
    assert real["rule"] == rule, modality
    assert real["needle_reported"] == sum(v for k, v in real["reasons"].items()
                                          if k == "needle reported")
    assert card.metrics["held_out"]["dataset_version"] == \
        card.to_json()["training"]["data"]["dataset_version"]


@pytest.mark.parametrize("modality", shipped.SHIPPED_MODALITIES)
def test_only_the_ct_model_carries_a_flank_limit_measured_on_its_training_frames(
        modality: str) -> None:
    from guidance.training.rule_limits import FLANK_CHECK_MODALITIES, PROB_CHECK_MODALITIES
    from models.card import load_card

    card, _ = load_card(shipped.shipped_card(modality))
    if modality in PROB_CHECK_MODALITIES:  # ultrasound: a confidence limit instead
        rec = card.training["needle_rule"]["min_mean_prob"]
        assert card.needle_rule == {"min_mean_prob": rec["limit"]}
        assert rec["data"] == card.training["data"]
        assert rec["value_at_percentile"] - 0.01 < rec["limit"] <= rec["value_at_percentile"]
        assert rec["needles"] > 1000 and rec["needles_below_limit"] < 0.01 * rec["needles"]
        return
    if modality not in FLANK_CHECK_MODALITIES:
        assert card.needle_rule == {}
        return
    rec = card.training["needle_rule"]["max_flank_asymmetry"]
    assert card.needle_rule == {"max_flank_asymmetry": rec["limit"]}
    assert rec["data"] == card.training["data"]  # the frames the model was trained on
    assert rec["value_at_percentile"] <= rec["limit"] < rec["value_at_percentile"] + 0.01
    assert rec["needles"] > 1000 and rec["needles_above_limit"] < 0.01 * rec["needles"]
