"""The live process's CPU priority: a guidance workstation's first job is the loop.

On a machine that also runs other work (a PACS upload, a compile, a virus scan) the
frame path waits for the CPU like everything else: measured with ``guidance bench
--busy 2`` on the 2-core machine, the end-to-end p99 went from 13.4 ms to 32.9 ms. With
the process at nice -10 (the other work at 0) it was 15.4 ms. Lowering the nice value
needs root or ``CAP_SYS_NICE`` (systemd: ``Nice=-10``, or ``setcap cap_sys_nice+ep`` on
the interpreter); without it the priority stays and the caller says so.

On Linux the nice value is per thread and inherited by the threads a thread creates:
:func:`raise_priority` must run before the session's threads start (the receive and
send threads, the loop, ONNX Runtime's pool), which then all have it.
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_NICE", "raise_priority"]

#: The nice value ``guidance run`` asks for (-20 highest, 0 normal, 19 lowest).
DEFAULT_NICE = -10


def raise_priority(nice: int) -> str:
    """Set the calling thread's nice value (and so its future threads').

    Args:
        nice: -20..19; 0 leaves the priority as it is.

    Returns:
        One line for people: what was set, or why it could not be.

    Raises:
        ValueError: ``nice`` outside -20..19.
    """
    if isinstance(nice, bool) or not isinstance(nice, int) or not -20 <= nice <= 19:
        raise ValueError(f"nice must be an integer in -20..19, got {nice!r}")
    if nice == 0 or not hasattr(os, "setpriority"):
        return "priority: normal (nice 0)"
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except PermissionError:
        return (f"priority: NOT raised to nice {nice} (needs root or CAP_SYS_NICE); on a busy "
                "machine the frame path waits for the CPU like everything else")
    return f"priority: nice {os.getpriority(os.PRIO_PROCESS, 0)} for the live threads"
