"""The fluoroscopy projector against a real reference (plastimatch drr), and the
needle's analytic line integral against the voxel projector."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from guidance.geometry import ImageVolume
from guidance.sim.anatomy import hu_to_mu
from guidance.sim.metaimage import to_identity_direction, write_metaimage
from guidance.sim.projector import carm_geometry, needle_chord_mm, project_volume
from tests.peers import missing, require_real_ct


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_projector_matches_plastimatch_drr(tmp_path: Path) -> None:
    if shutil.which("plastimatch") is None:
        missing("plastimatch (apt-get install plastimatch)")
    require_real_ct()
    from guidance.data import load_real_ct

    ct = load_real_ct()
    # Half resolution in-plane keeps the test fast; both projectors see the same volume.
    ijk = ct.ijk_to_lps.copy()
    ijk[:3, :2] *= 2.0
    mu = ImageVolume(hu_to_mu(ct.voxels[:, ::2, ::2], 0.02, 1.0), ijk)
    vol = to_identity_direction(mu)  # plastimatch ignores direction cosines
    write_metaimage(tmp_path / "mu.mha", vol)
    iso = np.array([20.0, 40.0, -280.0])
    size, det_mm, sod, sdd = 128, 300.0, 700.0, 1000.0
    g = carm_geometry(iso, 25.0, 10.0, sod, sdd, det_mm, size)  # oblique: flips would show
    ours = project_volume(vol.voxels, vol.ijk_to_lps, g)
    to_source = g.carm_to_lps[:3, 2]
    vup = -g.carm_to_lps[:3, 1]  # plastimatch: from the detector centre to its top row
    cmd = [
        "plastimatch",
        "drr",
        "-t",
        "raw",
        "-P",
        "none",
        "-r",
        f"{size} {size}",
        "-z",
        f"{det_mm} {det_mm}",
        "--sad",
        str(sod),
        "--sid",
        str(sdd),
        "-o",
        " ".join(map(str, iso)),
        "-n",
        " ".join(map(str, to_source)),
        "--vup",
        " ".join(map(str, vup)),
        "-O",
        str(tmp_path / "drr"),
        "-I",
        str(tmp_path / "mu.mha"),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    ref = np.fromfile(tmp_path / "drr0000.raw", dtype=np.float32).reshape(size, size)
    # plastimatch's image columns run opposite to ours (its x axis is -our column axis,
    # see the "Extrinsic" matrix it writes next to the image).
    ref = ref[:, ::-1]
    ncc = _ncc(ours, ref)
    print(f"NCC with plastimatch drr = {ncc:.6f}")
    assert ncc > 0.99, f"NCC with plastimatch drr = {ncc:.5f}"
    # same units up to plastimatch's cm -> mm factor
    assert np.isclose(ours.sum() / ref.sum(), 10.0, rtol=0.02)


def test_needle_chord_matches_voxelised_cylinder() -> None:
    # A 1 mm radius steel rod voxelised at 0.125 mm, projected by the voxel projector,
    # against the analytic chord lengths: same integral per pixel, within a few %.
    n = 128
    sp = 0.125
    ijk = np.diag([sp, sp, sp, 1.0])
    ijk[:3, 3] = -(n - 1) / 2 * sp
    k, j, i = np.mgrid[:n, :n, :n].astype(np.float32)
    x, y, z = ((i - (n - 1) / 2) * sp, (j - (n - 1) / 2) * sp, (k - (n - 1) / 2) * sp)
    hub, tip = np.array([-5.0, 0.0, -2.5]), np.array([5.0, 0.0, 2.5])
    a = (tip - hub) / np.linalg.norm(tip - hub)
    px, pz = x - hub[0], z - hub[2]
    u = px * a[0] + pz * a[2]
    d2 = (px - u * a[0]) ** 2 + y**2 + (pz - u * a[2]) ** 2
    rod = ((d2 <= 1.0) & (u >= 0) & (u <= np.linalg.norm(tip - hub))).astype(np.float32)
    g = carm_geometry(np.zeros(3), 10.0, 5.0, 700.0, 1000.0, 40.0, 64)
    vox = project_volume(rod, ijk, g)
    chord, (rows, cols) = needle_chord_mm(g, hub, tip, 1.0)
    ana = np.zeros_like(vox)
    ana[rows, cols] = chord
    assert ana.max() > 1.5
    assert abs(ana.sum() / vox.sum() - 1.0) < 0.03
    ratio = ana.sum() / vox.sum()
    print(f"needle chord vs voxelised rod: NCC {_ncc(ana, vox):.4f}, sum ratio {ratio:.4f}")
    assert _ncc(ana, vox) > 0.97
