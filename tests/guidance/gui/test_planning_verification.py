"""Planning and verification views on a small synthetic phantom (fast, no real data)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from PyQt5.QtCore import QPoint, Qt

from guidance.geometry import ImageVolume
from guidance.gui.planes import orthogonal_planes, render_plane, trajectory_plane
from guidance.gui.planning_view import PlanningView
from guidance.gui.verification_view import VERDICT_COLOURS, VerificationView
from guidance.planning.auto import Candidate
from guidance.planning.config import StructureConfig, StructureSpec
from guidance.planning.plan import Plan
from guidance.planning.provenance import record_anatomy
from guidance.planning.structures import build_structures
from guidance.planning.trajectory import evaluate_trajectory
from guidance.planning.verify import NeedleDetection, VerificationResult
from tests.guidance.gui.helpers import to_array

CORD_XY = np.array([0.0, 20.0])  # a "spinal cord" along S at x=0, y=20 (LPS mm)


@pytest.fixture(scope="module")
def phantom():
    shape = (30, 80, 80)  # k, j, i at 2 mm: x, y in [-80, 78], z in [-30, 28]
    m = np.diag([2.0, 2.0, 2.0, 1.0])
    m[:3, 3] = [-80.0, -80.0, -30.0]
    k, j, i = np.indices(shape)
    grid = ImageVolume(np.zeros(shape, np.uint8), m)
    pts = grid.ijk_to_lps_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1))
    body = (pts[:, 0] / 70) ** 2 + (pts[:, 1] / 60) ** 2 <= 1.0
    cord = np.linalg.norm(pts[:, :2] - CORD_XY, axis=1) <= 6.0
    ct = np.where(body, 40, -1000).astype(np.int16)
    ct[cord] = 30
    labels = ImageVolume(cord.reshape(shape).astype(np.uint8), m)
    cfg = StructureConfig(structures=(StructureSpec("spinal_cord", ("spinal_cord",), 5.0),),
                          derive_nerve_roots=False)
    ss = build_structures(labels, {1: "spinal_cord"}, cfg, roi_center_lps=[0, 0, 0],
                          roi_half_size_mm=[75, 75, 25], use_cache=False)
    return ImageVolume(ct.reshape(shape), m), ss


def test_planes_geometry_round_trip(phantom):
    ct, ss = phantom
    specs = orthogonal_planes([1.0, 2.0, 3.0], fov_mm=100, size_px=64)
    for s in specs:
        p = s.to_lps(10.0, 20.0)
        px, off = s.to_px(p[None])
        assert px[0] == pytest.approx([10.0, 20.0]) and off[0] == pytest.approx(0.0)
    t = trajectory_plane([0, -50, 0], [0, 10, 5], fov_mm=100, size_px=64)
    px, off = t.to_px(np.array([[0, -50, 0], [0, 10, 5]], float))
    assert np.allclose(off, 0) and px[0, 1] < px[1, 1]  # entry above the target
    rgb = render_plane(ct, specs[0], (40.0, 400.0), ss)
    # The cord outline is drawn in the cord's colour around its projected centre.
    c, _ = specs[0].to_px([[CORD_XY[0], CORD_XY[1], 3.0]])
    col, row = c[0].round().astype(int)
    patch = rgb[row - 12:row + 13, col - 12:col + 13]
    assert np.any(np.all(patch == (255, 60, 60), axis=-1))
    with pytest.raises(ValueError, match="coincide"):
        trajectory_plane([0, 0, 0], [0, 0, 0])


def test_planning_view_click_table_auto_save_load(qtbot, phantom, tmp_path):
    ct, ss = phantom
    target = np.array([0.0, 0.0, 0.0])
    calls = []

    def fake_auto(ct_, structures, tgt):
        calls.append(tgt)
        m = evaluate_trajectory([30.0, -50.0, 0.0], tgt.point_lps, structures, target=tgt)
        return SimpleNamespace(candidates=(Candidate(m, 0.9),), n_directions=1,
                               elapsed_s=0.01, rejections={})

    for name in ("ct.nii.gz", "labels.nii.gz"):  # only hashed here
        (tmp_path / name).write_bytes(name.encode())
    anatomy = record_anatomy(str(tmp_path / "ct.nii.gz"), str(tmp_path / "labels.nii.gz"),
                             None, {}, [0.0, 0.0, 0.0], [75.0, 75.0, 25.0])
    view = PlanningView(ct, ss, None, None, tmp_path / "plan.json", auto=fake_auto,
                        anatomy=anatomy)
    qtbot.addWidget(view)
    view.resize(1500, 900)
    view.show()
    qtbot.waitExposed(view)
    # Click the centre of the axial pane: the target goes where the pane centre is.
    pane = view.panes[0]
    view.set_points(None, target)
    r = pane.image_rect()
    qtbot.mouseClick(pane, Qt.MouseButton.LeftButton, pos=QPoint(int(r.center().x()),
                                                                   int(r.center().y())))
    assert view.target_lps is not None
    assert np.linalg.norm(view.target_lps - target) < 2 * pane.spec.pixel_mm
    # Entry straight through the cord: REJECTED, the cord row says INSIDE.
    view.set_points([0.0, 50.0, 0.0], target)
    assert view.metrics is not None and not view.metrics.ok
    rows = {view.table.item(k, 0).text(): view.table.item(k, 3).text()
            for k in range(view.table.rowCount())}
    assert rows["spinal_cord"] == "INSIDE"
    assert view.summary.text().startswith("REJECTED")
    # Auto plan runs off the GUI thread and lists its candidate, which is then used.
    view.start_auto_plan()
    assert view.wait_auto_plan(10.0) and len(calls) == 1
    assert view.cand_list.count() == 1 and "length" in view.cand_list.item(0).text()
    assert view.metrics is not None and view.metrics.ok
    assert np.allclose(view.entry_lps, [30.0, -50.0, 0.0])
    # Save and load round trip; a broken file is named on the message line.
    assert view.save_plan(tmp_path / "plan.json")
    saved = Plan.load(tmp_path / "plan.json")
    assert np.allclose(saved.entry_lps, [30.0, -50.0, 0.0])
    assert saved.anatomy is not None and saved.anatomy.to_json() == anatomy.to_json()
    assert "clearance_mm" in json.loads((tmp_path / "plan.json").read_text())
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert not view.load_plan(bad)
    assert str(bad) in view.message.text() and "cannot load plan" in view.message.text()
    view.set_points([0.0, 50.0, 0.0], None)
    assert view.load_plan(tmp_path / "plan.json")
    assert np.allclose(view.entry_lps, saved.entry_lps)
    assert view.panes[3].rgb is not None  # the reformat along the trajectory is shown


def test_verification_view_verdict_errors_export(qtbot, phantom, tmp_path):
    ct, ss = phantom
    plan = Plan([30.0, -50.0, 0.0], [0.0, 0.0, 0.0])
    tip = np.array([1.0, -1.0, 0.5])
    axis = (tip - plan.entry_lps) / np.linalg.norm(tip - plan.entry_lps)
    det = NeedleDetection(tip, axis, plan.entry_lps + axis * 5, 100, 90, 0.3)
    metrics = evaluate_trajectory(plan.entry_lps, tip, ss)
    res = VerificationResult(det, float(np.linalg.norm(tip)), 1.2, 0.8, -0.4, metrics, "PASS",
                             ("tip 1.5 mm from the target, no structure breached",))
    written = []

    def export(out):
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.html").write_text("ok")
        written.append(out)
        return {"html": out / "report.html"}

    view = VerificationView(ct, plan, res, "", ss, export, tmp_path / "ver")
    qtbot.addWidget(view)
    view.resize(1400, 800)
    view.show()
    qtbot.waitExposed(view)
    assert view.verdict_label.text() == "PASS"
    assert "tip to target" in view.errors.text() and "1.5" in view.errors.text()
    rgb = to_array(view.verdict_label.grab().toImage())
    c = VERDICT_COLOURS["PASS"]
    assert np.mean(np.all(np.abs(rgb.astype(int) - [c.red(), c.green(), c.blue()]) < 10,
                          axis=-1)) > 0.3
    qtbot.mouseClick(view.export_button, Qt.MouseButton.LeftButton)
    assert written == [tmp_path / "ver"] and "report written" in view.message.text()
    none = VerificationView(ct, plan, None, "no needle: 3 voxels above 2500 HU", ss, export)
    qtbot.addWidget(none)
    assert none.verdict == "NEEDLE_NOT_FOUND" and not none.export_button.isEnabled()
    assert "3 voxels" in none.errors.text()
    assert math.isfinite(res.tip_to_target_mm)
