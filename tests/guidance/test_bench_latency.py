"""guidance bench's latency phases (short): the JSON says where the time goes and which
targets are met, and the per-stage histogram is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guidance.bench.transport import FRAME_STAGES, run_latency, time_budget
from guidance.io.validate import InputError
from tests.peers import require_real_ct


def test_a_short_pipeline_run_reports_its_budget_and_targets(tmp_path: Path) -> None:
    require_real_ct()  # the sender's frames are the simulator's fluoroscopy of it
    out = tmp_path / "b.json"
    report = run_latency("pipeline", 128, 15.0, 2.0, out, say=lambda _s: None)
    summary = json.loads(out.read_text())
    p = summary["pipeline"]
    stages = [row["stage"] for row in p["where_the_time_goes"]]
    assert set(FRAME_STAGES) <= set(stages)
    assert p["segmentation"]["needle_found"] > 0
    assert summary["targets"]["e2e_p99_ms"]["target"] == 15.0
    assert (tmp_path / "b_stages.png").stat().st_size > 1000
    assert report.png_path.exists()


def test_the_budget_adds_up_to_the_end_to_end_median() -> None:
    stats = {"end_to_end": {"p50": 10.0, "p99": 12.0},
             "segment": {"p50": 6.0, "p99": 8.0}, "overlay": {"p50": 2.0, "p99": 3.0}}
    rows = time_budget(stats, {"count": 5, "p50": 3.5})
    assert [r["stage"] for r in rows] == ["segment", "overlay",
                                          "between stages (queue, hand-overs)"]
    assert rows[0]["of_which_model_inference_p50_ms"] == 3.5
    assert sum(r["p50_ms"] for r in rows) == pytest.approx(10.0)


def test_busy_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--busy"):
        run_latency("pipeline", 128, 15.0, 1.0, tmp_path / "b.json", busy=100)
