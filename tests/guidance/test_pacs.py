"""The verification into the patient's file, against real, independent peers: DICOM SR,
SEG and key images read back by highdicom, dcmtk (dsrdump) and dicom3tools (dciodvfy);
a real Orthanc PACS for store, fetch (C-GET and C-MOVE), rejections and unreachable
peers. Peers missing: skipped locally, failing in CI (tests/peers.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from guidance.cli.main import main
from tests.peers import Orthanc, dciodvfy, dcmtk, free_port

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    """The real CT as a scanner's DICOM series (the planning CT), a plan made on it with
    `guidance plan`, and a control CT (another study) with the needle near the target."""
    from guidance.data import load_real_ct
    from guidance.io.dicom_write import write_dicom_series
    from guidance.planning.plan import Plan
    from guidance.sim.control_ct import insert_needle, write_control_ct

    base = tmp_path_factory.mktemp("pacs")
    ct = load_real_ct()
    planning = base / "planning"
    write_dicom_series(ct, planning, description="planning CT", rescale_intercept=-2048.0)
    plan_path = base / "plan.json"
    assert main(["plan", "--ct", str(planning), "--labels", "real", "--target",
                 "disc:L1-L2:left", "--auto", "--out", str(plan_path)]) == 0
    plan = Plan.load(plan_path)
    tip = plan.target_lps + np.array([0.6, -0.4, 0.3])
    control = base / "control"
    write_control_ct(insert_needle(ct, plan.entry_lps, tip, rng=np.random.default_rng(5)),
                     control)
    return {"base": base, "planning": planning, "plan": plan_path, "control": control,
            "tip": tip}


@pytest.fixture(scope="module")
def verified(room):
    """`guidance verify` on the DICOM control CT, no network."""
    out = room["base"] / "verify"
    code = main(["verify", "--plan", str(room["plan"]), "--ct", str(room["control"]),
                 "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc"))
    yield pacs
    pacs.stop()


def control_header(room) -> pydicom.Dataset:
    return pydicom.dcmread(next(room["control"].glob("*.dcm")), stop_before_pixels=True)


def test_verify_writes_sr_seg_and_key_images_in_the_control_ct_study(room, verified):
    files = sorted(p.name for p in (verified / "dicom").iterdir())
    assert files == ["key_1.dcm", "key_2.dcm", "seg.dcm", "sr.dcm"]
    ct = control_header(room)
    for name in files:
        ds = pydicom.dcmread(verified / "dicom" / name, stop_before_pixels=True)
        assert ds.StudyInstanceUID == ct.StudyInstanceUID, name
        assert ds.PatientID == ct.PatientID and ds.PatientName == ct.PatientName, name
        assert ds.SeriesInstanceUID != ct.SeriesInstanceUID, name


@pytest.mark.parametrize("name", ["sr.dcm", "seg.dcm", "key_1.dcm", "key_2.dcm"])
def test_dciodvfy_reports_no_error(verified, name):
    r = subprocess.run([dciodvfy(), str(verified / "dicom" / name)], capture_output=True,
                       text=True, timeout=120)
    errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]
    assert errors == [], errors


def test_dsrdump_reads_the_report(verified):
    r = subprocess.run([dcmtk("dsrdump"), str(verified / "dicom" / "sr.dcm")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Comprehensive 3D SR" in out and "Imaging Measurement Report" in out
    assert '"Needle tip to target distance"' in out and "(mm,UCUM" in out
    assert "(deg,UCUM" in out and "SCOORD3D" in out
    assert '(80064006,SCT,"L1/L2 disc")' in out  # the target, coded
    assert '(2748008,SCT,"Spinal cord")' in out  # a structure's clearance, coded
    assert "Device Observer Name" in out and "guidance" in out


def _items(sr, value_type: str) -> dict[str, list]:
    """Content items of one value type by concept name, anywhere in the tree."""
    out: dict[str, list] = {}
    for item in sr.ContentSequence:
        _walk(item, value_type, out)
    return out


def _walk(item, value_type: str, out: dict[str, list]) -> None:
    if item.ValueType == value_type:
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        out.setdefault(name, []).append(item)
    for child in getattr(item, "ContentSequence", []):
        _walk(child, value_type, out)


def test_highdicom_reads_the_sr_and_its_tip_to_target_equals_the_json(room, verified):
    import highdicom as hd

    sr = hd.sr.srread(verified / "dicom" / "sr.dcm")
    groups = sr.content.get_planar_roi_measurement_groups() + \
        sr.content.get_volumetric_roi_measurement_groups()
    assert groups == []  # one TID 1501 group, no ROI groups
    nums = _items(sr, "NUM")
    report = json.loads((verified / "verification.json").read_text())
    tip_to_target = float(nums["Needle tip to target distance"][0]
                          .MeasuredValueSequence[0].NumericValue)
    assert tip_to_target == pytest.approx(report["tip_to_target_mm"], abs=0.01)
    angle = nums["Angle between needle and planned trajectory"][0].MeasuredValueSequence[0]
    assert float(angle.NumericValue) == pytest.approx(report["angle_error_deg"], abs=0.01)
    assert angle.MeasurementUnitsCodeSequence[0].CodeValue == "deg"
    # Clearances: measured ones only (the 30 mm cap is "at least", not a measurement).
    clear = nums["Minimum clearance from the needle"]
    values = {float(c.MeasuredValueSequence[0].NumericValue) for c in clear}
    measured = {round(v, 2) for v in report["clearance_mm"].values() if v < 30.0 - 1e-6}
    assert {round(v, 2) for v in values} == measured
    # The plan's target and the tip as SCOORD3D in the control CT's frame of reference.
    coords = [c for items in _items(sr, "SCOORD3D").values() for c in items]
    assert coords
    frame = control_header(room).FrameOfReferenceUID
    assert {c.ReferencedFrameOfReferenceUID for c in coords} == {frame}
    plan = json.loads(room["plan"].read_text())
    points = [np.array(c.GraphicData, float) for c in coords if c.GraphicType == "POINT"]
    assert any(np.allclose(p, plan["target_lps_mm"], atol=1e-3) for p in points)
    codes = _items(sr, "CODE")
    verdict = codes["Needle placement verdict"][0].ConceptCodeSequence[0]
    assert verdict.CodeValue == report["verdict"] == "PASS"


def test_the_seg_holds_the_needle_on_the_control_ct_grid(room, verified):
    import highdicom as hd

    from guidance.io.dicom_series import load_ct

    seg = hd.seg.segread(verified / "dicom" / "seg.dcm")
    ct = control_header(room)
    assert seg.FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID
    desc = seg.SegmentSequence[0]
    assert desc.SegmentLabel == "Needle"
    assert desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "79068005"  # SCT needle
    volume = load_ct(room["control"])
    vol_seg = seg.get_volume(combine_segments=True)
    mask = np.asarray(vol_seg.array) > 0
    ijk = np.argwhere(mask)  # highdicom's volume axes follow its own affine
    pts = (vol_seg.affine @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    pts_lps = pts  # highdicom volumes are in LPS (DICOM's patient frame)
    report = json.loads((verified / "verification.json").read_text())
    tip = np.array(report["tip_lps_mm"])
    axis = np.array(report["axis_lps"])
    assert len(pts_lps) > 50
    assert float(np.min(np.linalg.norm(pts_lps - tip, axis=1))) < 1.0
    beyond = (pts_lps - tip) @ axis
    assert float(beyond.max()) < 1.0  # nothing segmented past the reported tip
    # ... and they lie on the needle: within 1.5 mm of its line
    rel = pts_lps - tip
    across = np.linalg.norm(rel - np.outer(rel @ axis, axis), axis=1)
    assert float(across.max()) <= 1.6
    del volume


def test_key_images_are_radiological_with_patient_orientation(verified):
    axial = pydicom.dcmread(verified / "dicom" / "key_1.dcm")
    assert axial.SOPClassUID == SC_CLASS
    assert list(axial.PatientOrientation) == ["L", "P"]  # left on the right, posterior down
    assert axial.PhotometricInterpretation == "RGB" and axial.pixel_array.ndim == 3
    png = verified / "axial_tip.png"
    import cv2

    assert axial.pixel_array.shape == cv2.imread(str(png)).shape


def test_orthanc_round_trip_store_fetch_plan_verify(room, orthanc, tmp_path):
    """storescu (dcmtk) the planning CT; `guidance pacs fetch` it back (same SOP
    Instance UIDs, C-GET and C-MOVE); plan on the fetched series; verify the control CT
    with --pacs: SR, SEG and the key images arrive in the control CT's study."""
    r = subprocess.run([dcmtk("storescu"), "-aec", orthanc.aet, "-aet", "GUIDANCE", "+sd",
                        "127.0.0.1", str(orthanc.dicom_port), str(room["planning"])],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    written = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
               for p in room["planning"].iterdir()}
    study = pydicom.dcmread(next(room["planning"].iterdir()),
                            stop_before_pixels=True).StudyInstanceUID
    for how in ([], ["--move", "--port", str(orthanc.move_port)]):
        fetched = tmp_path / f"fetched{len(how)}"
        assert main(["pacs", "fetch", "--from", orthanc.address, "--study", study, "--out",
                     str(fetched), *how]) == 0
        got = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
               for p in fetched.iterdir()}
        assert got == written, how
    plan = tmp_path / "plan.json"
    assert main(["plan", "--ct", str(tmp_path / "fetched0"), "--labels", "real", "--target",
                 "disc:L1-L2:left", "--auto", "--out", str(plan)]) == 0
    a = json.loads(plan.read_text())
    b = json.loads(room["plan"].read_text())
    assert np.allclose(a["target_lps_mm"], b["target_lps_mm"], atol=0.5)
    out = tmp_path / "verify"
    assert main(["verify", "--plan", str(plan), "--ct", str(room["control"]), "--out",
                 str(out), "--pacs", orthanc.address]) == 0
    control_study = control_header(room).StudyInstanceUID
    classes = sorted(i["SOPClassUID"] for i in orthanc.instances_of_study(control_study))
    assert classes == sorted([SR_CLASS, SEG_CLASS, SC_CLASS, SC_CLASS])


def test_unreachable_pacs_exit_2_one_line_and_every_file_kept(room, orthanc, tmp_path,
                                                             capsys):
    out = tmp_path / "verify"
    nobody = f"NOBODY@127.0.0.1:{free_port()}"
    r = subprocess.run([sys.executable, "-m", "guidance.cli.main", "verify", "--plan",
                        str(room["plan"]), "--ct", str(room["control"]), "--out", str(out),
                        "--pacs", nobody], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "cannot connect" in errors[0] and "pacs store" in errors[0]
    assert (out / "verification.json").exists() and (out / "report.html").exists()
    kept = sorted(p.name for p in (out / "dicom").iterdir())
    assert kept == ["key_1.dcm", "key_2.dcm", "seg.dcm", "sr.dcm"]
    # ... and sent later, as the message says; a whole output folder too (its report's
    # HTML, PNG and JSON beside the DICOM files are not sent).
    capsys.readouterr()
    assert main(["pacs", "store", str(out / "dicom"), "--to", orthanc.address]) == 0
    assert main(["pacs", "store", str(out), "--to", orthanc.address]) == 0
    assert "4 of 4 object(s) stored" in capsys.readouterr().out


def test_a_pacs_that_rejects_one_object_gets_the_others(verified, tmp_path, capsys):
    """Orthanc accepting only uncompressed transfer syntaxes refuses a key image kept
    RLE-compressed: that object is named, the other three are stored."""
    import shutil

    from pydicom.uid import RLELossless

    mixed = tmp_path / "mixed"
    shutil.copytree(verified / "dicom", mixed)
    ds = pydicom.dcmread(mixed / "key_2.dcm")
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(mixed / "key_2.dcm")
    pacs = Orthanc(tmp_path / "picky",
                   AcceptedTransferSyntaxes=["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
    try:
        code = main(["pacs", "store", str(mixed), "--to", pacs.address])
        out, err = capsys.readouterr()
        assert code == 2
        refused = [ln for ln in out.splitlines() if ln.startswith("NOT STORED")]
        assert len(refused) == 1 and "key_2.dcm" in refused[0] and "RLE Lossless" in refused[0]
        assert "3 of 4 object(s) stored" in out
        assert "1 object(s) not stored" in err
        stored = pacs.get("/instances")
        assert isinstance(stored, list) and len(stored) == 3
    finally:
        pacs.stop()


def test_wrong_called_ae_title_is_a_rejection_named_in_one_line(orthanc, capsys):
    code = main(["pacs", "echo", "--pacs", f"WRONG@127.0.0.1:{orthanc.dicom_port}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "association rejected" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ["pacs", "echo", "--pacs", "no-at-sign:4242"],
    ["pacs", "echo", "--pacs", "A@host:99999"],
    ["pacs", "echo", "--pacs", "THIS_AE_TITLE_IS_TOO_LONG@h:1"],
    ["pacs", "echo", "--pacs", "A@h:1", "--ae-title", "back\\slash"],
    ["pacs", "fetch", "--from", "A@h:1", "--study", "1.2", "--out", "/nonexistent/dir/x"],
    ["pacs", "store", "/nonexistent/file.dcm", "--to", "A@h:1"],
])
def test_bad_pacs_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        code = main(argv)
        raise SystemExit(code)
    assert e.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_verify_on_a_nifti_ct_writes_no_invented_identity(room, tmp_path, capsys):
    from guidance.io.dicom_series import load_ct
    from guidance.sim.control_ct import write_control_ct

    nifti = tmp_path / "control.nii.gz"
    write_control_ct(load_ct(room["control"]), nifti)
    out = tmp_path / "v"
    assert main(["verify", "--plan", str(room["plan"]), "--ct", str(nifti), "--out",
                 str(out)]) == 0
    assert "DICOM objects: none" in capsys.readouterr().out
    assert not (out / "dicom").exists()
    code = main(["verify", "--plan", str(room["plan"]), "--ct", str(nifti), "--out",
                 str(tmp_path / "v2"), "--pacs", "A@127.0.0.1:1"])
    assert code == 2
    assert "nothing to send" in capsys.readouterr().err


def test_a_scanner_series_plans_as_its_nifti_with_the_embedded_labels(room, tmp_path):
    """The planning series is the real CT as a scanner writes it: IOP (1,0,0, 0,-1,0),
    slices ordered along the normal (feet-first against the NIfTI's head-first k axis).
    The embedded labels (made on the NIfTI) are reoriented exactly onto it, and the plan
    is the NIfTI's within 0.5 mm."""
    from guidance.data import load_real_ct
    from guidance.io.dicom_series import load_ct

    first = pydicom.dcmread(next(room["planning"].iterdir()), stop_before_pixels=True)
    assert [round(float(v)) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, -1, 0]
    series, nifti = load_ct(room["planning"]), load_real_ct()
    assert series.ijk_to_lps[2, 2] * nifti.ijk_to_lps[2, 2] < 0  # k axes opposed
    out = tmp_path / "nifti_plan.json"
    assert main(["plan", "--ct", "real", "--labels", "real", "--target", "disc:L1-L2:left",
                 "--auto", "--out", str(out)]) == 0
    a, b = json.loads(out.read_text()), json.loads(room["plan"].read_text())
    for key in ("entry_lps_mm", "target_lps_mm"):
        assert np.linalg.norm(np.subtract(a[key], b[key])) < 0.5, key
