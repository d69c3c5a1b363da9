"""The one configuration loader (``guidance.io.config_schema``) and every section built
by it: a case table of refusals (unknown key, wrong type, a boolean for a number, NaN,
out of range, nested paths, the file's name), defaults round trips, and
``docs/CONFIG.md`` generated from the fields (``python tests/guidance/test_config_loader.py``
rewrites it)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from guidance.ctscan.needle3d import NeedleFitConfig
from guidance.ctscan.processor import ControlScanConfig
from guidance.ctscan.registration import RegistrationConfig
from guidance.io.config_schema import (
    ConfigError,
    ConfigTypeError,
    describe,
    load_file,
    load_section,
    markdown_table,
)
from guidance.pipeline.config import (
    IngestConfig,
    NavigationConfig,
    OutputConfig,
    PipelineConfig,
    PreprocessConfig,
    SegmentConfig,
    config_from_dict,
    load_config,
)
from guidance.planning.config import (
    AutoPlanConfig,
    PlanningConfig,
    StructureConfig,
    StructureSpec,
    TrajectoryConfig,
    load_planning_config,
)
from guidance.safety.config import SafetyConfig
from guidance.safety.image_anatomy import ImageAnatomyConfig
from models.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "CONFIG.md"

#: Every section with its path in its document.
SECTIONS: list[tuple[type, str]] = [
    (PipelineConfig, ""), (IngestConfig, "ingest"), (NavigationConfig, "navigation"),
    (PreprocessConfig, "preprocess"), (SegmentConfig, "segment"), (OutputConfig, "output"),
    (SafetyConfig, "safety"), (ImageAnatomyConfig, "image_anatomy"),
    (PlanningConfig, ""), (StructureConfig, "structures"), (TrajectoryConfig, "trajectory"),
    (AutoPlanConfig, "auto"), (ControlScanConfig, "ct_scan"), (NeedleFitConfig, "ct_scan.fit"),
    (RegistrationConfig, "ct_scan.registration"), (TrainConfig, "train"),
]


def _as_json(obj: Any) -> Any:
    """A section as the JSON document that builds it (tuples as lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _as_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_as_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _as_json(v) for k, v in obj.items()}
    return obj


# -- refusals -------------------------------------------------------------------------------

REFUSED: list[tuple[str, type, dict[str, Any], type, str]] = [
    ("unknown key", SafetyConfig, {"lateral_caution": 5.0}, ConfigError,
     "plan.json: safety.lateral_caution: unknown key (allowed: ahead_extra_mm, "),
    ("wrong type", SafetyConfig, {"hold_s": "0.3"}, ConfigTypeError,
     "plan.json: safety.hold_s: expected a number in [0, 10] s, got '0.3'"),
    ("bool for number", SafetyConfig, {"coverage_k": True}, ConfigTypeError,
     "plan.json: safety.coverage_k: expected a number in [0, 5], got True (a boolean)"),
    ("bool for integer", SafetyConfig, {"shaft_points": False}, ConfigTypeError,
     "plan.json: safety.shaft_points: expected an integer in [2, 256], got False"),
    ("float for integer", ImageAnatomyConfig, {"rise_frames": 2.5}, ConfigTypeError,
     "plan.json: image_anatomy.rise_frames: expected an integer in [1, 3] frames, got 2.5"),
    ("NaN", SafetyConfig, {"danger_ahead_mm": math.nan}, ConfigError,
     "plan.json: safety.danger_ahead_mm: expected a number in [0, 100] mm, got nan"),
    ("infinity", TrajectoryConfig, {"step_mm": math.inf}, ConfigError,
     "plan.json: trajectory.step_mm: expected a number in (0, 10] mm, got inf"),
    ("out of range", SafetyConfig, {"lateral_caution_mm": -1.0}, ConfigError,
     "plan.json: safety.lateral_caution_mm: expected a number in [0, 50] mm, got -1.0"),
    ("above range", ImageAnatomyConfig, {"min_probability": 1.5}, ConfigError,
     "plan.json: image_anatomy.min_probability: expected a number in (0, 1], got 1.5"),
    ("not a choice", SegmentConfig, {"polarity": "grey"}, ConfigError,
     "plan.json: segment.polarity: expected one of 'bright', 'dark', got 'grey'"),
    ("cross-field", SafetyConfig, {"angle_info_deg": 9.0}, ConfigError,
     "plan.json: safety.angle_caution_deg: must be >= angle_info_deg (9 deg), got 8.0"),
    ("shared cross-field", ImageAnatomyConfig, {"nerve_contact_mm": 3.0}, ConfigError,
     "plan.json: image_anatomy.nerve_caution_mm: must be >= nerve_contact_mm (3 mm), got 2.0"),
    ("nested section", ControlScanConfig, {"fit": {"min_voxels": 0}}, ConfigError,
     "plan.json: ct_scan.fit.min_voxels: expected an integer in [2, 1000000], got 0"),
    ("nested unknown key", ControlScanConfig, {"registration": {"seeds": 1}}, ConfigError,
     "plan.json: ct_scan.registration.seeds: unknown key (allowed: bone_hu, "),
    ("section not an object", ControlScanConfig, {"fit": [1]}, ConfigTypeError,
     "plan.json: ct_scan.fit: expected an object (section NeedleFitConfig), got [1]"),
    ("list item", StructureConfig,
     {"structures": [{"name": "cord", "labels": ["spinal_cord"], "margin_mm": 99}]},
     ConfigError, "plan.json: structures.structures[0].margin_mm: expected a number in "
                  "[0, 50] mm, got 99"),
    ("list item type", TrajectoryConfig, {"needle_lengths_mm": [50, "70"]}, ConfigTypeError,
     "plan.json: trajectory.needle_lengths_mm[1]: expected a number in (0, 500] mm, got '70'"),
    ("empty list", TrajectoryConfig, {"needle_lengths_mm": []}, ConfigError,
     "plan.json: trajectory.needle_lengths_mm: expected a non-empty list of numbers"),
    ("dict value", NavigationConfig, {"stale_limits_s": {"NeedleToReference": -1}},
     ConfigError, "plan.json: navigation.stale_limits_s.NeedleToReference: expected a "
                  "number in (0, 10] s, got -1"),
    ("optional", TrainConfig, {"class_weights": [1, -2]}, ConfigError,
     "plan.json: train.class_weights[1]: expected a number in [0, 1000], got -2"),
    ("own check", TrainConfig, {"crop": 50}, ConfigError,
     "plan.json: train.crop: expected a multiple of 16, got 50"),
    ("not a mapping", SafetyConfig, [], ConfigTypeError,  # type: ignore[list-item]
     "plan.json: safety: expected an object (section SafetyConfig), got list []"),
]


@pytest.mark.parametrize(("cls", "data", "error", "message"), [r[1:] for r in REFUSED],
                         ids=[r[0] for r in REFUSED])
def test_refusals_name_file_key_range_and_value(cls: type, data: dict[str, Any],
                                                error: type, message: str) -> None:
    path = dict((c, p) for c, p in SECTIONS)[cls]
    with pytest.raises(error, match="^" + re.escape(message)) as e:
        load_section(cls, data, path=path, file="plan.json")
    err = e.value
    assert isinstance(err, ValueError)  # every ConfigError is a ValueError (InputError)
    assert isinstance(err, ConfigError)
    assert err.file == "plan.json" and err.path.startswith(path)


def test_wrong_types_are_also_type_errors() -> None:
    with pytest.raises(TypeError, match="clearance_cap_mm"):
        StructureConfig.from_dict({"clearance_cap_mm": "30"})


def test_sections_built_in_code_are_checked_alike() -> None:
    with pytest.raises(ConfigError, match=r"^safety\.hysteresis_mm: expected a number in "
                                          r"\[0, 10\] mm, got -0\.5$"):
        SafetyConfig(hysteresis_mm=-0.5)
    with pytest.raises(ConfigError, match=r"^ct_scan\.fit\.seed: expected an integer"):
        ControlScanConfig(fit={"seed": -1})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^train\.steps: expected an integer in \[1, "):
        TrainConfig(steps=0)


def test_the_file_name_is_in_every_message(tmp_path: Path) -> None:
    p = tmp_path / "run.json"
    p.write_text(json.dumps({"image_anatomy": {"rise_frames": 9}}))
    with pytest.raises(ConfigError, match=r"^.*run\.json: image_anatomy\.rise_frames: "
                                          r"expected an integer in \[1, 3\] frames, got 9$"):
        load_config(p)
    p.write_text(json.dumps({"auto": {"n_best": 0}}))
    with pytest.raises(ConfigError, match=r"run\.json: auto\.n_best: expected an integer"):
        load_planning_config(p)
    p.write_text('{"safety": {"hold_s": NaN}}')  # refused by the strict JSON reader
    with pytest.raises(ConfigError, match=r"run\.json.*hold_s"):
        load_file(SafetyConfig, p, path="safety")


# -- defaults --------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "path"), SECTIONS, ids=[c.__name__ for c, _ in SECTIONS])
def test_each_section_loads_its_own_defaults(cls: type, path: str) -> None:
    default = cls()
    assert load_section(cls, {}, path=path) == default
    doc = json.loads(json.dumps(_as_json(default)))  # through real JSON
    assert load_section(cls, doc, path=path) == default


def test_ints_are_accepted_for_floats_and_stored_as_floats() -> None:
    cfg = config_from_dict({"safety": {"caution_extra_mm": 2}})
    assert cfg.safety.caution_extra_mm == 2.0 and isinstance(cfg.safety.caution_extra_mm, float)
    traj = TrajectoryConfig.from_dict({"needle_lengths_mm": [100, 50]})
    assert traj.needle_lengths_mm == (50.0, 100.0)


def test_every_key_is_documented_with_a_default() -> None:
    for cls, path in SECTIONS:
        for d in describe(cls, path):
            assert d.doc, f"{d.key} has no description"
            assert d.default, d.key
            if d.type in ("number", "integer") and not d.key.endswith(("_weight", "seed")):
                assert d.range, f"{d.key} has no range"
    keys = {d.key: d for d in describe(PipelineConfig)}
    assert keys["safety.lateral_caution_mm"].range == "in [0, 50]"
    assert keys["safety.lateral_caution_mm"].unit == "mm"
    assert keys["safety.display_latency_s"].default == "0.05"


def test_safety_thresholds_have_units_in_their_names() -> None:
    unitless = {"coverage_k", "shaft_points", "ahead_points", "min_probability",
                "rise_frames", "clear_frames"}
    for cls in (SafetyConfig, ImageAnatomyConfig):
        for f in dataclasses.fields(cls):
            unit = f.metadata["unit"]
            assert f.name in unitless or f.name.endswith(f"_{unit}"), (f.name, unit)


def test_one_default_for_shared_values() -> None:
    assert SafetyConfig().target_zone_mm == TrajectoryConfig().target_zone_mm
    assert StructureSpec("x", ("y",), 1.0).labels == ("y",)


# -- docs/CONFIG.md ----------------------------------------------------------------------------

DOC_SECTIONS: list[tuple[str, str, type, str]] = [
    ("`guidance run --config FILE`", "The live loop's sections.", PipelineConfig, ""),
    ("`guidance plan --config FILE`", "Planning's sections.", PlanningConfig, ""),
    ("CT control scans (`ct_scan`)", "Built in code (`ControlScanConfig`); not yet read "
     "from a file.", ControlScanConfig, "ct_scan"),
    ("Training (`train`)", "Built by `guidance train` from its options (`TrainConfig`).",
     TrainConfig, "train"),
]


def render_config_doc() -> str:
    """``docs/CONFIG.md``, from the fields' metadata."""
    out = ["# Configuration keys",
           "",
           "Generated from the configuration dataclasses' fields "
           "(`guidance.io.config_schema.markdown_table`) by "
           "`python tests/guidance/test_config_loader.py`; a test checks it is current. "
           "Every file is JSON; a missing key takes its default; an unknown key, a wrong "
           "type, NaN or infinity and a value out of range are refused with the file, the "
           "key path, the range and the value.",
           ""]
    for title, text, cls, prefix in DOC_SECTIONS:
        out += [f"## {title}", "", text, "", markdown_table(cls, prefix)]
    return "\n".join(out).rstrip() + "\n"


def test_config_doc_is_current() -> None:
    assert DOC.read_text() == render_config_doc(), \
        "docs/CONFIG.md is stale: run python tests/guidance/test_config_loader.py"


if __name__ == "__main__":
    DOC.write_text(render_config_doc())
    print(f"wrote {DOC}")
