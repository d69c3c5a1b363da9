"""Moved to :mod:`guidance.scenarios.planning`; kept for ``guidance.cli.bench_tracked``."""

from guidance.scenarios.planning import prepare_plan

__all__ = ["prepare_plan"]
