#!/usr/bin/env bash
# Step 5 on the GPU machine (last in a call, with whatever time is left): a fast subset of the
# CPU suite, which there runs with a GPU present -- device "auto" is then cuda, and NCCL is
# chosen whenever CUDA is available -- to see which CPU-only assumptions break on a GPU box.
# Appends to $OUT/5-suite.log.
cd "$(dirname "$0")/../.." || exit 2
source scripts/gpu/env.sh
LOG=$OUT/5-suite.log
# parallel and with a per-test limit where the image has the plugins (it had both)
PLUGINS=()
python3 -c "import xdist" 2>/dev/null && PLUGINS+=(-n 8)
python3 -c "import pytest_timeout" 2>/dev/null && PLUGINS+=(--timeout 120)
read -r -a TESTS <<<"${SUITE_TESTS:-tests/test_pretrain.py tests/test_speed_choices.py \
tests/test_distributed.py tests/test_finetune_evaluate.py}"
{
    echo "== fast subset with the GPU present"
    RESERVE=10 capped "${SUITE_SECONDS:-150}" python3 -m pytest -q -rfE -p no:cacheprovider \
        "${PLUGINS[@]}" -m "not slow and not cuda" "${TESTS[@]}"
    echo "suite exit: $?"
} 2>&1 | tee -a "$LOG"
say "5 suite with a GPU: $(grep -E '(passed|failed|errors?|deselected|no tests ran) in ' "$LOG" | tail -1)"
