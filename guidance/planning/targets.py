"""Target specifications: anatomy names or coordinates -> a point in LPS mm.

Grammar (case-insensitive vertebra names):

- ``disc:L1-L2``: centre of the disc space between the two vertebra labels (the
  planner tries both posterolateral points instead: :func:`side_variants`);
  ``disc:L1-L2:left`` / ``:right``: a posterolateral point of that disc (the usual
  herniation site);
- ``foramen:L2-L3:left`` / ``:right``: the transforaminal target of that foramen (outer
  foramen, below the pedicle, above the exiting root);
- ``vertebra:L1``: centre of the vertebral body (cementoplasty, biopsy);
- ``x,y,z``: LPS millimetres.

Disc and foramen points are derived from the vertebra labels (no disc or nerve labels
exist): :class:`Target` says so in ``description``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from guidance.geometry import ImageVolume
from guidance.planning.anatomy import SPINE_ORDER, SpineAnatomy

__all__ = ["Target", "TargetError", "parse_target", "side_variants"]


class TargetError(ValueError):
    """A target specification that cannot be resolved; the message says why."""


@dataclass(frozen=True)
class Target:
    """A resolved target.

    Attributes:
        spec: the specification as given.
        kind: ``"disc"``, ``"foramen"``, ``"vertebra"`` or ``"point"``.
        point_lps: (3,) float64 LPS mm.
        bones: vertebrae the needle may touch near the target (the target bone, or the
            two vertebrae around a disc or foramen).
        description: human-readable, says "derived" for derived points.
    """

    spec: str
    kind: str
    point_lps: npt.NDArray[np.float64]
    bones: tuple[str, ...]
    description: str


_LEVEL = re.compile(r"^([A-Za-z]\d+)-([A-Za-z]\d+)$")


def _vertebra(name: str) -> str:
    v = name.strip().upper()
    if v not in SPINE_ORDER:
        raise TargetError(f"unknown vertebra {name.strip()} (expected C1..C7, T1..T12, "
                          "L1..L5, S1)")
    return v


def _level(text: str, anatomy: SpineAnatomy) -> tuple[str, str]:
    m = _LEVEL.match(text.strip())
    if not m:
        raise TargetError(f"bad level {text!r}: expected two vertebrae like L1-L2")
    upper, lower = _vertebra(m.group(1)), _vertebra(m.group(2))
    try:
        anatomy.level(upper, lower)
    except ValueError as e:
        raise TargetError(str(e)) from e
    return upper, lower


def _side(text: str) -> str:
    s = text.strip().lower()
    if s not in ("left", "right"):
        raise TargetError(f"bad side {text!r}: expected left or right")
    return s


def side_variants(spec: str) -> tuple[str, ...]:
    """The specifications a planner should try for ``spec``: a disc or foramen given
    without a side (``disc:L1-L2``, as users write it) gives both sides
    (``disc:L1-L2:left``, ``disc:L1-L2:right``), anything else itself.

    Raises:
        TypeError: spec not a string.
    """
    if not isinstance(spec, str):
        raise TypeError(f"target spec must be a string, got {type(spec).__name__}")
    parts = [p.strip() for p in spec.strip().split(":")]
    if parts[0].lower() in ("disc", "foramen") and len(parts) == 2:
        return tuple(f"{parts[0]}:{parts[1]}:{side}" for side in ("left", "right"))
    return (spec,)


def parse_target(spec: str, anatomy: SpineAnatomy, volume: ImageVolume) -> Target:
    """Resolve a target specification.

    Args:
        spec: see the module docstring.
        anatomy: landmarks from the label map.
        volume: the CT (or label map): the target must lie inside it.

    Raises:
        TypeError: spec not a string.
        TargetError: malformed spec, unknown vertebra ("unknown vertebra L7"),
            vertebra missing from the label map, target outside the volume.
    """
    if not isinstance(spec, str):
        raise TypeError(f"target spec must be a string, got {type(spec).__name__}")
    text = spec.strip()
    parts = [p.strip() for p in text.split(":")]
    kind = parts[0].lower()
    bones: tuple[str, ...] = ()
    if kind == "disc" and len(parts) in (2, 3):
        upper, lower = _level(parts[1], anatomy)
        lev = anatomy.level(upper, lower)
        bones = (upper, lower)
        if len(parts) == 3:
            side = _side(parts[2])
            point = lev.posterolateral_disc_lps(side)
            desc = f"posterolateral {side} disc {upper}-{lower} (derived from vertebra labels)"
        else:
            point = lev.disc_center_lps
            desc = f"centre of disc {upper}-{lower} (derived from vertebra labels)"
    elif kind == "foramen" and len(parts) == 3:
        upper, lower = _level(parts[1], anatomy)
        side = _side(parts[2])
        point = anatomy.level(upper, lower).foramen_target_lps(side)
        bones = (upper, lower)
        desc = (f"{side} foramen {upper}-{lower}, transforaminal target "
                "(derived from vertebra and cord labels)")
    elif kind == "vertebra" and len(parts) == 2:
        v = _vertebra(parts[1])
        if v not in anatomy.vertebrae:
            raise TargetError(f"vertebra {v} is not in the label map "
                              f"(present: {', '.join(anatomy.present())})")
        point = anatomy.vertebrae[v].body_centroid_lps
        bones = (v,)
        desc = f"body of vertebra {v} (label centroid)"
    elif len(parts) == 1 and text.count(",") == 2:
        try:
            point = np.array([float(v) for v in text.split(",")], dtype=np.float64)
        except ValueError as e:
            raise TargetError(f"bad coordinates {text!r}: expected x,y,z in LPS mm") from e
        if not np.all(np.isfinite(point)):
            raise TargetError(f"bad coordinates {text!r}: not finite")
        kind = "point"
        desc = f"point {point.round(1).tolist()} LPS mm"
    else:
        raise TargetError(
            f"bad target {spec!r}: expected disc:L1-L2[:left|right], foramen:L2-L3:left|right, "
            "vertebra:L1 or x,y,z (LPS mm)"
        )
    ijk = volume.lps_to_ijk_points(point)[0]
    size = np.array(volume.size_ijk)
    if np.any(ijk < -0.5) or np.any(ijk > size - 0.5):
        raise TargetError(
            f"target outside the volume: {np.round(point, 1).tolist()} LPS mm is voxel "
            f"{np.round(ijk, 1).tolist()}, volume size {size.tolist()}"
        )
    return Target(spec, kind, np.asarray(point, dtype=np.float64), bones, desc)
