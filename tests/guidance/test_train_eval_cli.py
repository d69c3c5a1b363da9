"""`guidance train` and `guidance eval` end to end on a tiny run, and their bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guidance.cli.main import main
from models.card import load_card
from tests.models.conftest import require


@pytest.fixture(scope="module")
def tiny_us_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require("torch")
    require("onnx")
    out = tmp_path_factory.mktemp("model")
    cache = tmp_path_factory.mktemp("cache")
    assert main(["train", "--modality", "us", "--frames", "16", "--steps", "3", "--out", str(out),
                 "--cache", str(cache), "--no-eval"]) == 0
    return out / "us-seg.json"


def test_train_writes_a_card_that_loads(tiny_us_model: Path) -> None:
    card, onnx_path = load_card(tiny_us_model)
    assert card.modality == "us" and card.labels == ("background", "needle", "nerve", "vessel")
    assert card.training["train"]["config"]["steps"] == 3
    assert card.training["data"]["split"] == "train"
    assert onnx_path.stat().st_size < 5e6
    # Ultrasound: the confidence limit measured on its training frames, or why not.
    rec = card.training["needle_rule"]["min_mean_prob"]
    assert card.needle_rule == ({"min_mean_prob": rec["limit"]} if "limit" in rec else {})


def test_eval_reports_metrics_and_updates_the_card(tiny_us_model: Path, tmp_path: Path) -> None:
    report = tmp_path / "eval.json"
    png = tmp_path / "ex.png"
    assert main(["eval", "--modality", "us", "--model", str(tiny_us_model), "--frames", "8",
                 "--json", str(report), "--png", str(png), "--update-card",
                 "--needle-free-frames", "8", "--cache", str(tmp_path / "c")]) == 0
    m = json.loads(report.read_text())
    assert set(m["dice"]) == {"needle", "nerve", "vessel"}
    assert m["held_out"]["split"] == "test"
    assert m["real_needle_free"]["frames"] > 100
    real = m["real_needle_free"]
    assert 0.0 <= real["rate"] <= 1.0
    lo, hi = real["rate_ci95"]
    assert lo <= real["rate"] <= hi and hi - lo > 0.0
    assert m["targets"]["real_false_needle_rate"]["ci95"] == [lo, hi]
    assert "needle_dice" in m["targets"] and isinstance(m["targets"]["all_pass"], bool)
    free = m["needle_free_sim"]  # every needle reported there is false
    assert free["frames"] == 8 and free["split"] == "needle-free"
    assert free["needle_reported"] == len(free["frames_with_false_needle"])
    assert m["targets"]["sim_false_needle_rate"]["ci95"] == free["rate_ci95"]
    lo, hi = free["rate_ci95"]
    assert lo <= free["rate"] <= hi
    needle = m["needle"]
    for key in ("detection_rate", "false_needle_rate_sim"):
        if needle[key] is not None:
            lo, hi = needle[key + "_ci95"]
            assert lo <= needle[key] <= hi, key
    assert png.stat().st_size > 10_000
    card, _ = load_card(tiny_us_model)  # still loads: the hash covers the ONNX file only
    assert card.metrics["dice"]["needle"]["pooled"] == m["dice"]["needle"]["pooled"]
    assert card.metrics["needle_free_sim"]["rate_ci95"] == free["rate_ci95"]
    assert "frames_with_false_needle" in card.metrics["real_needle_free"]  # named in the card


def test_bad_arguments_exit_2(tiny_us_model: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--modality", "ct", "--model", str(tiny_us_model)]) == 2
    assert "is for 'us', not 'ct'" in capsys.readouterr().err
    assert main(["eval", "--modality", "us", "--model", str(tmp_path / "absent.json")]) == 2
    assert "absent.json" in capsys.readouterr().err
    assert main(["eval", "--modality", "us", "--frames", "0"]) == 2
    assert main(["train", "--modality", "us", "--frames", "2", "--no-eval"]) == 2
    with pytest.raises(SystemExit) as e:
        main(["train", "--modality", "mri"])
    assert e.value.code == 2


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (0, 15, 0.0, 0.2039), (1, 15, 0.0119, 0.2982), (3, 267, 0.0038, 0.0325),
    (15, 15, 0.7961, 1.0)])
def test_wilson_interval_matches_published_values(k: int, n: int, low: float,
                                                  high: float) -> None:
    from guidance.training.evaluate import wilson_interval

    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


@pytest.mark.parametrize(("k", "n"), [(-1, 5), (6, 5), (0, 0), (1.0, 5)])
def test_wilson_interval_refuses_impossible_counts(k: object, n: object) -> None:
    from guidance.training.evaluate import wilson_interval

    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(k, n)  # type: ignore[arg-type]


def test_train_ct_measures_the_flank_limit_or_says_why_not(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A CT model's card gets its flank limit from its own training frames; a model
    trained for 2 steps finds no needle there, and the card and the output say so."""
    require("torch")
    require("onnx")
    assert main(["train", "--modality", "ct", "--frames", "12", "--steps", "2", "--out",
                 str(tmp_path), "--cache", str(tmp_path / "c"), "--no-eval"]) == 0
    card, _ = load_card(tmp_path / "ct-seg.json")
    rec = card.training["needle_rule"]["max_flank_asymmetry"]
    if card.needle_rule:  # the untrained net happened to draw needles
        assert card.needle_rule == {"max_flank_asymmetry": rec["limit"]}
    else:
        # Either reason of measure_flank_limit: no needle reported at all, or too few of
        # them brighter than their flanks.
        why = rec["not_measured"]
        assert "no needle" in why or "flanks" in why, f"not_measured gives another reason: {why}"
        assert "WARNING: no flank limit" in capsys.readouterr().out
