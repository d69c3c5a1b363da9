"""Locating (and building) the real protocol peers the tests run against.

A missing peer skips the test on a developer machine, but fails it in CI (``CI`` set):
there the peers must be installed (``.ci/run`` does it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_SRC = Path("/usr/share/doc/openigtlink-examples/examples")
BUILD = Path(os.environ.get("GUIDANCE_PEERS_DIR", ROOT / ".peers")) / "openigtlink"


def missing(what: str) -> None:
    """Skip locally, fail in CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI but missing (see .ci/run)")
    pytest.skip(f"{what} not installed")


def igtl_examples() -> Path:
    """The build folder of the OpenIGTLink example programs (built once, ~1 min)."""
    marker = BUILD / "Receiver" / "ReceiveServer"
    if marker.exists():
        return BUILD
    if not EXAMPLES_SRC.is_dir() or shutil.which("cmake") is None:
        missing(
            "openigtlink-examples (apt-get install libopenigtlink-dev "
            "openigtlink-examples cmake g++)"
        )
    src = BUILD.parent / "openigtlink-src"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(EXAMPLES_SRC, src)
    BUILD.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["cmake", str(src), "-DOpenIGTLink_DIR=/usr/lib/openigtlink"],
        cwd=BUILD,
        check=True,
        capture_output=True,
    )
    subprocess.run(["make", "-j2"], cwd=BUILD, check=True, capture_output=True)
    assert marker.exists()
    return BUILD
