"""The live threads' CPU priority (guidance.session.priority)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from guidance.session import priority


def test_zero_leaves_the_priority() -> None:
    assert priority.raise_priority(0) == "priority: normal (nice 0)"


@pytest.mark.parametrize("bad", [-21, 20, 1.5, True, "5"])
def test_out_of_range_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="nice must be"):
        priority.raise_priority(bad)  # type: ignore[arg-type]


def test_without_the_capability_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    line = priority.raise_priority(-10)
    assert "NOT raised" in line
    assert "CAP_SYS_NICE" in line


def test_threads_started_afterwards_inherit_it() -> None:
    """In a child process (the test's own priority is left alone): the nice value is set
    for the caller, and a thread started after it has it too (Linux: per thread)."""
    if os.geteuid() != 0:  # lowering nice needs root or CAP_SYS_NICE
        code = "from guidance.session.priority import raise_priority as r; print(r(-5))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout
        assert "NOT raised" in out
        return
    code = (
        "import os, threading\n"
        "from guidance.session.priority import raise_priority\n"
        "print(raise_priority(-5))\n"
        "got = []\n"
        "t = threading.Thread(target=lambda: got.append(os.getpriority(os.PRIO_PROCESS, 0)))\n"
        "t.start(); t.join()\n"
        "print('thread', got[0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == "priority: nice -5 for the live threads"
    assert out[1] == "thread -5"
