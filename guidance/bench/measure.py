"""What the benchmarks share: the sender process, CPU and memory use, the report record
and the latency histogram."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from guidance.session import SessionError

__all__ = [
    "BenchReport",
    "ProcessUsage",
    "Say",
    "SenderProcess",
    "log_say",
    "run_until_sent",
    "write_histogram",
]

log = logging.getLogger(__name__)

#: A progress line's destination (the CLI prints it; by default it is logged).
Say = Callable[[str], None]


def log_say(text: str) -> None:
    """The default :data:`Say`: log the line at INFO."""
    log.info("%s", text)


@dataclass(frozen=True)
class BenchReport:
    """What a benchmark wrote.

    Attributes:
        summary: the JSON written to ``json_path`` (percentiles in ms).
        json_path: the JSON file.
        png_path: the histogram PNG beside it.
    """

    summary: dict[str, Any]
    json_path: Path
    png_path: Path


class SenderProcess:
    """The sender process (``python -m guidance.bench.sender ARGV``), started and ready:
    it has said ``READY <port>`` and waits for one receiver on ``127.0.0.1:port``."""

    def __init__(self, argv: Sequence[str]) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The sender is another program: normal priority (nice 0), whatever ours is.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "guidance.bench.sender", *argv],
            stdout=subprocess.PIPE, text=True, env=env,
            preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, 0))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "READY":
            self.proc.kill()
            raise SessionError(f"bench sender failed to start: {line}")
        self.port = int(line[1])

    @classmethod
    def frames(cls, size: int, fps: float, seconds: float) -> SenderProcess:
        """A sender of ``size`` x ``size`` uint16 frames (+ a needle pose) at ``fps`` Hz
        for ``seconds``."""
        return cls(["--size", str(size), "--fps", str(fps), "--seconds", str(seconds)])

    def wait(self) -> int:
        """Wait for the sender to finish; returns how many frames (or poses) it sent."""
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.wait(30)
        for tok in out.split("\n"):
            if tok.startswith("SENT"):
                return int(tok.split()[1])
        return 0


class ProcessUsage:
    """CPU time and resident memory of this process from construction to :meth:`done`."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.t0 = time.monotonic()
        self.c0 = self.proc.cpu_times()

    def done(self) -> dict[str, float]:
        """``cpu_percent_of_one_core`` (user + system over wall time) and ``rss_mb``."""
        wall = time.monotonic() - self.t0
        c = self.proc.cpu_times()
        cpu = (c.user - self.c0.user) + (c.system - self.c0.system)
        return {"cpu_percent_of_one_core": round(100.0 * cpu / wall, 1),
                "rss_mb": round(self.proc.memory_info().rss / 2**20, 1)}


def write_histogram(path: Path, series: Mapping[str, Sequence[float]], title: str,
                    ylabel: str = "frames") -> None:
    """Write a PNG with one histogram per series on a log-scale latency axis.

    Args:
        path: the PNG file.
        series: name -> latencies, ms (an empty series is left out).
        title: the figure's title.
        ylabel: what is counted.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name, vals in series.items():
        if vals:
            v = np.asarray(vals)
            bins = np.logspace(np.log10(max(v.min(), 0.01)), np.log10(v.max() + 1e-3), 60)
            ax.hist(v, bins=bins.tolist(),
                    alpha=0.6, label=f"{name} (p99 {np.percentile(v, 99):.2f} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_until_sent(client: Any, pipe: Any, sender: SenderProcess,
                   ) -> tuple[int, dict[str, dict[str, float]]]:
    """Start ``client`` (an ``IgtlClient``) and ``pipe`` (a ``Pipeline`` on its slots),
    wait for ``sender`` to finish and for the last update, stop both.

    Returns:
        (what the sender sent, the pipeline's statistics as percentiles by name, ms).
    """
    from guidance.pipeline.stats import percentiles

    client.start()
    pipe.start()
    sent = sender.wait()
    threading.Event().wait(0.5)  # the last update's processing
    pipe.stop()
    client.stop()
    return sent, {name: percentiles(pipe.stats.values(name)) for name in pipe.stats.names()}
