"""Every sub-command's ``--help`` documents every option, with its default (``demo`` is
tested with its scenarios)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from guidance.cli.main import build_parser


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
          ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


PARSERS = [(" ".join(path), p) for path, p in _walk(build_parser())
           if path and path[0] != "demo"]


def _has_default(action: argparse.Action) -> bool:
    d = action.default
    return not (d is None or d is False or d is argparse.SUPPRESS or action.nargs == 0
                or (isinstance(d, (list, tuple)) and not d))


@pytest.mark.parametrize(("name", "parser"), PARSERS, ids=[n for n, _ in PARSERS])
def test_every_option_is_documented_with_its_default(name: str,
                                                      parser: argparse.ArgumentParser) -> None:
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        what = f"guidance {name} {'/'.join(action.option_strings) or action.dest}"
        assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, \
            f"{what}: no help"
        shown = formatter._expand_help(action)  # as --help prints it
        if _has_default(action):
            assert "default" in shown.lower(), f"{what}: the default is not said: {shown!r}"
    text = parser.format_help()
    assert "%(" not in text  # every placeholder expanded


def test_the_walk_covers_the_commands() -> None:
    names = {n.split()[0] for n, _ in PARSERS}
    assert {"run", "simulate", "replay", "bench", "calibrate", "plan", "verify", "train",
            "eval"} <= names
    assert any(n.startswith("calibrate ") for n, _ in PARSERS)  # nested sub-commands
