"""``guidance bench --stage render``: time to draw one frame with its overlays in the GUI."""

from __future__ import annotations

import argparse

from guidance.cli.main import UsageError

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this stage's options to the ``bench`` parser (names must not clash)."""


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; write ``args.json`` (p50/p95/p99/max) and a PNG beside it."""
    raise UsageError("bench --stage render is not built yet")
