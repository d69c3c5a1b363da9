"""The demo's scripted needle passes: a safe one, a drift that is seen and corrected, and
a drift that is not.

Every scenario advances the needle along a plan (entry -> target, LPS mm) over the
demo's ``seconds``; times are fractions of it, so a short demo plays the same story
faster. The drift is an angular deviation about the skin entry *toward* a given
direction (the demo points it at the nerve root closest to the plan):

- ``safe``: on the plan to the target, the last 15 mm slower, then held;
- ``drift``: on the plan to 35 % of the depth, then deviating by ``drift_deg`` while
  advancing to 90 %; then pulled back to 50 % and redirected onto the plan (the
  correction), and on to the target;
- ``breach``: the same deviation, never corrected, advancing to the target's depth.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from guidance.sim.needle_path import NeedlePath
from guidance.sim.params import NeedleParams

__all__ = ["SCENARIOS", "drift_axis_toward", "scenario_path", "scenario_script"]

F64 = npt.NDArray[np.float64]

#: The demo's scenarios, the default first.
SCENARIOS: tuple[str, ...] = ("safe", "drift", "breach")


def drift_axis_toward(plan_axis_lps: npt.ArrayLike, toward_lps: npt.ArrayLike) -> F64:
    """The rotation axis that tilts ``plan_axis_lps`` toward ``toward_lps`` (a direction,
    its component along the plan ignored) for a positive angle (3,) unit.

    Raises:
        ValueError: ``toward_lps`` (nearly) parallel to the plan, or zero vectors.
    """
    d = np.asarray(plan_axis_lps, dtype=np.float64).reshape(3)
    w = np.asarray(toward_lps, dtype=np.float64).reshape(3)
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(w))) or np.linalg.norm(d) < 1e-9:
        raise ValueError("plan_axis_lps and toward_lps must be finite, non-zero")
    d = d / np.linalg.norm(d)
    w = w - d * float(w @ d)
    if np.linalg.norm(w) < 1e-6:
        raise ValueError("toward_lps must not be parallel to the plan")
    # Rodrigues: rotating d about a = d x w by +theta moves it toward w (a x d = w).
    a = np.cross(d, w / np.linalg.norm(w))
    return a / np.linalg.norm(a)


def scenario_script(scenario: str, seconds: float, length_mm: float,
                    start_mm: float = 5.0, drift_deg: float = 10.0,
                    ) -> tuple[tuple[float, float, float], ...]:
    """Keyframes ``(t_s, inserted_mm, drift_deg)`` of a scenario (see the module).

    Args:
        scenario: one of :data:`SCENARIOS`.
        seconds: the demo's duration, s (> 0).
        length_mm: entry-to-target distance, mm (> start_mm).
        start_mm: inserted length at t = 0, mm.
        drift_deg: the deviation of ``drift`` and ``breach``, degrees.

    Raises:
        ValueError: unknown scenario or bad numbers.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if not (math.isfinite(length_mm) and length_mm > start_mm + 10.0):
        raise ValueError(f"length_mm must exceed start_mm + 10 mm, got {length_mm}")
    T, L = float(seconds), float(length_mm)
    slow = min(15.0, 0.25 * L)  # the last stretch, slower
    if scenario == "safe":
        keys = [(0.0, start_mm, 0.0), (0.45 * T, L - slow, 0.0), (0.75 * T, L, 0.0)]
    elif scenario == "drift":
        keys = [(0.0, start_mm, 0.0), (0.2 * T, 0.35 * L, 0.0),
                (0.45 * T, 0.9 * L, drift_deg),       # drifting toward the root: warned
                (0.55 * T, 0.9 * L, drift_deg),       # seen: stop
                (0.65 * T, 0.5 * L, 0.0),             # pulled back and redirected
                (0.75 * T, L - slow, 0.0), (0.85 * T, L, 0.0)]
    else:  # breach
        keys = [(0.0, start_mm, 0.0), (0.2 * T, 0.35 * L, 0.0),
                (0.45 * T, 0.9 * L, drift_deg), (0.75 * T, L, drift_deg)]
    return tuple((round(t, 6), float(d), float(a)) for t, d, a in keys)


def scenario_path(entry_lps: npt.ArrayLike, target_lps: npt.ArrayLike, scenario: str,
                  seconds: float, toward_lps: npt.ArrayLike, needle: NeedleParams | None = None,
                  drift_deg: float = 10.0) -> NeedlePath:
    """The needle's scripted motion along the plan ``entry_lps -> target_lps`` (LPS mm),
    drifting toward the direction ``toward_lps`` in ``drift`` and ``breach``."""
    entry = np.asarray(entry_lps, dtype=np.float64).reshape(3)
    target = np.asarray(target_lps, dtype=np.float64).reshape(3)
    needle = needle or NeedleParams(length_mm=150.0)
    length = float(np.linalg.norm(target - entry))
    start = min(needle.start_depth_mm, 0.2 * length)
    return NeedlePath(entry_lps=entry, target_lps=target, needle=needle,
                      drift_axis_lps=drift_axis_toward(target - entry, toward_lps),
                      script=scenario_script(scenario, seconds, length, start, drift_deg))
