"""The ``guidance`` command: one sub-command per module in :data:`COMMAND_MODULES`.

Each module exposes ``register(subparsers) -> None``, which adds its parser and sets
``func`` (``Callable[[argparse.Namespace], int]``) as the parser default. Wrong
arguments exit with status 2 and a one-line reason (argparse's convention), and so do
path arguments that cannot be used (checked before the command runs, see
:func:`guidance.cli.common.path_arg`);
:class:`UsageError` raised by a command, a loader's
:class:`~guidance.io.validate.InputError` and an ``OSError`` on a named path do the same:
never a traceback for bad input.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["COMMAND_MODULES", "UsageError", "main"]

#: Sub-command modules, in help order. Add a line here to add a command.
COMMAND_MODULES: list[str] = [
    "guidance.cli.run",
    "guidance.cli.demo",
    "guidance.cli.simulate",
    "guidance.cli.control_ct",
    "guidance.cli.replay",
    "guidance.cli.bench",
    "guidance.cli.calibrate",
    "guidance.cli.plan",
    "guidance.cli.verify",
    "guidance.cli.pacs",
    "guidance.cli.train",
    "guidance.cli.evaluate",
]


class UsageError(Exception):
    """A bad argument or input file: printed as one line, exit status 2."""


class _StderrLines:
    """``sys.stderr`` that remembers whether its last line is finished, so that a refusal
    starts on a line of its own after a progress bar (``\r``-updated, unterminated)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.open_line = False

    def write(self, text: str) -> int:
        if text:
            self.open_line = not text.endswith("\n")
        return int(self.stream.write(text))

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding...
        return getattr(self.stream, name)


def _refuse(command: str, message: object) -> int:
    """Print one line ``guidance COMMAND: error: MESSAGE`` on stderr; return 2."""
    text = " ".join(str(message).split())  # a library's multi-line message on one line
    lead = "\n" if getattr(sys.stderr, "open_line", False) else ""
    print(f"{lead}guidance {command}: error: {text}", file=sys.stderr)
    return 2


class _HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default when it has one and does not say it
    already: ``(default: 15.0)``."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        d = action.default
        if (not action.option_strings or d is None or d is False or d is argparse.SUPPRESS
                or action.nargs == 0 or (isinstance(d, (list, tuple)) and not d)
                or "default" in text.lower()):
            return text
        return f"{text} (default: %(default)s)"


class _RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, _HelpFormatter):
    """A module docstring as description, kept as written; defaults as above."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Every sub-command's options say their defaults (a command that asks for the
        # raw description keeps it, with the defaults too).
        fc = kwargs.get("formatter_class", argparse.HelpFormatter)
        if fc is argparse.HelpFormatter:
            kwargs["formatter_class"] = _HelpFormatter
        elif fc is argparse.RawDescriptionHelpFormatter:
            kwargs["formatter_class"] = _RawDescriptionHelpFormatter
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, status 2 (argparse prints usage too; keep the reason last and short).
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered sub-command."""
    parser = _Parser(
        prog="guidance",
        description="Real-time interventional guidance assistant (research use only).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script. Returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(int(args.verbose), 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from guidance.cli.common import path_problems
    from guidance.io.validate import InputError
    from guidance.session import SessionError

    problems = path_problems(parser, args)
    if problems:  # before anything runs: a missing input, an output that cannot be written
        return _refuse(args.command, problems[0])

    stderr = sys.stderr
    sys.stderr = _StderrLines(stderr)
    try:
        return int(args.func(args))
    except (UsageError, InputError, SessionError) as e:
        # InputError: a loader's refusal of a bad file (CT, labels, plan, config,
        # calibration) that the command did not word itself; it names the file.
        return _refuse(args.command, e)
    except OSError as e:
        # Last resort for a user's path that failed after the early checks (a disk that
        # filled, a folder removed meanwhile); anything else is a bug and is raised.
        if e.filename is None:
            raise
        where = f"{e.filename} -> {e.filename2}" if e.filename2 else str(e.filename)
        return _refuse(args.command, f"{where}: {e.strerror or e}")
    except KeyboardInterrupt:
        return 130
    finally:
        sys.stderr = stderr


if __name__ == "__main__":
    # Run through the package module, so that UsageError raised by the commands is the
    # class caught here (``python -m`` would otherwise load this file twice).
    from guidance.cli.main import main as _main

    sys.exit(_main())
