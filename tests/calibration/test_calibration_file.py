"""Calibration files: make -> write -> load round trip and validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from guidance.io.calibration_file import (
    CalibrationFileError,
    Provenance,
    load_calibration,
    make_document,
)
from trackers.transform_graph import TransformGraph

PROV = Provenance("2024-01-01T00:00:00+00:00", "ab" * 32, "in.json", "guidance 0.1.0", "x")


def _register_doc() -> dict[str, object]:
    m = np.eye(4)
    m[:3, 3] = [1.0, 2.0, 3.0]
    return make_document(
        "register",
        {
            "moving_to_fixed": m,
            "fre_mm": 0.4,
            "residuals_mm": np.array([0.3, 0.5, 0.4]),
            "fle_mm": 0.7,
            "fle_estimated": False,
            "targets_mm": np.zeros((1, 3)),
            "expected_tre_mm": np.array([0.5]),
        },
        {"TrackerToCT": m},
        PROV,
    )


def _write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "calib.json"
    path.write_text(json.dumps(doc))
    return path


def test_round_trip_and_graph(tmp_path: Path) -> None:
    calib = load_calibration(_write(tmp_path, _register_doc()))
    assert calib.kind == "register"
    assert calib.provenance == PROV
    assert calib.values["fre_mm"] == 0.4
    np.testing.assert_allclose(calib.expected_tre_mm, [0.5])  # type: ignore[arg-type]
    assert calib.lag_s is None and calib.projection is None
    graph = TransformGraph()
    calib.apply_to(graph)
    np.testing.assert_allclose(graph.query("CT", "Tracker").matrix[:3, 3], [-1.0, -2.0, -3.0])
    with pytest.raises(KeyError, match="no transform 'NeedleToCT'"):
        calib.transform("NeedleToCT")
    with pytest.raises(ValueError, match="read-only"):
        calib.transforms["TrackerToCT"][0, 0] = 5.0


def _mutated(**changes: object) -> dict[str, object]:
    doc = _register_doc()
    for key, value in changes.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_mutated(extra=1), "key 'extra': unknown key for kind 'register'"),
        (_mutated(fre_mm=None), "key 'fre_mm': missing"),
        (_mutated(kind="magic"), "key 'kind': must be one of"),
        (_mutated(format_version=2), "key 'format_version': unsupported version 2"),
        (
            _mutated(moving_to_fixed=[[1, 0], [0, 1]]),
            r"key 'moving_to_fixed': must have shape \(4, 4\)",
        ),
        (_mutated(fre_mm="0.4"), "key 'fre_mm': must be a number"),
        (_mutated(fle_estimated=0), "key 'fle_estimated': must be true or false"),
        (
            _mutated(transforms={"trackerToCT": np.eye(4).tolist()}),
            "key 'transforms.trackerToCT': transform name must look like 'FromToTo'",
        ),
        (
            _mutated(transforms={"TrackerToCT": np.diag([2.0, 1, 1, 1]).tolist()}),
            "key 'transforms.TrackerToCT': .*not rigid",
        ),
        (_mutated(transforms={"TrackerToCT": np.diag([-1.0, 1, 1, 1]).tolist()}), "determinant -1"),
        (_mutated(provenance={"created_utc": "x"}), "key 'provenance.input_sha256': missing"),
        ([1, 2], "must be a JSON object, got list"),
    ],
)
def test_invalid_documents_name_file_and_key(tmp_path: Path, doc: object, message: str) -> None:
    path = _write(tmp_path, doc)
    with pytest.raises(CalibrationFileError, match=message) as info:
        load_calibration(path)
    assert str(info.value).startswith(str(path))


def test_invalid_json_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"format": ')
    with pytest.raises(CalibrationFileError, match=r"broken\.json: invalid JSON at line 1"):
        load_calibration(path)
    with pytest.raises(CalibrationFileError, match=r"absent\.json: cannot read"):
        load_calibration(tmp_path / "absent.json")


def test_make_document_refuses_what_would_not_load() -> None:
    with pytest.raises(CalibrationFileError, match="key 'lag_s': missing"):
        make_document("temporal", {}, {}, PROV)
