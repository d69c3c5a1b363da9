"""Labels for a CT from elsewhere: the same voxels in another axis order are reoriented
exactly, another grid is resampled with its largest shift said, a DICOM SEG is read with
its segment names, and TotalSegmentator is run when installed (said how otherwise)."""

from __future__ import annotations

import itertools
import os
import sys
import types

import numpy as np
import pytest

from guidance.geometry import ImageVolume
from guidance.io.label_grid import labels_onto_ct


def grid(shape=(6, 7, 8)):
    rng = np.random.default_rng(0)
    vox = rng.integers(0, 9, shape).astype(np.uint8)
    m = np.array([[0.8, 0.0, 0.0, -10.0], [0.0, -0.7, 0.0, 50.0], [0.0, 0.0, 2.5, -300.0],
                  [0.0, 0.0, 0.0, 1.0]])
    return vox, m


def stored_otherwise(vox, m, perm, flips):
    """The same physical voxels stored with label axes (i, j, k) taken from the CT's
    axes ``perm`` and reversed where ``flips``; returns (voxels [k, j, i], ijk_to_lps)."""
    ijk = np.transpose(vox, (2, 1, 0))
    new = np.transpose(ijk, perm)
    m2 = np.eye(4)
    m2[:3, 3] = m[:3, 3]
    for b, a in enumerate(perm):
        col = m[:3, a].copy()
        if flips[b]:
            new = np.flip(new, axis=b)
            m2[:3, 3] += col * (ijk.shape[a] - 1)
            col = -col
        m2[:3, b] = col
    return np.ascontiguousarray(np.transpose(new, (2, 1, 0))), m2


@pytest.mark.parametrize("perm,flips", [
    (p, f) for p in itertools.permutations(range(3))
    for f in itertools.product([False, True], repeat=3)])
def test_every_axis_order_and_flip_is_reoriented_exactly(perm, flips):
    vox, m = grid()
    ct = ImageVolume(vox.astype(np.int16), m)
    v2, m2 = stored_otherwise(vox, m, perm, flips)
    fit = labels_onto_ct(ct, ImageVolume(v2, m2))
    expected = "same" if perm == (0, 1, 2) and not any(flips) else "reoriented"
    assert fit.how == expected
    np.testing.assert_array_equal(fit.labels.voxels, vox)
    np.testing.assert_allclose(fit.labels.ijk_to_lps, m)


def test_another_grid_is_resampled_nearest_with_its_largest_shift():
    vox, m = grid()
    ct = ImageVolume(vox.astype(np.int16), m)
    shifted = m.copy()
    shifted[:3, 3] += [0.3, 0.0, 0.0]  # a third of a voxel along i
    fit = labels_onto_ct(ct, ImageVolume(vox, shifted))
    assert fit.how == "resampled"
    assert fit.largest_shift_mm == pytest.approx(0.3, abs=1e-6)
    assert "largest shift 0.30 mm" in fit.note
    np.testing.assert_array_equal(fit.labels.voxels, vox)  # nearest: the same voxels
    half = m.copy()
    half[:3, :3] *= 0.5  # a finer label grid: covers part of the CT
    fit = labels_onto_ct(ct, ImageVolume(vox, half))
    assert fit.how == "resampled" and "covers only" in fit.note


def test_a_part_of_the_grid_is_placed_exactly():
    vox, m = grid()
    ct = ImageVolume(vox.astype(np.int16), m)
    part = m.copy()
    part[:3, 3] = (m @ [2, 1, 1, 1])[:3]  # starts at voxel (2, 1, 1)
    fit = labels_onto_ct(ct, ImageVolume(np.ascontiguousarray(vox[1:4, 1:5, 2:7]), part))
    assert fit.how == "reoriented"
    expected = np.zeros_like(vox)
    expected[1:4, 1:5, 2:7] = vox[1:4, 1:5, 2:7]
    np.testing.assert_array_equal(fit.labels.voxels, expected)


def test_labels_that_miss_the_ct_are_refused():
    vox, m = grid()
    far = m.copy()
    far[:3, 3] += [1000.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="does not overlap"):
        labels_onto_ct(ImageVolume(vox.astype(np.int16), m), ImageVolume(vox, far))


def test_a_dicom_seg_is_read_as_labels_with_its_segment_names(tmp_path):
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from guidance.io.dicom_series import load_ct
    from guidance.io.dicom_write import write_dicom_series
    from guidance.io.labels_io import load_labels_and_names
    from guidance.pacs.source import read_source_series

    vox, m = grid((5, 16, 12))
    labels = np.zeros_like(vox)
    labels[1:4, 2:9, 3:7] = 1
    labels[2:5, 10:14, 1:5] = 2
    ct_dir = tmp_path / "ct"
    write_dicom_series(ImageVolume((vox * 10).astype(np.int16), m), ct_dir)
    ct = load_ct(ct_dir)
    sources = read_source_series(ct_dir, ct).datasets  # in the loaded volume's order
    descs = [hd.seg.SegmentDescription(
        n, name, codes.SCT.Tissue, code, hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n, name, code in ((1, "spinal_cord", codes.SCT.SpinalCord),
                              (2, "aorta", codes.SCT.Aorta))]
    on_ct = labels_onto_ct(ct, ImageVolume(labels, m)).labels.voxels
    seg = hd.seg.Segmentation(
        sources, on_ct, hd.seg.SegmentationTypeValues.BINARY, descs, generate_uid(), 2,
        generate_uid(), 1, "test", "test", "1", "0")
    seg.save_as(tmp_path / "labels.dcm")
    got, names = load_labels_and_names(tmp_path / "labels.dcm")
    assert names == {1: "spinal_cord", 2: "aorta"}
    fit = labels_onto_ct(ct, got)  # the SEG holds only its non-empty slices: a sub-grid
    assert fit.how == "reoriented" and "covers 80% of the CT" in fit.note
    np.testing.assert_array_equal(fit.labels.voxels, on_ct)


def test_labels_totalsegmentator_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    from guidance.cli.main import main

    monkeypatch.setenv("PATH", str(tmp_path))  # no TotalSegmentator on it
    code = main(["plan", "--ct", "real", "--labels", "totalsegmentator", "--target",
                 "disc:L1-L2:left", "--auto", "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert "pip install TotalSegmentator" in err and err.count("\n") == 1


def test_labels_totalsegmentator_runs_it_caches_and_records_its_output(
        tmp_path, capsys, monkeypatch):
    """A stand-in TotalSegmentator (the real one needs its GB of weights) that writes the
    embedded labels: the command line, the class map, the cache and the plan's record."""
    import json

    from guidance.cli.main import main
    from guidance.data import real_ct_paths, structure_names

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    exe = bin_dir / "TotalSegmentator"
    exe.write_text(
        f"#!{sys.executable}\n"
        "import shutil, sys\n"
        f"open({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "args = sys.argv[1:]\n"
        f"shutil.copy({str(real_ct_paths()[1])!r}, args[args.index('-o') + 1])\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fake = types.ModuleType("totalsegmentator.map_to_binary")
    fake.class_map = {"total": structure_names()}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "totalsegmentator", types.ModuleType("totalsegmentator"))
    monkeypatch.setitem(sys.modules, "totalsegmentator.map_to_binary", fake)
    for n in range(2):
        out = tmp_path / f"p{n}.json"
        assert main(["plan", "--ct", "real", "--labels", "totalsegmentator", "--target",
                     "disc:L1-L2:left", "--auto", "--out", str(out)]) == 0
    lines = calls.read_text().splitlines()
    assert len(lines) == 1  # the second plan took the cached labels
    assert lines[0].startswith(f"-i {real_ct_paths()[0]} -o ") and lines[0].endswith("--ml")
    anatomy = json.loads((tmp_path / "p1.json").read_text())["anatomy"]
    assert anatomy["labels"]["path"].endswith(".nii.gz")
    assert anatomy["label_names"]["path"].endswith(".csv")
    capsys.readouterr()
