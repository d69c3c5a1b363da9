"""Building the simulated scanners of the demo and the simulator, scripting the
ultrasound needle, and the simulated room's calibrations (as ``guidance calibrate`` makes
them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from guidance.io.validate import InputError
from guidance.scenarios.errors import Say, ScenarioError, say_nothing

__all__ = ["calibrate_room", "calibration_commands", "make_scanner", "script_us"]

#: The options of ``guidance calibrate KIND`` that :func:`calibrate_room` leaves at their
#: defaults (``guidance/cli/calibrate.py``); its files record them in their provenance
#: command, as the command itself does.
_CALIBRATE_DEFAULTS: dict[str, dict[str, object]] = {
    "pivot": {"--min-range-deg": 15.0, "--seconds": 30.0, "--seed": 0, "--tool": "Stylus"},
    "register": {"--name": "MovingToFixed"},
    "temporal": {"--max-lag-s": 0.5, "--min-std": 0.5},
    "probe": {"--name": "ImageToProbe"},
    "carm": {"--name": "PhantomToCamera"},
}


def make_scanner(modality: str, size: int, seed: int) -> Any:
    """The simulated scanner of ``modality`` (``us``, ``fluoro``, ``ct``) making frames
    of ``size`` x ``size`` pixels, seeded with ``seed`` (the same seed, the same frames).

    Raises:
        ScenarioError: ``size`` is not 32..2048, or the simulator cannot be built (bad
            parameters, the real CT not installed).
    """
    if not 32 <= size <= 2048:
        raise ScenarioError(f"--size must be 32..2048, got {size}")
    from guidance.sim import make_scanner as make

    try:
        return make(modality, size=size, seed=seed)
    except (ValueError, TypeError, RuntimeError) as e:  # RuntimeError: RealDataMissing
        raise ScenarioError(f"cannot build the {modality} simulator: {e}") from e


def script_us(scanner: Any, scenario: str | None,
              target_px: tuple[float, float] | None) -> str:
    """Script the ultrasound needle of ``scanner`` (``scanner.path`` replaced) for
    ``scenario`` (None: ``safe``) toward ``target_px`` (U column, V row, pixels of the
    frames; None: beside the nerve).

    Returns:
        The story in one line ('' when ``scanner`` is not ultrasound).

    Raises:
        ScenarioError: a scenario or a target for another modality, or a target the
            needle cannot reach.
    """
    if getattr(scanner, "modality", None) != "us":
        if scenario is not None or target_px is not None:
            raise ScenarioError("--scenario and --target-px are for --modality us (the CT "
                                "plan's scenarios: guidance demo --scenario)")
        return ""
    from guidance.sim.us_scenario import us_story

    try:
        target = None if target_px is None else scanner.px_to_probe_mm(*target_px)
        story = us_story(scanner, scenario or "safe", target_xy_mm=target)
    except ValueError as e:
        raise ScenarioError(f"--target-px: {e}" if target_px is not None else str(e)) from e
    u, v = story.target_px
    return (f"{story.scenario}: {story.description}; target pixel ({u:.0f}, {v:.0f}); the "
            f"last move ends at {story.end_s - 2.0:.1f} s, then the needle is held")


def calibration_commands(room: Any, room_dir: Path) -> list[tuple[list[str], Path]]:
    """The room's calibrations as a user makes them: the simulated raw inputs of
    ``room`` (a :class:`~guidance.sim.room.SimulatedRoom`) written in ``room_dir``, and
    for each the ``guidance calibrate`` command line that turns it into a calibration
    file (pivot, fiducial registration, temporal; probe or C-arm when the room has that
    scanner).

    Returns:
        (the command's arguments after ``guidance``, the calibration file it writes),
        in the order to run them.
    """
    inputs = room.write_inputs(room_dir)
    jobs = [("pivot", ["--tool", "Needle"]), ("fiducials", ["--name", "ReferenceToCT"]),
            ("temporal", []), ("probe", []), ("carm", ["--name", "ReferenceToCArm"])]
    kinds = {"fiducials": "register"}
    out = []
    for name, extra in jobs:
        if name not in inputs:
            continue
        file = room_dir / f"{name}-calibration.json"
        out.append((["calibrate", kinds.get(name, name), "--input", str(inputs[name]),
                     "--out", str(file), *extra], file))
    return out


def calibrate_room(room: Any, room_dir: Path, say: Say = say_nothing) -> list[Path]:
    """The room's calibration files (for ``guidance run --calibration``) as a user makes
    them: the raw inputs of :func:`calibration_commands` written in ``room_dir``, each
    turned into its file by the calibration of ``guidance calibrate``
    (:mod:`guidance.workflows.calibrate`; the same document, the same command recorded
    in its provenance). ``say`` gets the command's line per file (``SUMMARY -> FILE``).

    Returns:
        The calibration files, in the order of :func:`calibration_commands`.

    Raises:
        ScenarioError: a calibration refused its input (one line naming the command).
    """
    from guidance.workflows import calibrate as wf
    from guidance.workflows.shared import WorkflowError

    files = []
    for argv, out in calibration_commands(room, room_dir):
        kind = argv[1]
        o: dict[str, Any] = {**_CALIBRATE_DEFAULTS[kind], **dict(zip(argv[2::2], argv[3::2],
                                                                     strict=True))}
        cmd = " ".join([*argv[:2], *(f"{k} {v}" for k, v in sorted(o.items()))])
        try:
            result = _calibrate(kind, o, cmd)
            wf.write_document(result.document, out)
        except (InputError, WorkflowError) as e:
            raise ScenarioError(f"`guidance {' '.join(argv)}` failed: {e}") from e
        say(f"{result.summary} -> {out}")
        files.append(out)
    return files


def _calibrate(kind: str, o: dict[str, Any], cmd: str) -> Any:
    """The calibration ``kind`` of ``guidance calibrate`` with the options ``o`` (by
    option name) and the command ``cmd`` recorded: a
    :class:`~guidance.workflows.calibrate.Calibrated`."""
    from guidance.workflows import calibrate as wf

    src = str(o["--input"])
    if kind == "pivot":
        return wf.pivot(wf.PoseSource(src, None, o["--tool"], o["--seconds"]),
                        min_range_deg=o["--min-range-deg"], ransac_mm=None, seed=o["--seed"],
                        plot=None, command=cmd)
    if kind == "register":
        return wf.register_points(src, name=o["--name"], plot=None, command=cmd)
    if kind == "temporal":
        return wf.temporal(src, max_lag_s=o["--max-lag-s"], min_std=o["--min-std"],
                           command=cmd)
    if kind == "probe":
        return wf.probe(src, name=o["--name"], command=cmd)
    return wf.carm(src, name=o["--name"], command=cmd)
