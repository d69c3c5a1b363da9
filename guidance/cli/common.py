"""Helpers shared by the sub-commands' argument parsing: path arguments checked before
a command runs (:func:`guidance.io.paths.check_path`), argparse types, and the GUI's
start for commands with ``--gui``/``--screenshot``. Everything else a command uses
(the session, its summary text, signals, progress bars) is in :mod:`guidance.session`."""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from guidance.io.igtl import parse_host_port
from guidance.io.paths import PATH_KINDS, check_path

__all__ = [
    "chosen_actions",
    "host_port",
    "int_at_least",
    "path_arg",
    "path_problems",
    "pixel_point",
    "port_number",
    "positive_float",
    "show_or_screenshot",
    "start_gui_or_fail",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def path_arg(kind: str, convert: Callable[[str], _T] = str,  # type: ignore[assignment]
             special: tuple[str, ...] = (), parents: bool = False) -> Callable[[str], _T]:
    """argparse type of a path argument: ``guidance.cli.main.main`` checks every such
    argument of the chosen command with :func:`check_path` after parsing, before the
    command runs, so a missing input or an unwritable output is refused (exit 2, one line
    naming the option, the path and the problem) before any work starts.

    Args:
        kind: one of :data:`PATH_KINDS`.
        convert: applied to the text (``str`` or ``Path``).
        special: values that are not paths (``real``, ``-``).
        parents: see :func:`check_path`.

    Returns:
        The type function; its ``path_kind`` and ``special`` attributes say what is
        checked (:func:`path_problems`; the CLI tests walk every option that has them).
    """
    if kind not in PATH_KINDS:
        raise ValueError(f"kind must be one of {PATH_KINDS}, got {kind!r}")

    def parse(text: str) -> _T:
        return convert(text)

    parse.path_kind = kind  # type: ignore[attr-defined]
    parse.special = special  # type: ignore[attr-defined]
    parse.parents = parents  # type: ignore[attr-defined]
    parse.__name__ = kind  # argparse names the type in some messages
    return parse


def chosen_actions(parser: argparse.ArgumentParser,
                   args: argparse.Namespace) -> list[argparse.Action]:
    """The actions of ``parser`` and of the sub-command parsers ``args`` chose."""
    out: list[argparse.Action] = []
    current: argparse.ArgumentParser | None = parser
    while current is not None:
        following = None
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                choices: dict[str, argparse.ArgumentParser] = action.choices
                following = choices.get(str(getattr(args, action.dest, "")))
            else:
                out.append(action)
        current = following
    return out


def path_problems(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """One line per path argument (:func:`path_arg`) of the chosen command that cannot be
    used (``"--out /x/p.json: folder /x does not exist"``), and per plain ``float`` option
    whose value is not finite (argparse's ``float`` accepts ``nan`` and ``inf``; an
    option's own type may mean inf, as ``replay --speed max`` does). Defaults are checked too
    (a default output in a read-only folder fails the same way)."""
    problems = []
    for action in chosen_actions(parser, args):
        kind = getattr(action.type, "path_kind", None)
        value = getattr(args, action.dest, None)
        name = action.option_strings[-1] if action.option_strings else action.dest
        if action.type is float and isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{name}: expected a finite number, got {value}")
        if kind is None or value is None:
            continue
        for v in value if isinstance(value, list) else [value]:
            problem = check_path(str(v), kind, getattr(action.type, "special", ()),
                                 getattr(action.type, "parents", False))
            if problem:
                problems.append(f"{name} {v}: {problem}")
    return problems


def positive_float(text: str) -> float:
    """argparse type: a float > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def pixel_point(text: str) -> tuple[float, float]:
    """argparse type: ``U,V``, a pixel of a frame (U column, V row; finite, >= 0)."""
    parts = text.replace(" ", "").split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        u, v = float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected U,V (column,row in pixels), got {text!r}") from None
    if not (math.isfinite(u) and math.isfinite(v) and u >= 0 and v >= 0):
        raise argparse.ArgumentTypeError(f"U and V must be finite and >= 0, got {text}")
    return u, v


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type factory: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v

    return parse


def port_number(text: str) -> int:
    """argparse type: a TCP port 1..65535."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number, got {text!r}") from None
    if not 0 < v < 65536:
        raise argparse.ArgumentTypeError(f"port must be 1..65535, got {v}")
    return v


def host_port(text: str) -> tuple[str, int]:
    """argparse type: ``HOST:PORT``."""
    try:
        return parse_host_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def start_gui_or_fail(args: argparse.Namespace, *, require_png: bool) -> Any:
    """:func:`guidance.gui.launch.start_gui` with ``args.gui`` and ``args.screenshot``."""
    from guidance.gui.launch import start_gui

    return start_gui(args.gui, args.screenshot, require_png=require_png)


def show_or_screenshot(app: Any, win: Any, screenshot: Path | None,
                       before_grab: Callable[[], object] | None = None) -> None:
    """:func:`guidance.gui.launch.show_or_screenshot`, saying where the screenshot went."""
    from guidance.gui.launch import show_or_screenshot as show

    path = show(app, win, screenshot, before_grab)
    if path is not None:
        print(f"screenshot: {path}")
