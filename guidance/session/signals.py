"""Stopping a session from outside: SIGTERM and SIGINT, and waiting for them.

Installed by the command line only (never by library code): the room's service manager
stops ``guidance run`` with SIGTERM, and the summary and recording are still written.
"""

from __future__ import annotations

import threading

__all__ = ["StopSignals", "wait_or_interrupt"]


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
