"""``guidance bench --stage segment``: a short run writes its JSON and PNG; bad
arguments exit 2 with a one-line reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guidance.cli.main import main


def test_bench_segment_short_run(model_card: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "seg.json"
    rc = main(["bench", "--stage", "segment", "--model", str(model_card), "--sizes", "64,96",
               "--frames", "12", "--warmup", "2", "--backends", "onnxruntime-cpu",
               "--threads", "1", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 1000
    assert [(r["backend"], r["size"]) for r in res["results"]] == [
        ("onnxruntime-cpu", 64), ("onnxruntime-cpu", 96)]
    for r in res["results"]:
        seg, inf = r["segment_ms"], r["infer_ms"]
        assert seg["count"] == inf["count"] == 12
        assert 0 < inf["p50"] <= seg["p50"] <= seg["p95"] <= seg["p99"] <= seg["max"]
        assert r["p50_ratio_over_ridge"] > 0
        assert r["describe"]["threads"] == 1
    assert set(res["baseline_ridge_ms"]) == {"64", "96"}
    assert res["auto_choice"]["backend"] and res["auto_choice"]["degraded"] is False
    assert "target" not in res  # no 256 run
    assert "onnxruntime-cpu@96" in capsys.readouterr().out


@pytest.mark.parametrize("extra, words", [
    (["--backends", "onnxruntime-cpu,tensorrtx"], "'tensorrtx'"),
    (["--model", "/nonexistent/card.json"], "card.json: cannot read: no such file"),
    (["--frames", "3"], "--frames must be >= 10"),
])
def test_bench_segment_bad_arguments(model_card: Path, tmp_path: Path, extra: list[str],
                                     words: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "--stage", "segment", "--model", str(model_card), "--sizes", "64",
            "--json", str(tmp_path / "b.json")]
    if "--model" in extra:
        args = args[:3] + args[5:]
    rc = main([*args, *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert words in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("sizes", ["100", "16", "abc", "4096", ""])
def test_bench_segment_bad_sizes_exit_2(sizes: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["bench", "--stage", "segment", "--sizes", sizes])
    assert ei.value.code == 2
    assert "--sizes" in capsys.readouterr().err


def test_bench_segment_without_shipped_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from models import shipped

    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path)
    rc = main(["bench", "--stage", "segment", "--modality", "fluoro", "--json",
               str(tmp_path / "b.json")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "guidance train --modality fluoro" in err and "--model CARD" in err
