"""Post-procedure verification on control CTs made by the simulator from the real CT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from guidance.geometry import ImageVolume
from guidance.planning.anatomy import build_anatomy
from guidance.planning.auto import auto_plan
from guidance.planning.plan import Plan
from guidance.planning.structures import build_structures
from guidance.planning.targets import parse_target
from guidance.planning.verify import NeedleNotFoundError, detect_needle, verify_placement
from guidance.sim.control_ct import insert_needle, write_control_ct
from tests.peers import require_real_ct

require_real_ct()  # skipped locally without it, a failure in CI


@pytest.fixture(scope="module")
def setup():
    from guidance.data import load_real_ct, load_real_labels, structure_names

    ct, labels, names = load_real_ct(), load_real_labels(), structure_names()
    target = parse_target("disc:L1-L2:left", build_anatomy(labels, names), ct)
    structures = build_structures(labels, names, roi_center_lps=target.point_lps,
                                  roi_half_size_mm=(100.0, 100.0, 50.0))
    # The candidate with the most room: the test is about verification, not ranking.
    best = max((c.metrics for c in auto_plan(ct, structures, target).candidates),
               key=lambda m: m.min_excess_mm)
    plan = Plan(best.entry_lps, target.point_lps, "disc:L1-L2:left")
    return ct, labels, structures, target, plan


def test_tip_and_axis_are_recovered(setup) -> None:
    ct, _, _, _, plan = setup
    rng = np.random.default_rng(7)
    errors = []
    for _ in range(3):
        tip = plan.target_lps + rng.normal(0.0, 2.0, 3)
        entry = plan.entry_lps + rng.normal(0.0, 3.0, 3)
        control = insert_needle(ct, entry, tip, rng=rng)
        det = detect_needle(control, plan)
        errors.append(float(np.linalg.norm(det.tip_lps - tip)))
        true_axis = (tip - entry) / np.linalg.norm(tip - entry)
        assert np.degrees(np.arccos(min(1.0, float(det.axis_lps @ true_axis)))) < 1.5
    assert max(errors) < 1.5, errors
    print(f"verification tip errors (mm): {np.round(errors, 2).tolist()}")


def test_contrast_elsewhere_is_ignored_and_no_needle_is_reported(setup) -> None:
    ct, _, _, _, plan = setup
    # The real CT has > 8000 voxels above 2500 HU (contrast in the upper veins): none near
    # the lumbar plan, so no needle is invented.
    assert int((ct.voxels > 2500).sum()) > 1000
    with pytest.raises(NeedleNotFoundError, match="no needle"):
        detect_needle(ct, plan)


def test_verdicts(setup) -> None:
    ct, _, structures, target, plan = setup
    good = insert_needle(ct, plan.entry_lps, plan.target_lps + np.array([0.3, -0.4, 0.5]))
    res = verify_placement(good, plan, structures, target=target)
    assert res.verdict == "PASS", res.reasons
    assert res.tip_to_target_mm < 1.5
    assert res.angle_error_deg < 2.0
    # Overshoot 6 mm straight ahead: still inside the disc space region -> off target.
    deep = plan.target_lps + plan.direction_lps * 8.0
    res = verify_placement(insert_needle(ct, plan.entry_lps, deep), plan, structures,
                           target=target)
    assert res.verdict in ("OFF_TARGET", "VIOLATION")
    assert res.tip_to_target_mm == pytest.approx(8.0, abs=1.5)
    assert res.depth_error_mm == pytest.approx(8.0, abs=1.5)


def _crop(vol: ImageVolume, k: slice, j: slice, i: slice) -> ImageVolume:
    m = vol.ijk_to_lps.copy()
    m[:3, 3] = vol.ijk_to_lps_points([[i.start, j.start, k.start]])[0]
    return ImageVolume(np.ascontiguousarray(vol.voxels[k, j, i]), m)


def test_cli_verify_writes_json_html_and_images(setup, tmp_path: Path, capsys) -> None:
    from guidance.cli.main import main

    ct, labels, _, _, plan = setup
    tip = plan.target_lps + np.array([0.3, -0.4, 0.5])
    control = insert_needle(ct, plan.entry_lps, tip)
    box = (slice(0, 48), slice(60, 330), slice(140, 420))
    write_control_ct(_crop(control, *box), tmp_path / "control.nii.gz")
    write_control_ct(_crop(labels, *box), tmp_path / "labels.nii.gz")
    plan.save(tmp_path / "plan.json")
    out = tmp_path / "report"
    rc = main(["verify", "--plan", str(tmp_path / "plan.json"), "--ct",
               str(tmp_path / "control.nii.gz"), "--labels", str(tmp_path / "labels.nii.gz"),
               "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    data = json.loads((out / "verification.json").read_text())
    for key in ("tip_lps_mm", "tip_to_target_mm", "angle_error_deg", "clearance_mm", "verdict"):
        assert key in data
    assert data["verdict"] == "PASS"
    assert np.linalg.norm(np.array(data["tip_lps_mm"]) - tip) < 1.5
    html = (out / "report.html").read_text()
    assert "PASS" in html and "axial_tip.png" in html
    for png in ("axial_tip.png", "needle_reformat.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A plan file that is not one: one-line error, status 2.
    (tmp_path / "bad.json").write_text("{")
    capsys.readouterr()
    rc = main(["verify", "--plan", str(tmp_path / "bad.json"), "--ct", "real", "--out",
               str(out)])
    assert rc == 2 and "bad.json: invalid JSON at line 1" in capsys.readouterr().err


def test_report_axial_image_reads_like_the_scanner_console(setup) -> None:
    """The report's axial image on the real CT: the vertebra in the lower half, the
    aorta anterior to it (above) and left of the midline (on the image's right), found
    through the label map resampled on the figure's own plane."""
    from guidance.data import structure_names
    from guidance.figures import edge_letters, sample_plane
    from guidance.planning.report import axial_tip_plane, key_image

    ct, labels, structures, target, plan = setup
    control = insert_needle(ct, plan.entry_lps, plan.target_lps)
    res = verify_placement(control, plan, structures, target=target)
    spec = axial_tip_plane(control, res)
    plain = key_image(control, spec, plan, res, annotated=False)
    n = spec.size_px
    assert plain.shape == (n, n, 3)
    lab = sample_plane(labels.voxels, labels.lps_to_ijk, spec, order=0, cval=0)
    ids = {name: k for k, name in structure_names().items()}
    spine = np.isin(lab, [ids["vertebrae_L1"], ids["vertebrae_L2"]])
    aorta = lab == ids["aorta"]
    assert spine.sum() > 500 and aorta.sum() > 200
    spine_rc = np.argwhere(spine).mean(axis=0)  # (row, column)
    aorta_rc = np.argwhere(aorta).mean(axis=0)
    assert spine_rc[0] > n / 2, spine_rc  # the spine in the lower half
    assert aorta_rc[0] < spine_rc[0] - 20, (aorta_rc, spine_rc)  # anterior: above
    assert aorta_rc[1] > spine_rc[1], (aorta_rc, spine_rc)  # patient's left: image right
    # The picture agrees with the labels drawn through the same plane: bone is bright.
    grey = plain[..., 0].astype(float)
    assert grey[spine].mean() > grey.mean() + 30
    assert edge_letters(spec.u_lps, spec.v_lps) == {"left": "R", "right": "L", "top": "A",
                                                    "bottom": "P"}
    shown = key_image(control, spec, plan, res, structures)
    assert shown.shape[0] == n and shown.shape[1] > n  # the legend panel beside it
    assert np.any(shown[:, :n] != plain)  # letters, scale bar and outlines burnt in
