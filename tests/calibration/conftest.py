"""Shared fixtures for the calibration tests."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """Seeded generator: every test is reproducible."""
    return np.random.default_rng(20240607)
