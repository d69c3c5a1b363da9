"""``guidance control-ct``: a control CT DICOM series with a needle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from guidance.cli.main import main
from tests.peers import require_module, require_real_ct

ENTRY = "57.258,115.279,-296.336"
TIP = "38.592,54.224,-291.871"


def test_writes_a_series_with_the_needle_bright_at_the_tip(tmp_path: Path) -> None:
    require_real_ct()
    require_module("pydicom", "pydicom")
    from guidance.io.dicom_series import load_dicom_series

    out = tmp_path / "ct"
    assert main(["control-ct", "--entry", ENTRY, "--tip", TIP, "--out", str(out)]) == 0
    vol = load_dicom_series(out)
    vol = getattr(vol, "volume", vol)
    tip = np.array([float(v) for v in TIP.split(",")])
    axis = tip - np.array([float(v) for v in ENTRY.split(",")])
    axis /= np.linalg.norm(axis)
    i, j, k = np.round(vol.lps_to_ijk_points((tip - 1.5 * axis)[None])[0]).astype(int)
    assert vol.voxels[k, j - 1:j + 2, i - 1:i + 2].max() > 2000


@pytest.mark.parametrize("argv", [
    ["--entry", ENTRY, "--tip", "0,0,5000"],
    ["--entry", "a,b,c", "--tip", TIP],
    ["--entry", TIP, "--tip", TIP],
    ["--entry", "1,2", "--tip", TIP],
])
def test_bad_arguments_exit_2_in_one_line(argv: list[str], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    require_real_ct()
    assert main(["control-ct", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
