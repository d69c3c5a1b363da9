"""Helpers shared by the sub-commands: argument parsers, path checks, progress lines,
the console summary. (The live session itself and its outputs are
:mod:`guidance.session`; ``FrameWriter``, ``summary_dict`` and ``write_summary`` are
re-exported here for the sub-commands.)"""

from __future__ import annotations

import argparse
import logging
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from guidance.io.igtl import parse_host_port
from guidance.session.outputs import FrameWriter, summary_dict, write_summary

__all__ = [
    "PATH_KINDS",
    "FrameWriter",
    "check_path",
    "chosen_actions",
    "host_port",
    "path_arg",
    "path_problems",
    "pixel_point",
    "positive_float",
    "progress_line",
    "summary_dict",
    "warning_lines",
    "write_summary",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: What a path argument is: read (a file, a folder, either) or written (a file, a folder
#: created with its missing parents).
PATH_KINDS = ("input_file", "input_dir", "input_path", "output_file", "output_dir")


def _writable_dir(d: Path) -> str:
    """'' when files can be created in the existing folder ``d``, else the problem."""
    if not d.is_dir():
        return f"{d} is not a folder"
    if not os.access(d, os.W_OK | os.X_OK):
        return f"folder {d} is not writable"
    return ""


def check_path(text: str, kind: str, special: tuple[str, ...] = (),
               parents: bool = False) -> str:
    """The problem with a path argument before anything runs ('' when there is none).

    Args:
        text: the path as given.
        kind: one of :data:`PATH_KINDS`. ``output_file``: not a folder, in an existing
            writable folder, not a read-only file; ``output_dir``: a writable folder or
            one that can be created in an existing writable folder; ``input_*``: exists,
            is a file (``input_file``) or a folder (``input_dir``), and is readable.
        special: values that are not paths (``real``, ``-`` for stdout).
        parents: ``output_dir`` only: missing folders above it may be created too (a
            cache under the home folder), else its parent must exist (a typo in a path
            does not create a tree).
    """
    if kind not in PATH_KINDS:
        raise ValueError(f"kind must be one of {PATH_KINDS}, got {kind!r}")
    if text in special:
        return ""
    if not text:
        return "empty path"
    p = Path(text)
    try:
        if kind.startswith("input"):
            if not p.exists():
                return "cannot read: " + ("no such file or folder" if kind == "input_path"
                                          else "no such file" if kind == "input_file"
                                          else "no such folder")
            if kind == "input_file" and p.is_dir():
                return "cannot read: is a folder, a file is expected"
            if kind == "input_dir" and not p.is_dir():
                return "cannot read: not a folder"
            if not os.access(p, os.R_OK):
                return "cannot read: permission denied"
            return ""
        if kind == "output_file":
            if p.is_dir():
                return "is a folder, a file name is expected"
            parent = p.parent
            if not parent.exists():
                return f"folder {parent} does not exist"
            problem = _writable_dir(parent)
            if problem:
                return problem
            if p.exists() and not os.access(p, os.W_OK):
                return "exists and is not writable"
            return ""
        # output_dir: it, or the folder it is created in, must be writable.
        if p.exists():
            return "" if p.is_dir() and os.access(p, os.W_OK | os.X_OK) else (
                "exists and is not a folder" if not p.is_dir() else "folder is not writable")
        above = p.parent
        while parents and not above.exists() and above != above.parent:
            above = above.parent
        if not above.exists():
            return f"folder {above} does not exist"
        if not above.is_dir():
            return f"cannot create it: {above} is a file"
        if not os.access(above, os.W_OK | os.X_OK):
            return f"cannot create it: folder {above} is not writable"
        return ""
    except OSError as e:  # a path too long, a name the file system refuses
        return e.strerror or str(e)


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


def print_summary(summary: dict[str, Any], title: str) -> None:
    """A one-screen summary on stdout."""
    lat = summary["latency_ms"]

    def f(v: Any) -> str:
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.1f}"

    print(f"== {title} ==")
    poses = summary.get("pose_updates", 0)
    print(
        f"frames: received {summary['frames_received']}, processed "
        f"{summary['frames_processed']}, dropped {summary['frames_dropped']}, "
        f"stale reports {summary['stale_reports']}"
        + (f"; needle pose updates (no images) {poses}" if poses else "")
    )
    print(
        f"end-to-end latency ms: p50 {f(lat['p50'])}  p95 {f(lat['p95'])}  "
        f"p99 {f(lat['p99'])}  max {f(lat['max'])}"
    )
    stages = "  ".join(f"{k} {f(v['p50'])}/{f(v['p99'])}" for k, v in summary["stages_ms"].items())
    print(f"stages ms (p50/p99): {stages}")
    for line in warning_lines(summary["warnings"]):
        print(line)
    last = summary.get("last_state")
    if last is not None:
        decision = last.get("decision")
        if decision is not None:
            wid = decision["widening"]
            print(f"last decision: {decision['level']} {decision['message']} (margins "
                  f"+{wid['total_mm']:.1f} mm)")
        for r in last["reasons"][:3]:
            print(f"last state: {r['state']}: {r['message']}")


def progress_line(label: str, stream: Any = None, every_s: float = 10.0,
                  ) -> Callable[[float, str], None]:
    """A progress callback on stderr: on a terminal one bar updated in place (``\\r``);
    otherwise (a log, a pipe, CI) a plain line at most every ``every_s`` seconds and at
    the end, so that logs do not fill with bars."""
    import sys
    import time

    out = stream if stream is not None else sys.stderr
    tty = bool(getattr(out, "isatty", lambda: False)())
    state = {"last": -1.0, "t": -math.inf}

    def show(fraction: float, message: str) -> None:
        done = fraction >= 1.0
        if tty:
            if fraction - state["last"] < 0.02 and not done:
                return
            state["last"] = fraction
            filled = round(30 * fraction)
            out.write(f"\r{label} [{'#' * filled}{' ' * (30 - filled)}] "
                      f"{100 * fraction:3.0f}% {message[:40]:<40}" + ("\n" if done else ""))
        else:
            now = time.monotonic()
            if not done and now - state["t"] < every_s:
                return
            if done and state["last"] >= 1.0:
                return
            state["t"], state["last"] = now, fraction
            out.write(f"{label}: {100 * fraction:3.0f}% {message}\n")
        out.flush()

    return show


_URGENCY = {"DANGER": 3, "CAUTION": 2, "INFO": 1}


def warning_lines(warnings: list[dict[str, Any]], limit: int = 8) -> list[str]:
    """The warnings log for the console: per structure its worst level (when it was
    first reached, and why), most urgent first (level, then closest to its margin); the
    count is of the structures listed, and what is left out is said."""
    worst: dict[str, dict[str, Any]] = {}
    for w in warnings:
        prev = worst.get(w["structure"])
        if prev is None or _URGENCY.get(w["level"], 0) > _URGENCY.get(prev["level"], 0):
            worst[w["structure"]] = w

    def excess(w: dict[str, Any]) -> float:
        d, m = w.get("distance_mm"), w.get("margin_mm")
        ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (d, m))
        return float(d) - float(m) if ok else math.inf  # type: ignore[arg-type]

    rows = sorted(worst.values(), key=lambda w: (-_URGENCY.get(w["level"], 0), excess(w)))
    if not rows:
        return ["warnings: none"]
    by_level: dict[str, int] = {}
    for w in rows:
        by_level[w["level"]] = by_level.get(w["level"], 0) + 1
    counts = ", ".join(f"{k} {by_level[k]}" for k in sorted(
        by_level, key=lambda k: -_URGENCY.get(k, 0)))
    lines = [f"warnings: {len(rows)} structure{'s' if len(rows) != 1 else ''} "
             f"({counts}); the worst of each, most urgent first:"]
    for w in rows[:limit]:
        # The message names its structure (plan items say "plan: ...").
        msg = w["message"]
        if not msg.startswith(f"{w['structure']}:"):
            msg = f"{w['structure']}: {msg}"
        lines.append(f"  {w['level']:7s} t={w['t_s']:6.2f}s {msg}")
    if len(rows) > limit:
        lines.append(f"  ... and {len(rows) - limit} more (summary.json: warnings)")
    return lines


class StopSignals:
    """SIGTERM and SIGINT stop the command gracefully (``stop`` is set, the caller writes
    its summary and closes its recording); a second signal exits at once (status 128 +
    the signal). Installed by the CLI only, never by library code; restores the previous
    handlers on :meth:`restore`. Main thread only."""

    def __init__(self, stop: threading.Event) -> None:
        import signal

        self.stop = stop
        self.received: str = ""
        self._previous = {sig: signal.signal(sig, self._handle)
                          for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum: int, _frame: object) -> None:
        import os
        import signal
        import sys

        name = signal.Signals(signum).name
        if self.received:
            sys.stderr.write(f"\n{name} again: exiting now\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.received = name
        sys.stderr.write(f"\n{name}: stopping (summary and recording are written); send "
                         "it again to exit at once\n")
        sys.stderr.flush()
        self.stop.set()

    def restore(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def wait_or_interrupt(seconds: float | None, stop: threading.Event) -> None:
    """Block for ``seconds`` (``None``: until Ctrl-C), returning early when ``stop`` is set."""
    try:
        if seconds is None:
            while not stop.wait(3600):
                pass
        else:
            stop.wait(seconds)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)


def start_gui_or_fail(args: argparse.Namespace, *, require_png: bool) -> Any:
    """Check ``--gui`` / ``--screenshot`` and, with ``--gui``, create the Qt application
    before anything else starts (no screen fails fast, offscreen for screenshots).

    Args:
        args: parsed arguments with ``gui`` and ``screenshot`` (a Path or None).
        require_png: the screenshot file name must end in ``.png``.

    Returns:
        The ``QApplication`` with ``--gui``, else None.

    Raises:
        guidance.cli.main.UsageError: ``--screenshot`` without ``--gui``, a screenshot
            name that is not ``.png`` (when required), or no screen for ``--gui``.
    """
    from guidance.cli.main import UsageError

    if args.screenshot is not None and not args.gui:
        raise UsageError("--screenshot FILE needs --gui")
    if require_png and args.screenshot is not None and args.screenshot.suffix.lower() != ".png":
        raise UsageError(f"--screenshot {args.screenshot}: the file name must end in .png")
    if not args.gui:
        return None
    from guidance.gui.app import GuiUnavailable, ensure_app

    try:
        return ensure_app(headless=args.screenshot is not None)
    except GuiUnavailable as e:
        raise UsageError(str(e)) from e


def show_or_screenshot(app: Any, win: Any, screenshot: Path | None,
                       before_grab: Callable[[], object] | None = None) -> None:
    """Run the shown window ``win`` until it is closed, or, with ``screenshot``, draw it
    once (after ``before_grab()``), write the PNG and close it.

    Raises:
        guidance.cli.main.UsageError: the screenshot file cannot be written.
    """
    from guidance.cli.main import UsageError
    from guidance.gui.app import grab_to_file

    if screenshot is None:
        app.exec_()
        return
    if before_grab is not None:
        before_grab()
    app.processEvents()
    try:
        grab_to_file(win, screenshot)
    except OSError as e:
        raise UsageError(str(e)) from e
    print(f"screenshot: {screenshot}")
    win.close()
