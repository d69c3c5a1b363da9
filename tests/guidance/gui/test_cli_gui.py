"""``guidance run --gui --screenshot``, argument errors, ``guidance bench --stage render``."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from PyQt5.QtGui import QImage

from guidance.cli.main import main
from guidance.gui import theme
from tests.guidance.gui.helpers import colour_fraction, to_array


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_run_gui_screenshot_without_input_is_stale(qapp, tmp_path, capsys):
    shot = tmp_path / "run.png"
    rc = main(["run", "--listen", str(_free_port()), "--gui", "--screenshot", str(shot),
               "--seconds", "1.0", "--out", str(tmp_path / "out")])
    assert rc == 0 and shot.exists()
    rgb = to_array(QImage(str(shot)))
    assert rgb.shape[1] >= 1000
    assert colour_fraction(rgb, theme.STALE_HATCH, 8) > 0.02  # nothing came in: STALE
    assert "screenshot:" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "reason"), [
    (["run", "--listen", "5000", "--screenshot", "x.png"], "--screenshot FILE needs --gui"),
    (["run", "--listen", "5000", "--gui", "--screenshot", "x.jpg"], "must end in .png"),
    (["demo", "--screenshot", "x.png"], "--screenshot FILE needs --gui"),
    (["plan", "--gui", "--ct", "real"], "--gui needs --target SPEC or --load"),
    (["plan", "--screenshot", "x.png", "--target", "disc:L1-L2"], "needs --gui"),
])
def test_gui_argument_errors_exit_2_naming_the_problem(qapp, argv, reason, capsys):
    assert main(argv) == 2
    assert reason in capsys.readouterr().err


def test_plan_gui_load_names_broken_file(qapp, tmp_path, capsys):
    bad = tmp_path / "plan.json"
    bad.write_text('{"format": "guidance.plan/1", "entry_lps_mm": [1, 2]}')
    assert main(["plan", "--gui", "--load", str(bad), "--screenshot", "x.png"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "entry_lps_mm" in err


def test_bench_render_writes_percentiles_and_histogram(qapp, tmp_path):
    out = tmp_path / "render.json"
    rc = main(["bench", "--stage", "render", "--render-frames", "10", "--render-modality", "us",
               "--size", "128", "--render-canvas", "400x300", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    for series in ("render_ms", "render_stale_ms", "widget_repaint_ms",
                   "baseline_overlay_cv2_ms"):
        p = data[series]
        assert p["count"] == 10 and 0 < p["p50"] <= p["p95"] <= p["p99"] <= p["max"]
    assert data["widget_paints"] == 10 + data["warmup_frames"]
    assert out.with_suffix(".png").stat().st_size > 1000
    assert isinstance(data["meets_target"], bool)
    assert np.isfinite(data["render_over_baseline_p50"])
