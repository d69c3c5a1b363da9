"""What every scenario shares: its error type, the progress-line callback it is given,
and its options read from the command's parsed arguments."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from guidance.session import SessionError

__all__ = ["Say", "ScenarioError", "options_from", "say_nothing"]

#: Where a scenario says what it is doing, one line per call (the CLI passes
#: ``print(..., flush=True)``; library callers pass a logger's method or nothing).
Say = Callable[[str], None]

_O = TypeVar("_O")


class ScenarioError(SessionError):
    """A scenario refused its options or could not finish (a frame size out of range, a
    simulator that cannot be built, a scan with no result): the text is one line naming
    the option or what failed, and the CLI exits with status 2."""


def say_nothing(line: str) -> None:
    """A :data:`Say` that shows nothing."""
    del line


def options_from(cls: type[_O], namespace: Any) -> _O:
    """The options dataclass ``cls`` with each field read from the attribute of the same
    name of ``namespace`` (an ``argparse.Namespace``: the option ``--ct-steps`` is the
    field ``ct_steps``)."""
    assert dataclasses.is_dataclass(cls)
    return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)})
