"""Typed configuration of planning (frozen dataclasses): the ``structures``,
``trajectory`` and ``auto`` sections of ``guidance plan --config``.

Every section is built from a plain mapping by ``from_dict``, a thin call into the one
configuration loader (:mod:`guidance.io.config_schema`): an unknown key is an error (a
mistyped safety margin must never silently fall back to a default), and every value is
checked with a message naming the key path, the accepted range and the bad value. Each
default, unit and range is declared once, on its field (``docs/CONFIG.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guidance.io.config_schema import (
    ConfigError,
    check_fields,
    load_file,
    load_section,
    meta,
    setting,
)

__all__ = [
    "DEFAULT_STRUCTURES",
    "STANDARD_NEEDLES_MM",
    "TARGET_ZONE_MM",
    "AutoPlanConfig",
    "PlanningConfig",
    "StructureConfig",
    "StructureSpec",
    "TrajectoryConfig",
    "load_planning_config",
]

#: The last stretch before the target where the target's own bones (e.g. the endplates
#: around a disc) are not obstacles, mm: the planner's and the live check's one default.
TARGET_ZONE_MM = 5.0


@dataclass(frozen=True)
class StructureSpec:
    """One critical structure: which labels make it, its margin, how bad a breach is."""

    name: str = setting(doc="display name (spinal_cord, aorta...)", nonempty=True)
    labels: tuple[str, ...] = setting(
        doc="TotalSegmentator class names whose union forms the structure", nonempty=True)
    margin_mm: float = setting(doc="required clearance from the structure's surface",
                               unit="mm", ge=0, le=50)
    hard: bool = setting(True, "a breach of the margin is a violation (else a warning only)")

    def __post_init__(self) -> None:
        check_fields(self, f"structure {self.name!r}" if isinstance(self.name, str)
                     else "structure")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StructureSpec:
        name = data.get("name", "?") if isinstance(data, Mapping) else "?"
        return load_section(cls, data, path=f"structure {name!r}")


#: Default critical structures (TotalSegmentator names). The cord label is the cord
#: itself, not the dural sac, hence the larger margin.
DEFAULT_STRUCTURES: tuple[StructureSpec, ...] = (
    StructureSpec("spinal_cord", ("spinal_cord",), 5.0),
    StructureSpec("aorta", ("aorta",), 5.0),
    StructureSpec(
        "venae_cavae", ("inferior_vena_cava", "superior_vena_cava"), 5.0
    ),
    StructureSpec(
        "large_vessels",
        (
            "portal_vein_and_splenic_vein", "iliac_artery_left", "iliac_artery_right",
            "iliac_vena_left", "iliac_vena_right", "brachiocephalic_trunk",
            "subclavian_artery_right", "subclavian_artery_left",
            "common_carotid_artery_right", "common_carotid_artery_left",
            "brachiocephalic_vein_left", "brachiocephalic_vein_right", "pulmonary_vein",
            "heart",
        ),
        3.0,
    ),
    StructureSpec(
        "lungs",
        (
            "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
            "lung_middle_lobe_right", "lung_lower_lobe_right",
        ),
        5.0,
    ),
    StructureSpec("kidney_left", ("kidney_left", "kidney_cyst_left"), 5.0),
    StructureSpec("kidney_right", ("kidney_right", "kidney_cyst_right"), 5.0),
    StructureSpec("bowel", ("small_bowel", "duodenum", "colon", "stomach", "esophagus"), 5.0),
    StructureSpec("liver", ("liver",), 0.0, hard=False),
    StructureSpec("spleen", ("spleen",), 0.0, hard=False),
    StructureSpec(
        "ribs",
        tuple(f"rib_{s}_{n}" for s in ("left", "right") for n in range(1, 13)),
        0.0,
    ),
)


@dataclass(frozen=True)
class StructureConfig:
    """Which structures to build and how (the ``structures`` section)."""

    structures: tuple[StructureSpec, ...] = setting(
        DEFAULT_STRUCTURES, "the labelled critical structures (name, labels, margin_mm, hard)")
    vertebra_margin_mm: float = setting(
        0.0, "clearance required from non-target vertebrae (bone obstacles)", unit="mm",
        ge=0, le=50)
    derive_nerve_roots: bool = setting(
        True, "add nerve-root regions derived from adjacent vertebrae and the cord "
              "(names end in (derived))")
    nerve_root_margin_mm: float = setting(
        2.0, "margin of the derived nerve roots", unit="mm", ge=0, le=50)
    nerve_root_radius_mm: float = setting(
        3.0, "radius of a derived nerve-root tube", unit="mm", gt=0, le=20)
    clearance_cap_mm: float = setting(
        30.0, "distances are exact up to this and reported as this beyond; must exceed "
              "every margin + 5 mm", unit="mm", gt=0, le=200)

    def __post_init__(self) -> None:
        check_fields(self, "structures")
        names = [s.name for s in self.structures]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate names in {names}", key="structures",
                              section="structures")
        worst = max([s.margin_mm for s in self.structures]
                    + [self.vertebra_margin_mm, self.nerve_root_margin_mm])
        if self.clearance_cap_mm <= worst + 5.0:
            raise ConfigError(f"must exceed the largest margin + 5 mm ({worst + 5.0:g} mm), "
                              f"got {self.clearance_cap_mm!r}", key="clearance_cap_mm",
                              section="structures")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StructureConfig:
        return load_section(cls, data, path="structures")


#: Standard needle lengths, mm (Chiba/spinal needles: 3.5", 5", 6", 7" and metric).
STANDARD_NEEDLES_MM: tuple[float, ...] = (50.0, 70.0, 89.0, 100.0, 127.0, 152.0, 178.0, 200.0)


@dataclass(frozen=True)
class TrajectoryConfig:
    """How a straight trajectory is evaluated (the ``trajectory`` section)."""

    step_mm: float = setting(
        0.5, "sampling step along the path (below the smallest voxel size)", unit="mm",
        gt=0, le=10)
    hub_margin_mm: float = setting(
        15.0, "needle length kept outside the skin (hub, grip)", unit="mm", ge=0, le=100)
    needle_lengths_mm: tuple[float, ...] = setting(
        STANDARD_NEEDLES_MM, "available needle lengths", unit="mm", gt=0, le=500,
        nonempty=True)
    target_zone_mm: float = setting(
        TARGET_ZONE_MM, "last stretch before the target where its own bones (e.g. a "
                        "disc's endplates) are not obstacles", unit="mm", ge=0, le=50)

    def __post_init__(self) -> None:
        check_fields(self, "trajectory")
        object.__setattr__(self, "needle_lengths_mm", tuple(sorted(self.needle_lengths_mm)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrajectoryConfig:
        return load_section(cls, data, path="trajectory")


@dataclass(frozen=True)
class AutoPlanConfig:
    """Search space and ranking of automatic planning (the ``auto`` section). Ranking
    score = clearance_weight * min(clearance - margin, 5) / 5 - length_weight * length /
    100 - angle_weight * |craniocaudal| / 30."""

    max_craniocaudal_deg: float = setting(
        30.0, "largest tilt out of the axial plane", unit="deg", ge=0, lt=80)
    max_mediolateral_deg: float = setting(
        75.0, "largest angle from the sagittal plane (0: straight posterior to anterior)",
        unit="deg", ge=0, le=90)
    step_deg: float = setting(2.0, "angular grid step", unit="deg", gt=0, le=30)
    max_length_mm: float = setting(160.0, "longest path considered", unit="mm", gt=0, le=500)
    skin_hu: float = setting(-300.0, "HU threshold of the body (air below)", unit="HU",
                             ge=-1024, le=1000)
    n_best: int = setting(5, "number of candidates returned", ge=1, le=100)
    min_separation_deg: float = setting(
        6.0, "candidates returned are at least this far apart", unit="deg", ge=0, le=90)
    clearance_weight: float = setting(1.0, "ranking weight of the clearance", ge=0, le=100)
    length_weight: float = setting(0.5, "ranking weight of the path length", ge=0, le=100)
    angle_weight: float = setting(0.3, "ranking weight of the craniocaudal tilt", ge=0,
                                  le=100)

    def __post_init__(self) -> None:
        check_fields(self, "auto")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AutoPlanConfig:
        return load_section(cls, data, path="auto")


@dataclass(frozen=True)
class PlanningConfig:
    """All sections of ``guidance plan --config`` (``structures``, ``trajectory``,
    ``auto``)."""

    structures: StructureConfig = field(
        default_factory=StructureConfig, metadata=meta("critical structures and margins"))
    trajectory: TrajectoryConfig = field(
        default_factory=TrajectoryConfig, metadata=meta("trajectory evaluation"))
    auto: AutoPlanConfig = field(
        default_factory=AutoPlanConfig, metadata=meta("automatic planning"))

    def __post_init__(self) -> None:
        check_fields(self)


def load_planning_config(path: str | Path) -> PlanningConfig:
    """Read a planning config file (``guidance plan --config``); every error names the
    file, the key path and the value (:func:`guidance.io.config_schema.load_file`)."""
    return load_file(PlanningConfig, path)
