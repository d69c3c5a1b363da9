"""The plan record: entry and target in LPS mm, saved as ``plan.json``.

``plan.json`` holds the plan (``entry_lps_mm``, ``target_lps_mm``, ``target_spec``, the
CT and label sources), its ``anatomy`` (the CT, labels and label names with their SHA-256,
the structure config and the analysed region: what the live check rebuilds, see
:mod:`guidance.planning.provenance`) and, for people and reports, the metrics the planner
computed (``length_mm``, ``angles_deg``, ``clearance_mm``, ``violations``,
``candidates``...). Loading reads the plan fields back and checks them; the metric fields
are recomputed wherever they are needed, never trusted from the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from guidance.planning.provenance import PlanAnatomy

__all__ = ["PLAN_FORMAT", "Plan", "PlanError"]

PLAN_FORMAT = "guidance.plan/1"


class PlanError(ValueError):
    """A plan file that cannot be read or is inconsistent; the message names the file."""


def _point(name: str, value: object) -> npt.NDArray[np.float64]:
    try:
        p = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be 3 numbers (LPS mm), got {value!r}") from e
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        raise ValueError(f"{name} must be 3 finite numbers (LPS mm), got {value!r}")
    return p


@dataclass(frozen=True, eq=False)
class Plan:
    """A straight needle trajectory.

    Attributes:
        entry_lps: (3,) skin entry point, LPS mm.
        target_lps: (3,) target point, LPS mm.
        target_spec: how the target was given (``"disc:L1-L2:left"``, ``"x,y,z"``).
        ct_source, labels_source: where the planning CT and labels came from, as given
            (kept for older readers; :attr:`anatomy` is the checked record).
        needle_length_mm: chosen standard needle length (NaN if unknown).
        extra: further JSON fields (the metrics), written as they are, never read back
            as plan fields.
        anatomy: the inputs and region the structures were built from, with hashes
            (``None``: an older plan that records none).
    """

    entry_lps: npt.NDArray[np.float64]
    target_lps: npt.NDArray[np.float64]
    target_spec: str = ""
    ct_source: str = ""
    labels_source: str = ""
    needle_length_mm: float = math.nan
    extra: Mapping[str, Any] = field(default_factory=dict)
    anatomy: PlanAnatomy | None = None

    def __post_init__(self) -> None:
        if self.anatomy is not None and not isinstance(self.anatomy, PlanAnatomy):
            raise TypeError(f"anatomy must be a PlanAnatomy, got {type(self.anatomy).__name__}")
        if "anatomy" in self.extra:
            raise ValueError("extra must not hold 'anatomy' (give anatomy=PlanAnatomy)")
        e = _point("entry_lps", self.entry_lps)
        t = _point("target_lps", self.target_lps)
        if np.linalg.norm(t - e) < 1.0:
            raise ValueError(
                f"entry_lps and target_lps must be >= 1 mm apart, got {e.tolist()} and "
                f"{t.tolist()}"
            )
        object.__setattr__(self, "entry_lps", e)
        object.__setattr__(self, "target_lps", t)
        object.__setattr__(self, "needle_length_mm", float(self.needle_length_mm))

    @property
    def length_mm(self) -> float:
        return float(np.linalg.norm(self.target_lps - self.entry_lps))

    @property
    def direction_lps(self) -> npt.NDArray[np.float64]:
        """(3,) unit vector entry -> target."""
        return (self.target_lps - self.entry_lps) / self.length_mm

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": PLAN_FORMAT,
            "entry_lps_mm": [round(float(v), 3) for v in self.entry_lps],
            "target_lps_mm": [round(float(v), 3) for v in self.target_lps],
            "target_spec": self.target_spec,
            "ct_source": self.ct_source,
            "labels_source": self.labels_source,
            "needle_length_mm": None if math.isnan(self.needle_length_mm)
            else self.needle_length_mm,
        }
        out.update(self.extra)
        if self.anatomy is not None:
            out["anatomy"] = self.anatomy.to_json()
        return out

    def save(self, path: str | Path) -> None:
        """Write ``plan.json`` (plan fields plus ``extra``, e.g. the metrics)."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a ``plan.json``.

        Raises:
            PlanError: missing file, bad JSON, wrong format, bad points, a malformed
                ``anatomy`` (naming the key).
        """
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError as e:
            raise PlanError(f"{p}: no such plan file") from e
        except (OSError, json.JSONDecodeError) as e:
            raise PlanError(f"{p}: cannot read plan JSON: {e}") from e
        if not isinstance(data, dict):
            raise PlanError(f"{p}: plan must be a JSON object")
        fmt = data.get("format")
        if fmt != PLAN_FORMAT:
            raise PlanError(f"{p}: format {fmt!r} is not {PLAN_FORMAT!r}")
        try:
            length = data.get("needle_length_mm")
            known = {"format", "entry_lps_mm", "target_lps_mm", "target_spec", "ct_source",
                     "labels_source", "needle_length_mm", "anatomy"}
            anatomy = data.get("anatomy")
            return cls(
                entry_lps=_point("entry_lps_mm", data.get("entry_lps_mm")),
                target_lps=_point("target_lps_mm", data.get("target_lps_mm")),
                target_spec=str(data.get("target_spec", "")),
                ct_source=str(data.get("ct_source", "")),
                labels_source=str(data.get("labels_source", "")),
                needle_length_mm=math.nan if length is None else float(length),
                extra={k: v for k, v in data.items() if k not in known},
                anatomy=None if anatomy is None else PlanAnatomy.from_json(anatomy),
            )
        except (TypeError, ValueError) as e:
            raise PlanError(f"{p}: {e}") from e
