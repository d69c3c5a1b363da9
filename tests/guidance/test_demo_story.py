"""``guidance demo`` tells a true story: the needle follows the demo's own plan; safe ends
PASS with no DANGER, a drift toward a nerve root raises DANGER that clears once it is
corrected, an uncorrected one ends in a VIOLATION explained one line per cause."""

from __future__ import annotations

import json

import numpy as np
import pytest

from guidance.cli.main import main
from guidance.sim.needle_path import NeedlePath
from guidance.sim.params import NeedleParams
from guidance.sim.scenario import SCENARIOS, drift_axis_toward, scenario_path, scenario_script
from tests.guidance.room_helpers import real_ct_or_skip

RANK = {"NONE": 0, "INFO": 1, "CAUTION": 2, "DANGER": 3}


def _demo(tmp_path, capsys, scenario, modality="none", seconds="8"):
    real_ct_or_skip()
    out = tmp_path / scenario
    argv = ["demo", "--modality", modality, "--scenario", scenario, "--seconds", seconds,
            "--size", "256", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    return json.loads((out / "summary.json").read_text()), text, out


# -- the scripts (no CT) ---------------------------------------------------------------

def test_drift_axis_tilts_the_plan_toward_the_direction():
    plan = np.array([0.0, 1.0, 0.0])
    axis = drift_axis_toward(plan, [3.0, 5.0, 0.0])  # the along-plan part is ignored
    path = NeedlePath(np.zeros(3), np.array([0.0, 80.0, 0.0]), NeedleParams(),
                      axis, script=((0.0, 40.0, 10.0),))
    tip = path.state(0.0).tip_lps
    assert tip[0] > 5.0 and abs(tip[2]) < 1e-9  # toward +x
    with pytest.raises(ValueError, match="parallel"):
        drift_axis_toward(plan, [0.0, 2.0, 0.0])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scripts_reach_the_target_depth_and_drift_only_when_told(scenario):
    keys = scenario_script(scenario, 10.0, 60.0)
    t, depth, drift = np.array(keys).T
    assert np.all(np.diff(t) > 0) and t[-1] <= 10.0
    assert depth[-1] == 60.0
    if scenario == "safe":
        assert not drift.any()
    elif scenario == "drift":
        assert drift.max() > 0 and drift[-1] == 0  # corrected
        assert np.argmax(drift) < np.argmin(depth[np.argmax(drift):]) + np.argmax(drift)
    else:
        assert drift[-1] > 0


@pytest.mark.parametrize(("keys", "match"), [
    (((0.0, 1.0, 0.0), (0.0, 2.0, 0.0)), "increase"),
    (((0.0, float("nan"), 0.0),), "finite"),
    (((0.0, 1.0),), "triples"),
])
def test_bad_scripts_are_refused(keys, match):
    with pytest.raises(ValueError, match=match):
        NeedlePath(np.zeros(3), np.array([0.0, 50.0, 0.0]), NeedleParams(),
                   np.array([1.0, 0.0, 0.0]), script=keys)


def test_unknown_scenario_is_refused():
    with pytest.raises(ValueError, match="scenario must be one of"):
        scenario_script("wobble", 10.0, 60.0)
    with pytest.raises(SystemExit):
        main(["demo", "--scenario", "wobble"])


def test_scenario_path_follows_the_plan_when_safe():
    entry, target = np.array([50.0, 120.0, -300.0]), np.array([30.0, 50.0, -295.0])
    path = scenario_path(entry, target, "safe", 10.0, [1.0, 0.0, 0.0])
    end = path.state(10.0)
    assert np.linalg.norm(end.tip_lps - target) < 1e-6 and end.off_plan_mm < 1e-6


# -- the demo, end to end on the real CT (navigation from poses: fast) ------------------

def test_safe_demo_follows_its_plan_and_passes(tmp_path, capsys):
    s, text, out = _demo(tmp_path, capsys, "safe")
    plan = json.loads((out / "plan.json").read_text())
    assert plan["target_spec"] == "foramen:L1-L2:left"
    assert s["verification"]["verdict"] == "PASS", s["verification"]
    levels = [c["level"] for c in s["timeline"]]
    assert levels and "DANGER" not in levels, s["timeline"]
    assert "verification: PASS" in text


def test_drift_demo_warns_then_clears(tmp_path, capsys):
    s, text, _ = _demo(tmp_path, capsys, "drift")
    timeline = s["timeline"]
    ranks = [RANK[c["level"]] for c in timeline]
    worst = ranks.index(max(ranks))
    assert timeline[worst]["level"] == "DANGER", timeline
    assert timeline[worst]["structure"] and timeline[worst]["margin_mm"] is not None
    assert ranks[-1] < RANK["DANGER"], timeline  # cleared after the correction
    assert "the warning cleared" in text and "DANGER" in text
    assert s["verification"]["verdict"] == "PASS", s["verification"]


def test_breach_demo_ends_in_an_explained_violation(tmp_path, capsys):
    s, text, _ = _demo(tmp_path, capsys, "breach")
    ver = s["verification"]
    assert ver["verdict"] == "VIOLATION"
    assert ver["reasons"]
    for reason in ver["reasons"]:  # one line per cause, on the console too
        assert "\n" not in reason and f"  - {reason}" in text
    assert any(c["level"] == "DANGER" for c in s["timeline"])


# -- the console summary ----------------------------------------------------------------

def test_warning_lines_sorted_by_urgency_names_once_counts_match():
    from guidance.session.console import warning_lines

    def w(t, level, structure, d, m, msg):
        return {"t_s": t, "level": level, "structure": structure, "distance_mm": d,
                "margin_mm": m, "message": msg}

    log = [w(0.1, "CAUTION", "aorta", 9.0, 6.0, "aorta: 9.0 mm, near the 6.0 mm margin"),
           w(0.5, "DANGER", "aorta", 5.0, 6.0, "aorta: 5.0 mm, within the 6.0 mm margin"),
           w(0.7, "CAUTION", "aorta", 7.5, 6.0, "aorta: 7.5 mm, near the 6.0 mm margin"),
           w(0.2, "INFO", "plan", 2.5, None, "plan: 2.5 mm off the plan at target depth"),
           w(0.3, "DANGER", "spinal_cord", 2.0, 6.0, "spinal_cord: 2.0 mm, within"),
           w(0.4, "CAUTION", "ribs", float("nan"), 1.0, "outside")]
    lines = warning_lines(log)
    assert lines[0].startswith("warnings: 4 structures (DANGER 2, CAUTION 1, INFO 1)")
    body = lines[1:]
    assert len(body) == 4
    assert body[0].split()[0] == "DANGER" and "spinal_cord: 2.0 mm" in body[0]  # closest
    assert "aorta: 5.0 mm" in body[1] and body[-1].split()[0] == "INFO"
    assert all(line.count("aorta") <= 1 for line in body)
    assert "ribs: outside" in body[2]
    assert warning_lines([]) == ["warnings: none"]
    many = [w(0.1 * i, "CAUTION", f"s{i}", 5.0, 1.0, f"s{i}: 5.0 mm") for i in range(10)]
    out = warning_lines(many, limit=3)
    assert out[0].startswith("warnings: 10 structures") and "7 more" in out[-1]


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise():
    import io

    from guidance.session.console import progress_line

    class Tty(io.StringIO):
        def isatty(self):
            return True

    log = io.StringIO()
    show = progress_line("loading", stream=log, every_s=3600.0)
    for k in range(101):
        show(k / 100, f"slice {k}")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 2  # the first and the end
    assert lines[-1] == "loading: 100% slice 100"
    tty = Tty()
    show = progress_line("loading", stream=tty)
    for k in range(101):
        show(k / 100, "x")
    assert tty.getvalue().count("\r") > 10 and tty.getvalue().endswith("\n")
