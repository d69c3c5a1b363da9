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

from guidance.io.validate import InputError, finite_number, point3, read_json_document
from guidance.planning.provenance import PlanAnatomy

__all__ = ["PLAN_FORMAT", "Plan", "PlanError"]

PLAN_FORMAT = "guidance.plan/1"


class PlanError(InputError):
    """A plan file that cannot be read or is inconsistent; the message names the file."""


def _point(name: str, value: object) -> npt.NDArray[np.float64]:
    seq = value.tolist() if isinstance(value, np.ndarray) else value
    if isinstance(seq, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in seq):
        raise ValueError(f"{name} must be 3 numbers (LPS mm), got booleans {value!r}")
    try:
        p = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be 3 numbers (LPS mm), got {value!r}") from e
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        raise ValueError(f"{name} must be 3 finite numbers (LPS mm), got {value!r}")
    return p


def _strict(o: Any) -> Any:
    """``o`` with every NaN or infinite float replaced by None (strict JSON)."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _strict(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_strict(v) for v in o]
    return o


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
        length = self.needle_length_mm
        if isinstance(length, bool) or not isinstance(length, (int, float, np.number)):
            raise TypeError(f"needle_length_mm must be a number, got {length!r}")
        if not (math.isnan(length) or (math.isfinite(length) and length > 0)):
            raise ValueError(f"needle_length_mm must be > 0 (or unknown), got {length!r}")
        object.__setattr__(self, "needle_length_mm", float(length))

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
        """Write ``plan.json`` (plan fields plus ``extra``, e.g. the metrics; a NaN or
        infinite metric is written as null: strict JSON, which :meth:`load` requires)."""
        Path(path).write_text(json.dumps(_strict(self.to_json()), indent=2,
                                         allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a ``plan.json``.

        Raises:
            PlanError: missing file, bad JSON, wrong format, bad points, a malformed
                ``anatomy`` (naming the key).
        """
        p = Path(path)
        data = read_json_document(p, "plan file", error=PlanError)
        if not isinstance(data, dict):
            raise PlanError(f"{p}: plan must be a JSON object, got {type(data).__name__}")
        fmt = data.get("format")
        if fmt != PLAN_FORMAT:
            raise PlanError(f"{p}: format {fmt!r} is not {PLAN_FORMAT!r}")
        where = str(p)
        entry = point3(where, "entry_lps_mm", data.get("entry_lps_mm"), error=PlanError)
        target = point3(where, "target_lps_mm", data.get("target_lps_mm"), error=PlanError)
        length = data.get("needle_length_mm")
        if length is not None:
            length = finite_number(where, "needle_length_mm", length, positive=True,
                                   error=PlanError)
        for key in ("target_spec", "ct_source", "labels_source"):
            if not isinstance(data.get(key, ""), str):
                raise PlanError(f"{p}: {key} must be a string, got {data[key]!r:.60}")
        try:
            known = {"format", "entry_lps_mm", "target_lps_mm", "target_spec", "ct_source",
                     "labels_source", "needle_length_mm", "anatomy"}
            anatomy = data.get("anatomy")
            return cls(
                entry_lps=entry,
                target_lps=target,
                target_spec=data.get("target_spec", ""),
                ct_source=data.get("ct_source", ""),
                labels_source=data.get("labels_source", ""),
                needle_length_mm=math.nan if length is None else length,
                extra={k: v for k, v in data.items() if k not in known},
                anatomy=None if anatomy is None else PlanAnatomy.from_json(anatomy),
            )
        except (TypeError, ValueError) as e:
            raise PlanError(f"{p}: {e}") from e
