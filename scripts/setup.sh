#!/usr/bin/env bash
# Create .venv (if absent) and install medssl with its test tools.
# Every package at the exact version of requirements-ci.lock (CI's environment; a new release
# of anything changes nothing here until scripts/refresh-ci-lock.sh is run); users may use
# any version within pyproject.toml's ranges.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# the local mirror prints a "Location ... is ignored" warning per package: keep them out
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
quiet .venv/bin/python -m pip install --quiet --upgrade -c requirements-ci.lock pip
# --build-constraint: the setuptools that builds the editable install is the lock's too
quiet .venv/bin/python -m pip install --quiet -c requirements-ci.lock \
    --build-constraint requirements-ci.lock -e ".[dev]"
