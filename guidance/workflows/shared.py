"""What every workflow shares: its error type, the progress callback it is given, the
software version it records."""

from __future__ import annotations

from collections.abc import Callable

from guidance.session import SessionError

__all__ = ["Progress", "WorkflowError", "no_progress", "software_version"]

#: A factory of progress callbacks: ``progress(label)`` returns ``show(fraction, message)``
#: (fraction in [0, 1]); the CLI passes its progress line on stderr.
Progress = Callable[[str], Callable[[float, str], None]]


class WorkflowError(SessionError):
    """A workflow refused its input or could not finish (a degenerate calibration, a
    target outside the CT, a PACS that did not take everything); the text is one line
    naming what, and the CLI exits with status 2."""


def no_progress(label: str) -> Callable[[float, str], None]:
    """A :data:`Progress` that shows nothing."""
    del label

    def show(fraction: float, message: str) -> None:
        del fraction, message

    return show


def software_version() -> str:
    """``guidance X.Y.Z``: this package's installed version, as recorded in what the
    workflows write (``0.0.0`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"guidance {version('guidance')}"
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "guidance 0.0.0"
