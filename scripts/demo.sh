#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job, `medssl demo` (arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/medssl demo "$@"
