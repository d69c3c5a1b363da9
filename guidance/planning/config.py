"""Typed configuration of planning and safety checks (frozen dataclasses).

Every section is built from a plain mapping by ``from_dict``: an unknown key is an error
(a mistyped safety margin must never silently fall back to a default), and every value
is checked with a message naming the parameter and the bad value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "DEFAULT_STRUCTURES",
    "STANDARD_NEEDLES_MM",
    "AutoPlanConfig",
    "StructureConfig",
    "StructureSpec",
    "TrajectoryConfig",
    "check_nonneg",
    "check_positive",
]

T = TypeVar("T")


def check_positive(name: str, value: object) -> float:
    """``value`` as float, > 0; else TypeError/ValueError naming ``name``."""
    v = _as_float(name, value)
    if not v > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return v


def check_nonneg(name: str, value: object) -> float:
    """``value`` as float, >= 0; else TypeError/ValueError naming ``name``."""
    v = _as_float(name, value)
    if not v >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return v


def _as_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def _from_mapping(cls: type[T], data: Mapping[str, Any], section: str) -> T:
    if not isinstance(data, Mapping):
        raise TypeError(f"{section} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"{section}: unknown key(s) {unknown}; allowed: {sorted(names)}"
        )
    return cls(**dict(data))


@dataclass(frozen=True)
class StructureSpec:
    """One critical structure: which labels make it, its margin, how bad a breach is.

    Attributes:
        name: display name (``"spinal_cord"``, ``"aorta"``...).
        labels: TotalSegmentator class names whose union forms the structure.
        margin_mm: required clearance from the structure surface, mm.
        hard: a breach of the margin is a violation (else a warning only).
    """

    name: str
    labels: tuple[str, ...]
    margin_mm: float
    hard: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        labels = self.labels
        if isinstance(labels, str) or not all(isinstance(x, str) for x in labels):
            raise TypeError(f"labels of {self.name} must be a sequence of names, got {labels!r}")
        if not labels:
            raise ValueError(f"labels of {self.name} must not be empty")
        object.__setattr__(self, "labels", tuple(labels))
        object.__setattr__(
            self, "margin_mm", check_nonneg(f"{self.name}.margin_mm", self.margin_mm)
        )
        if not isinstance(self.hard, bool):
            raise TypeError(f"{self.name}.hard must be a bool, got {self.hard!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StructureSpec:
        return _from_mapping(cls, data, f"structure {data.get('name', '?')!r}")


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
    """Which structures to build and how.

    Attributes:
        structures: the labelled critical structures.
        vertebra_margin_mm: clearance required from non-target vertebrae (bone
            obstacles; crossing one is a violation).
        derive_nerve_roots: add nerve-root regions derived geometrically from adjacent
            vertebrae and the cord (no label exists); their names end in ``(derived)``.
        nerve_root_margin_mm: margin for the derived roots.
        nerve_root_radius_mm: radius of a derived root tube.
        clearance_cap_mm: distances are exact up to this value and reported as this
            value beyond it (the SDFs are computed in a box this much larger than each
            structure); must exceed every margin.
    """

    structures: tuple[StructureSpec, ...] = DEFAULT_STRUCTURES
    vertebra_margin_mm: float = 0.0
    derive_nerve_roots: bool = True
    nerve_root_margin_mm: float = 2.0
    nerve_root_radius_mm: float = 3.0
    clearance_cap_mm: float = 30.0

    def __post_init__(self) -> None:
        specs = tuple(
            s if isinstance(s, StructureSpec) else StructureSpec.from_dict(s)
            for s in self.structures
        )
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"structures: duplicate names in {names}")
        object.__setattr__(self, "structures", specs)
        check_nonneg("vertebra_margin_mm", self.vertebra_margin_mm)
        check_nonneg("nerve_root_margin_mm", self.nerve_root_margin_mm)
        check_positive("nerve_root_radius_mm", self.nerve_root_radius_mm)
        cap = check_positive("clearance_cap_mm", self.clearance_cap_mm)
        worst = max([s.margin_mm for s in specs] + [self.vertebra_margin_mm,
                                                     self.nerve_root_margin_mm])
        if cap <= worst + 5.0:
            raise ValueError(
                f"clearance_cap_mm must exceed the largest margin + 5 mm ({worst + 5.0}), "
                f"got {self.clearance_cap_mm}"
            )
        if not isinstance(self.derive_nerve_roots, bool):
            raise TypeError(f"derive_nerve_roots must be a bool, got {self.derive_nerve_roots!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StructureConfig:
        return _from_mapping(cls, data, "structures config")


#: Standard needle lengths, mm (Chiba/spinal needles: 3.5", 5", 6", 7" and metric).
STANDARD_NEEDLES_MM: tuple[float, ...] = (50.0, 70.0, 89.0, 100.0, 127.0, 152.0, 178.0, 200.0)


@dataclass(frozen=True)
class TrajectoryConfig:
    """How a straight trajectory is evaluated.

    Attributes:
        step_mm: sampling step along the path, mm (below the smallest voxel size).
        hub_margin_mm: needle length kept outside the skin (hub, grip), mm.
        needle_lengths_mm: available needle lengths, mm.
        target_zone_mm: the last stretch before the target where the target's own
            bones (e.g. the endplates around a disc) are not counted as obstacles, mm.
    """

    step_mm: float = 0.5
    hub_margin_mm: float = 15.0
    needle_lengths_mm: tuple[float, ...] = STANDARD_NEEDLES_MM
    target_zone_mm: float = 5.0

    def __post_init__(self) -> None:
        check_positive("step_mm", self.step_mm)
        check_nonneg("hub_margin_mm", self.hub_margin_mm)
        check_nonneg("target_zone_mm", self.target_zone_mm)
        lengths = tuple(sorted(check_positive("needle_lengths_mm", v)
                               for v in self.needle_lengths_mm))
        if not lengths:
            raise ValueError("needle_lengths_mm must not be empty")
        object.__setattr__(self, "needle_lengths_mm", lengths)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrajectoryConfig:
        return _from_mapping(cls, data, "trajectory config")


@dataclass(frozen=True)
class AutoPlanConfig:
    """Search space and ranking of automatic planning.

    Attributes:
        max_craniocaudal_deg: largest tilt out of the axial plane, degrees.
        max_mediolateral_deg: largest angle from the sagittal plane (0 = straight
            posterior-to-anterior), degrees.
        step_deg: angular grid step, degrees.
        max_length_mm: longest path considered, mm.
        skin_hu: HU threshold of the body (air below).
        n_best: number of candidates returned.
        min_separation_deg: candidates returned are at least this far apart.
        clearance_weight, length_weight, angle_weight: ranking score =
            clearance_weight * min(clearance - margin, 5) / 5
            - length_weight * length / 100 - angle_weight * |craniocaudal| / 30.
    """

    max_craniocaudal_deg: float = 30.0
    max_mediolateral_deg: float = 75.0
    step_deg: float = 2.0
    max_length_mm: float = 160.0
    skin_hu: float = -300.0
    n_best: int = 5
    min_separation_deg: float = 6.0
    clearance_weight: float = 1.0
    length_weight: float = 0.5
    angle_weight: float = 0.3

    def __post_init__(self) -> None:
        check_nonneg("max_craniocaudal_deg", self.max_craniocaudal_deg)
        if self.max_craniocaudal_deg >= 80:
            raise ValueError(f"max_craniocaudal_deg must be < 80, got {self.max_craniocaudal_deg}")
        if not 0 <= check_nonneg("max_mediolateral_deg", self.max_mediolateral_deg) <= 90:
            raise ValueError(f"max_mediolateral_deg must be <= 90, got {self.max_mediolateral_deg}")
        check_positive("step_deg", self.step_deg)
        check_positive("max_length_mm", self.max_length_mm)
        _as_float("skin_hu", self.skin_hu)
        if isinstance(self.n_best, bool) or not isinstance(self.n_best, int) or self.n_best < 1:
            raise ValueError(f"n_best must be an int >= 1, got {self.n_best!r}")
        check_nonneg("min_separation_deg", self.min_separation_deg)
        for name in ("clearance_weight", "length_weight", "angle_weight"):
            check_nonneg(name, getattr(self, name))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AutoPlanConfig:
        return _from_mapping(cls, data, "auto-plan config")
