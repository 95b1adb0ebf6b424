#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job. Once `medssl demo` exists this runs it;
# until then it summarises the real HAM10000 data beside the project.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if .venv/bin/medssl demo --help >/dev/null 2>&1; then
    exec .venv/bin/medssl demo "$@"
fi
exec .venv/bin/medssl data summary --dataset ham10000 --root ../shared/data/ham10000 "$@"
