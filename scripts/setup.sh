#!/usr/bin/env bash
# Create .venv (if absent) and install medssl with its test tools.
# torch/torchvision are pinned for CI by constraints-ci.txt; users may use any version
# within pyproject.toml's ranges.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# the local mirror prints a "Location ... is ignored" warning per package: keep them out
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
quiet .venv/bin/python -m pip install --quiet --upgrade pip
quiet .venv/bin/python -m pip install --quiet -c constraints-ci.txt -e ".[dev]"
