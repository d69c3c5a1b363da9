"""A US procedure that moves: the in-plane needle advances toward a target beside the
nerve at a block's pace (a few mm/s, with pauses); the scenarios mean on ultrasound what
they mean on the CT plan (safe stays clear and reaches the target, drift comes near the
nerve with the vessel on the path ahead and is corrected, breach enters the nerve),
judged against the scene's ground truth; a target may be a pixel of the frames."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from guidance.cli.common import pixel_point
from guidance.cli.main import main
from guidance.sim import make_scanner, sample_params
from guidance.sim.scenario import SCENARIOS
from guidance.sim.us_scenario import SPEEDS_MM_S, target_beside_nerve, us_story, us_verify

FPS = 30.0
LOOK_AHEAD_MM = 10.0


def _scanner(seed=0, size=256, params=None):
    return make_scanner("us", size=size, seed=seed, params=params)


def _tips(scanner, story, fps=FPS):
    """(t, (N, 3) tip in the probe frame, (N, 3) axis) over the story and 1 s beyond."""
    t = np.arange(0.0, story.end_s + 1.0, 1.0 / fps)
    states = [scanner.path.state(x) for x in t]
    tips = np.array([scanner.lps_to_probe(s.tip_lps) for s in states])
    rot = scanner.probe_to_lps[:3, :3]
    axes = np.array([rot.T @ s.axis_lps for s in states])
    return t, tips, axes


def _vessel_ahead(scanner, tip, axis):
    """Smallest signed distance of the vessel to the path ahead (LOOK_AHEAD_MM), mm."""
    d = axis[:2] / np.linalg.norm(axis[:2])
    pts = tip[:2] + np.linspace(0.0, LOOK_AHEAD_MM, 41)[:, None] * d
    return float(scanner.vessel.signed_distance_mm(pts).min())


# -- the scene's ground truth -------------------------------------------------------------

@pytest.mark.parametrize("case", ["default", "sampled-1", "sampled-2"])
def test_structures_are_the_labels(case):
    params = None if case == "default" else sample_params(
        "us", np.random.default_rng(int(case[-1])))
    s = _scanner(seed=3, size=128, params=params)
    labels = s.frame(0, 0.0).truth.labels
    n = s.size
    jj, ii = np.mgrid[0:n, 0:n]
    xy = s.px_to_probe_mm(0, 0) + np.stack([ii.ravel(), jj.ravel()], 1) * s.spacing_mm
    seen = labels.ravel() != 0  # outside the footprint the labels are blanked
    footprint = labels.any(axis=0)[ii.ravel()] | seen
    for st in s.structures:
        inside = s.nerve.signed_distance_mm(xy) <= 0 if st.name == "nerve" else \
            s.vessel.signed_distance_mm(xy) <= 0
        agree = inside == (labels.ravel() == st.label)
        assert agree[footprint].all(), (case, st.name)
        assert inside.sum() > 10, (case, st.name)


def test_signed_distance_is_metric():
    s = _scanner()
    nerve = s.nerve
    cx, cy = nerve.centre_mm
    a, b = nerve.radii_mm
    d = nerve.signed_distance_mm([[cx - a - 2.0, cy], [cx, cy - b - 1.5], [cx, cy],
                                  [cx + a, cy]])
    np.testing.assert_allclose(d, [2.0, 1.5, -min(a, b), 0.0], atol=0.02)
    with pytest.raises(ValueError, match="xy_mm"):
        nerve.signed_distance_mm([1.0, 2.0, 3.0])


def test_pixels_and_probe_millimetres_round_trip():
    s = _scanner(size=200)
    px = np.array([[0.0, 0.0], [199.0, 199.0], [57.5, 120.25]])
    xy = np.array([s.px_to_probe_mm(*p) for p in px])
    np.testing.assert_allclose(s.probe_mm_to_px(xy), px, atol=1e-9)
    # The frame's own geometry agrees: pixel (i, j) at ijk_to_lps, mapped to the probe.
    ijk_to_lps = s.frame(0, 0.0).image.ijk_to_lps
    for p, q in zip(px, xy, strict=True):
        lps = ijk_to_lps @ np.array([p[0], p[1], 0.0, 1.0])
        np.testing.assert_allclose(s.lps_to_probe(lps[:3])[:2], q, atol=1e-9)


# -- the scripts: pace, pauses, what each scenario does to the nerve and the vessel --------

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_needle_moves_at_a_blocks_pace_with_pauses(scenario):
    s = _scanner()
    story = us_story(s, scenario)
    assert story.time_scale == 1.0 and s.path is story.path
    t, tips, _ = _tips(s, story)
    speed = np.linalg.norm(np.diff(tips, axis=0), axis=1) * FPS
    assert speed.max() <= SPEEDS_MM_S["withdraw"] + 0.3, speed.max()
    moving = speed > 0.05
    assert moving.mean() > 0.4  # it does move most of the time
    advancing = speed[moving & (np.arange(len(speed)) < np.argmax(t >= story.end_s - 2.0))]
    assert 1.0 <= np.median(advancing) <= 3.0
    # Pauses: runs of at least 0.8 s standing still before the end.
    still = np.r_[False, ~moving[: int((story.end_s - 2.0) * FPS)], False].astype(int)
    runs = np.flatnonzero(np.diff(still) == -1) - np.flatnonzero(np.diff(still) == 1)
    assert (runs >= 0.8 * FPS - 1).sum() >= 1, runs
    # In the image plane throughout; visible in the image within the first second.
    assert np.abs(tips[:, 2]).max() < 1e-6
    seen = [s.frame(0, x).truth.needle_in_view for x in (0.0, 1.0)]
    assert seen == [False, True]


def test_safe_stays_clear_and_reaches_the_target_beside_the_nerve():
    s = _scanner()
    story = us_story(s, "safe")
    _, tips, axes = _tips(s, story)
    assert s.nerve.signed_distance_mm(tips[:, :2]).min() >= 2.5  # never in CAUTION
    assert min(_vessel_ahead(s, p, a) for p, a in zip(tips, axes, strict=True)) > 2.0
    target = target_beside_nerve(s)
    np.testing.assert_allclose(tips[-1, :2], target, atol=1e-6)
    assert s.nerve.signed_distance_mm(target)[0] == pytest.approx(3.0, abs=0.02)
    ver = us_verify(s, s.path.state(story.end_s).tip_lps, story.target_xy_mm)
    assert ver["verdict"] == "PASS" and not ver["reasons"]
    # The target pixel is where the frames show the tip at the end.
    tip_ij = s.frame(0, story.end_s).truth.tip_ij
    np.testing.assert_allclose(tip_ij, story.target_px, atol=1e-6)


def test_drift_comes_near_the_nerve_with_the_vessel_ahead_then_is_corrected():
    s = _scanner()
    story = us_story(s, "drift")
    assert 2.0 <= story.drift_deg <= 15.0
    t, tips, axes = _tips(s, story)
    nerve = s.nerve.signed_distance_mm(tips[:, :2])
    k = int(np.argmin(nerve))
    assert 0.5 < nerve[k] <= 1.0  # CAUTION (within 2 mm), not contact (0.5 mm)
    assert _vessel_ahead(s, tips[k], axes[k]) <= -1.0  # the vessel on the path ahead
    assert s.vessel.signed_distance_mm(tips[:, :2]).min() > 1.0  # never entered
    # Corrected: after the redirection, clear of both, and at the target at the end.
    redirected = dict((w, ts) for ts, w in story.events)["redirected onto the line"]
    after = t >= redirected
    assert nerve[after].min() >= 2.5
    assert min(_vessel_ahead(s, p, a) for p, a in zip(tips[after], axes[after],
                                                        strict=True)) > 2.0
    assert 4.0 <= redirected - t[k] <= 8.0  # seen, stopped, withdrawn: seconds, not frames
    ver = us_verify(s, s.path.state(story.end_s).tip_lps, story.target_xy_mm)
    assert ver["verdict"] == "PASS", ver


def test_breach_ends_inside_the_nerve():
    s = _scanner()
    story = us_story(s, "breach")
    _, tips, _ = _tips(s, story)
    assert s.nerve.signed_distance_mm(tips[-1, :2])[0] == pytest.approx(-1.0, abs=0.1)
    assert s.vessel.signed_distance_mm(tips[:, :2]).min() > 1.0
    ver = us_verify(s, s.path.state(story.end_s).tip_lps, story.target_xy_mm)
    assert ver["verdict"] == "VIOLATION"
    assert any("inside the nerve (intraneural)" in r for r in ver["reasons"])


def test_a_shorter_time_plays_the_story_faster_a_longer_one_holds():
    s = _scanner()
    natural = us_story(s, "drift")
    fast = us_story(_scanner(), "drift", seconds=natural.natural_s / 2)
    assert fast.time_scale == pytest.approx(2.0)
    assert fast.end_s == pytest.approx(natural.natural_s / 2)
    assert "played 2.0x faster" in fast.description
    slow = us_story(_scanner(), "drift", seconds=100.0)
    assert slow.time_scale == 1.0 and slow.end_s == pytest.approx(natural.end_s)
    with pytest.raises(ValueError, match="seconds"):
        us_story(_scanner(), "drift", seconds=0.0)
    with pytest.raises(ValueError, match="scenario must be one of"):
        us_story(_scanner(), "wobble")


@pytest.mark.parametrize("seed", [1, 2, 4])
def test_the_scenarios_hold_in_other_scenes(seed):
    """Sampled scenes (another depth, angle, side, nerve and vessel): drift still comes
    near the nerve and is corrected, or says it cannot."""
    params = sample_params("us", np.random.default_rng(seed))
    for scenario in SCENARIOS:
        s = _scanner(params=params)
        try:
            story = us_story(s, scenario)
        except ValueError as e:
            assert scenario != "safe" and "no deviation" in str(e)
            continue
        _, tips, _ = _tips(s, story, fps=10.0)
        nerve = s.nerve.signed_distance_mm(tips[:, :2])
        end = us_verify(s, s.path.state(story.end_s).tip_lps, story.target_xy_mm)
        if scenario == "safe":
            assert nerve.min() >= 2.5 and end["verdict"] == "PASS"
        elif scenario == "drift":
            assert 0.5 < nerve.min() <= 1.0 and end["verdict"] == "PASS"
        else:
            assert nerve[-1] < 0 and end["verdict"] == "VIOLATION"


# -- a target as a pixel ------------------------------------------------------------------

def test_a_target_pixel_aims_the_needle_there():
    s = _scanner(size=256)
    px = (150.0, 100.0)
    story = us_story(s, "safe", target_xy_mm=s.px_to_probe_mm(*px))
    np.testing.assert_allclose(story.target_px, px, atol=1e-9)
    np.testing.assert_allclose(s.frame(0, story.end_s).truth.tip_ij, px, atol=1e-6)
    assert s.target_px == pytest.approx(px)
    with pytest.raises(ValueError, match="outside the image"):
        s.aim_at(s.px_to_probe_mm(128.0, 2.0))  # 0.3 mm deep


@pytest.mark.parametrize(("text", "ok"), [
    ("120,80", (120.0, 80.0)), (" 12.5 , 3 ", (12.5, 3.0)), ("120", None), ("1,2,3", None),
    ("a,b", None), ("-1,5", None), ("nan,5", None), ("5,inf", None),
])
def test_pixel_point_parser(text, ok):
    if ok is None:
        with pytest.raises(argparse.ArgumentTypeError):
            pixel_point(text)
    else:
        assert pixel_point(text) == ok


def test_target_px_and_scenario_are_refused_where_they_mean_nothing(capsys):
    assert main(["demo", "--modality", "fluoro", "--target-px", "10,10"]) == 2
    assert "--target-px" in capsys.readouterr().err
    assert main(["simulate", "--modality", "fluoro", "--scenario", "drift", "--listen",
                 "5999", "--seconds", "1"]) == 2
    assert "--modality us" in capsys.readouterr().err
    assert main(["simulate", "--modality", "us", "--target-px", "100,1", "--size", "256",
                 "--listen", "5999", "--seconds", "1"]) == 2
    assert "outside the image" in capsys.readouterr().err


# -- end to end: the demo with the shipped model and the live anatomy check ----------------

RANK = {"NONE": 0, "INFO": 1, "CAUTION": 2, "DANGER": 3}


@pytest.mark.slow
def test_us_drift_demo_warns_then_clears(tmp_path, capsys):
    out = tmp_path / "drift"
    assert main(["demo", "--modality", "us", "--scenario", "drift", "--size", "256",
                 "--seconds", "12", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    text = capsys.readouterr().out
    timeline = s["timeline"]
    ranks = [RANK[c["level"]] for c in timeline]
    assert ranks and max(ranks) >= RANK["CAUTION"], timeline
    worst = timeline[ranks.index(max(ranks))]
    assert worst["structure"] in ("nerve (US)", "vessel (US)"), timeline
    assert ranks[-1] == 0, timeline  # cleared after the correction
    assert s["verification"]["verdict"] == "PASS"
    assert "the warning cleared" in text and "verification (the scene's ground truth" in text
    assert s["target_px"] and s["story_events"]
    assert s["verification"]["live_tip_to_target_mm"] < 1.5  # the loop sees it there too


@pytest.mark.slow
def test_us_demo_aims_at_a_target_pixel(tmp_path):
    out = tmp_path / "px"
    assert main(["demo", "--modality", "us", "--size", "256", "--seconds", "6",
                 "--target-px", "150,110", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["target_px"] == [150.0, 110.0]
    ver = s["verification"]
    assert ver["verdict"] == "PASS" and ver["tip_px"] == pytest.approx([150.0, 110.0], abs=0.2)
    assert ver["live_tip_to_target_mm"] < 1.5
