#!/usr/bin/env bash
# Step 1 on the GPU machine: what the machine has, then the CUDA tests (pytest -m cuda).
# Writes $OUT/1-tests.log. About 2-3 minutes; see scripts/gpu/README.md.
cd "$(dirname "$0")/../.." || exit 2
source scripts/gpu/env.sh
LOG=$OUT/1-tests.log

report_machine() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 - <<'PY'
import importlib.metadata as md
import os

import torch

print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn",
      torch.backends.cudnn.version(), "bf16", torch.cuda.is_bf16_supported(),
      "nccl", torch.distributed.is_nccl_available())
print("gpu", torch.cuda.get_device_name(0), "cpus", os.cpu_count())
for name in ("kornia", "kornia_rs", "lightly", "numpy", "scipy", "pytest", "pytest-xdist",
             "pytest-timeout", "triton"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "MISSING")
PY
    echo "data: $DATA"
}

{
    echo "== machine"
    report_machine
    echo "== pytest -m cuda"
    capped "${CUDA_TESTS_SECONDS:-240}" python3 -m pytest -m cuda -v -rA -p no:cacheprovider \
        tests/test_cuda.py
    echo "pytest -m cuda exit: $?"
} 2>&1 | tee "$LOG"
say "1 cuda tests: $(grep -E '(passed|failed|errors?|skipped|no tests ran) in ' "$LOG" | tail -1)"
