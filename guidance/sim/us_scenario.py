"""The ultrasound demo's scripted in-plane nerve blocks: the needle advances in the
image plane toward a target beside the nerve at the speeds of a real block, with pauses.

The scene is :class:`~guidance.sim.ultrasound.UltrasoundScanner`'s (a nerve, a vessel
beyond it). The target is a point of the image plane (by default beside the nerve, on
the needle's side at the nerve's depth, ``clear_mm`` outside its rim); the needle's line
to it keeps the scene's insertion angle. Times are in seconds of the procedure at its
own pace (:attr:`UsStory.natural_s`); a shorter ``seconds`` plays the same story faster
(:attr:`UsStory.time_scale`), a longer one holds the needle at the end.

Speeds (in-plane blocks are advanced slowly, the tip kept in view): advance 2.5-3 mm/s,
the last 3 mm before the target 1 mm/s, withdrawal 4 mm/s, pauses of 0.8-1.5 s.

- ``safe``: from just outside the field of view to the target (visible from about
  0.5 s), a pause after the first 8 mm and before the last 3 mm; then held (injection).
- ``drift``: on the line for 4 mm, then deviating in the image plane toward the nerve
  (the angle found from the scene's ground truth: the smallest that brings the vessel
  beyond the nerve onto the path ahead, 1 mm into it within ``look_ahead_mm``, when
  the tip is ``approach_mm`` from the nerve) while advancing, slower near the nerve; stopped,
  withdrawn at 4 mm/s, redirected onto the line and advanced to the target.
- ``breach``: the same deviation, never corrected: the tip ends ``breach_mm`` inside the
  nerve (intraneural).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from guidance.sim.needle_path import NeedlePath
from guidance.sim.scenario import SCENARIOS

__all__ = ["SPEEDS_MM_S", "UsStory", "target_beside_nerve", "us_story", "us_verify"]

F64 = npt.NDArray[np.float64]

#: The scripts' speeds, mm/s (inserted length per second).
SPEEDS_MM_S = {"advance": 3.0, "approach": 2.5, "final": 1.0, "withdraw": 4.0}


@dataclass(frozen=True)
class UsStory:
    """A scripted ultrasound procedure.

    Attributes:
        scenario: one of :data:`~guidance.sim.scenario.SCENARIOS`.
        path: the needle's motion (LPS mm), keyframes in played time.
        target_xy_mm: (2,) the target in the probe frame (x lateral, y depth), mm.
        target_px: (2,) the same as a pixel (column, row) of the frames.
        drift_deg: the in-plane deviation toward the nerve (0 for ``safe``), degrees.
        natural_s: the story's length at its own pace, s.
        time_scale: played time = natural time / time_scale (1: real time).
        events: ``(t_s, what)`` in played time: the story's moments, for the console.
        description: one line for the console.
    """

    scenario: str
    path: NeedlePath
    target_xy_mm: F64
    target_px: F64
    drift_deg: float
    natural_s: float
    time_scale: float
    events: tuple[tuple[float, str], ...]
    description: str

    @property
    def end_s(self) -> float:
        """Played time of the last keyframe, s (the needle is held after it)."""
        return float(self.path.script[-1][0])


class _Keys:
    """Keyframes ``(t_s, inserted_mm, drift_deg)`` built from moves at given speeds."""

    def __init__(self, inserted_mm: float) -> None:
        self.t, self.s, self.a = 0.0, float(inserted_mm), 0.0
        self.keys: list[tuple[float, float, float]] = [(0.0, self.s, 0.0)]
        self.events: list[tuple[float, str]] = []

    def move(self, to_mm: float, speed_mm_s: float, drift_deg: float | None = None,
             min_s: float = 0.0) -> None:
        dt = max(abs(to_mm - self.s) / speed_mm_s, min_s)
        self.t += dt
        self.s = float(to_mm)
        self.a = self.a if drift_deg is None else float(drift_deg)
        self.keys.append((self.t, self.s, self.a))

    def pause(self, seconds: float) -> None:
        self.t += seconds
        self.keys.append((self.t, self.s, self.a))

    def event(self, what: str) -> None:
        self.events.append((self.t, what))


def target_beside_nerve(scanner: Any, clear_mm: float = 3.0) -> F64:
    """The default target: beside the nerve on the needle's side, at the depth of its
    centre, ``clear_mm`` outside its rim (probe x, y mm, (2,))."""
    if not (math.isfinite(clear_mm) and clear_mm >= 0):
        raise ValueError(f"clear_mm must be >= 0, got {clear_mm}")
    nerve = scanner.nerve
    side = 1.0 if scanner.params.needle_from_left else -1.0
    return np.array([nerve.centre_mm[0] - side * (nerve.radii_mm[0] + clear_mm),
                     nerve.centre_mm[1]])


def _in_plane_tips(entry: F64, direction: F64, angle_deg: float, inserted: F64) -> F64:
    """(N, 2) tips on the line from ``entry`` rotated by ``angle_deg`` in the plane."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    d = np.array([c * direction[0] - s * direction[1], s * direction[0] + c * direction[1]])
    out: F64 = entry + inserted[:, None] * d
    return out


def _drift_plan(scanner: Any, target: F64, approach_mm: float, breach_mm: float,
                look_ahead_mm: float) -> tuple[float, float, float, float]:
    """The deviation of ``drift``/``breach``: ``(angle_deg, approach_inserted_mm,
    breach_inserted_mm, vessel_ahead_mm)``; angle signed in the probe plane (toward the
    nerve), the inserted lengths where the tip is ``approach_mm`` from the nerve and
    ``breach_mm`` inside it, and the vessel's distance from the path ahead there.

    Raises:
        ValueError: no deviation up to 15 degrees reaches the nerve in view.
    """
    entry = scanner.entry_probe[:2]
    d0 = (target - entry) / np.linalg.norm(target - entry)
    nerve_c = np.asarray(scanner.nerve.centre_mm)
    # Toward the nerve: the sign of the rotation that turns the line toward its centre.
    to_nerve = nerve_c - target
    sign = 1.0 if d0[0] * to_nerve[1] - d0[1] * to_nerve[0] > 0 else -1.0
    half_w = min(scanner.params.footprint_mm / 2.0, (scanner.size - 1) / 2.0 * scanner.spacing_mm)
    length = float(np.linalg.norm(target - entry))
    inserted = np.arange(scanner.fov_entry_mm, length + 25.0, 0.05)
    ahead = np.linspace(0.0, look_ahead_mm, 33)
    best: tuple[float, float, float, float] | None = None
    fallback: tuple[float, float, float, float] | None = None
    for mag in np.arange(1.0, 15.01, 0.25):
        ang = sign * float(mag)
        tips = _in_plane_tips(entry, d0, ang, inserted)
        nd = scanner.nerve.signed_distance_mm(tips)
        near = np.flatnonzero(nd <= approach_mm)
        deep = np.flatnonzero(nd <= -breach_mm)
        if near.size == 0 or deep.size == 0:
            continue
        k, kb = int(near[0]), int(deep[0])
        if (abs(tips[kb, 0]) > half_w
                or scanner.vessel.signed_distance_mm(tips[:kb + 1]).min() < 1.0):
            continue  # out of view, or through the vessel on the way
        d = tips[min(k + 1, len(tips) - 1)] - tips[k]
        d /= np.linalg.norm(d)
        vessel = float(scanner.vessel.signed_distance_mm(tips[k] + ahead[:, None] * d).min())
        cand = (ang, float(inserted[k]), float(inserted[kb]), vessel)
        fallback = fallback or cand
        if vessel <= -1.0:
            best = cand
            break
    if best is None and fallback is None:
        raise ValueError("no deviation up to 15 degrees brings the needle onto the nerve "
                         "in view: choose a target nearer the nerve")
    return best or fallback  # type: ignore[return-value]


def us_story(scanner: Any, scenario: str, seconds: float | None = None,
             target_xy_mm: npt.ArrayLike | None = None, clear_mm: float = 3.0,
             approach_mm: float = 0.8, breach_mm: float = 1.0,
             look_ahead_mm: float = 10.0) -> UsStory:
    """Aim ``scanner`` at the target and script its needle (``scanner.path`` replaced).

    Args:
        scanner: a :class:`~guidance.sim.ultrasound.UltrasoundScanner`.
        scenario: one of :data:`~guidance.sim.scenario.SCENARIOS` (see the module).
        seconds: the time to play it in (``None``: its own pace); shorter plays faster.
        target_xy_mm: (2,) the target in the probe plane, mm (``None``:
            :func:`target_beside_nerve`).
        clear_mm: the default target's distance from the nerve's rim, mm.
        approach_mm: how near the drifting tip comes to the nerve, mm.
        breach_mm: how deep the uncorrected tip ends inside the nerve, mm.
        look_ahead_mm: the path ahead on which the drift brings the vessel (1 mm into
            it), mm (10: the look-ahead of the live image-anatomy check).

    Returns:
        The story; ``scanner.path`` is ``story.path``.

    Raises:
        ValueError: unknown scenario, bad numbers, a target outside the image, or (drift,
            breach) a target from which no deviation reaches the nerve.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be > 0, got {seconds}")
    target = (target_beside_nerve(scanner, clear_mm) if target_xy_mm is None
              else np.asarray(target_xy_mm, np.float64).reshape(2))
    scanner.aim_at(target)
    length = float(np.linalg.norm(scanner.target_probe - scanner.entry_probe))
    fov = float(scanner.fov_entry_mm)
    v = SPEEDS_MM_S
    k = _Keys(max(fov - 1.5, 0.0))  # the tip appears in the image after half a second
    angle, inserted_near, inserted_deep, vessel_ahead = 0.0, math.nan, math.nan, math.nan
    if scenario == "safe":
        first = min(fov + 8.0, length - 6.0)
        k.move(first, v["advance"])
        k.pause(1.0)
        k.move(length - 3.0, v["approach"])
        k.pause(0.8)
        k.move(length, v["final"])
        k.event(f"at the target, {scanner.nerve.signed_distance_mm(target)[0]:.1f} mm "
                "from the nerve")
        k.pause(2.0)
    else:
        angle, inserted_near, inserted_deep, vessel_ahead = _drift_plan(
            scanner, target, approach_mm, breach_mm, look_ahead_mm)
        start_drift = max(min(fov + 4.0, inserted_near - 8.0), k.s + 1.0)
        k.move(start_drift, v["advance"])
        k.event("deviating toward the nerve")
        mid = start_drift + 0.6 * (inserted_near - start_drift)
        k.move(mid, v["advance"], 0.6 * angle)
        k.pause(0.8)
        k.move(inserted_near, v["approach"], angle)
        k.event(f"tip {approach_mm:g} mm from the nerve"
                + (", the path ahead through the vessel" if vessel_ahead <= 0 else ""))
        if scenario == "drift":
            k.pause(1.5)
            back = max(start_drift, inserted_near - 12.0)
            k.move(back, v["withdraw"])
            k.event("withdrawn")
            k.move(back, v["advance"], 0.0, min_s=1.0)  # redirected onto the line
            k.event("redirected onto the line")
            k.move(length - 3.0, v["approach"])
            k.pause(0.8)
            k.move(length, v["final"])
            k.event("at the target")
            k.pause(2.0)
        else:
            k.move(inserted_deep, v["final"])
            k.event(f"tip {breach_mm:g} mm inside the nerve (not corrected)")
            k.pause(2.0)
    natural = k.t
    scale = 1.0 if seconds is None or seconds >= natural else natural / seconds
    script = tuple((t / scale, s, a) for t, s, a in k.keys)
    entry_lps, target_lps = scanner.entry_lps, scanner.target_lps
    path = NeedlePath(entry_lps=entry_lps, target_lps=target_lps,
                      needle=dataclasses.replace(scanner.path.needle, drift_deg_s=0.0),
                      drift_axis_lps=_in_plane_axis(scanner), script=script)
    scanner.path = path
    faster = f", played {scale:.1f}x faster" if scale > 1.0 else ""
    dist = f"{clear_mm:g} mm beside the nerve" if target_xy_mm is None else "the given target"
    desc = {
        "safe": f"in plane to {dist} at 1-3 mm/s with pauses{faster}",
        "drift": f"drifting {abs(angle):.1f} deg in plane toward the nerve (tip {approach_mm:g} "
                 f"mm from it, the vessel on the path ahead), withdrawn at 4 mm/s and "
                 f"redirected to {dist}{faster}",
        "breach": f"drifting {abs(angle):.1f} deg in plane toward the nerve, not corrected: "
                  f"the tip {breach_mm:g} mm inside the nerve{faster}",
    }[scenario]
    return UsStory(scenario=scenario, path=path, target_xy_mm=target,
                   target_px=scanner.probe_mm_to_px(target), drift_deg=abs(angle),
                   natural_s=natural, time_scale=scale,
                   events=tuple((round(t / scale, 2), w) for t, w in k.events),
                   description=desc)


def _in_plane_axis(scanner: Any) -> F64:
    """The LPS rotation axis of the scripts' drift: the probe's elevation axis, signed so
    that a positive angle turns the needle the way :func:`_in_plane_tips` does (probe x
    toward y)."""
    rot = scanner.probe_to_lps[:3, :3]
    z = rot[:, 2] / np.linalg.norm(rot[:, 2])
    out: F64 = z if np.linalg.det(rot) > 0 else -z
    return out


def us_verify(scanner: Any, tip_lps: npt.ArrayLike, target_xy_mm: npt.ArrayLike,
              target_tolerance_mm: float = 2.0, nerve_contact_mm: float = 0.5,
              ) -> dict[str, Any]:
    """The final needle against the scene's ground truth (no control scan on ultrasound:
    the image plane itself, as the operator checks it before injecting).

    Args:
        scanner: the scene.
        tip_lps: (3,) the needle tip, LPS mm.
        target_xy_mm: (2,) the target in the probe plane, mm.
        target_tolerance_mm: PASS needs the tip this near the target, mm.
        nerve_contact_mm: the tip this near the nerve (or inside) is a violation, mm.

    Returns:
        ``verdict`` (``PASS``/``VIOLATION``), ``reasons`` (one line each),
        ``tip_to_target_mm`` (in plane), ``out_of_plane_mm``, ``nerve_clearance_mm``,
        ``vessel_clearance_mm`` (signed, negative inside), ``tip_px``.
    """
    q = scanner.lps_to_probe(np.asarray(tip_lps, np.float64).reshape(3))
    target = np.asarray(target_xy_mm, np.float64).reshape(2)
    t2t = float(np.linalg.norm(q[:2] - target))
    nerve = float(scanner.nerve.signed_distance_mm(q[:2])[0])
    vessel = float(scanner.vessel.signed_distance_mm(q[:2])[0])
    reasons = []
    if nerve < 0:
        reasons.append(f"the tip is {-nerve:.1f} mm inside the nerve (intraneural)")
    elif nerve < nerve_contact_mm:
        reasons.append(f"the tip touches the nerve ({nerve:.1f} mm)")
    if vessel < 0:
        reasons.append(f"the tip is {-vessel:.1f} mm inside the vessel (intravascular)")
    if t2t > target_tolerance_mm:
        reasons.append(f"the tip is {t2t:.1f} mm from the target (tolerance "
                       f"{target_tolerance_mm:g} mm)")
    return {"verdict": "VIOLATION" if reasons else "PASS", "reasons": reasons,
            "tip_to_target_mm": round(t2t, 2), "out_of_plane_mm": round(float(q[2]), 2),
            "nerve_clearance_mm": round(nerve, 2), "vessel_clearance_mm": round(vessel, 2),
            "tip_px": [round(float(x), 1) for x in scanner.probe_mm_to_px(q[:2])]}
