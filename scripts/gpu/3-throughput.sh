#!/usr/bin/env bash
# Step 3 on the GPU machine: bench/throughput.py at ResNet-50, 224 px, bf16 (medssl's auto on a
# GPU), channels_last, lightly with one DataLoader worker per core; then the torch.compile
# rows if the call has time left. Writes $OUT/3-throughput.log, $OUT/gpu-resnet50-224.json
# and $OUT/gpu-resnet50-224-compile.json. About 3 + 3 minutes.
cd "$(dirname "$0")/../.." || exit 2
source scripts/gpu/env.sh
LOG=$OUT/3-throughput.log
# Batch 256 pairs (512 images a step): 512 pairs may not fit ResNet-50's activations in
# 80 GB; the JSON's peak_memory_mb says whether TP_BATCH=512 would.
COMMON=(--root "$DATA/ham10000" --backbone resnet50 --image-size 224
    --batch-size "${TP_BATCH:-256}" --steps "${TP_STEPS:-20}" --warmup "${TP_WARMUP:-3}"
    --device cuda)
{
    echo "== /dev/shm (DataLoader workers pass batches through it)"
    df -h /dev/shm
    echo "== eager"
    RESERVE=20 capped "${TP_SECONDS:-300}" python3 bench/throughput.py "${COMMON[@]}" \
        --variants ceiling medssl-simclr medssl-micle lightly ceiling-finetune medssl-finetune \
        medssl-micle-per-sample --out "$OUT/gpu-resnet50-224.json"
    echo "== torch.compile"
    # each compiled variant spends a minute or more compiling before its first step
    if (($(remaining) < ${TP_COMPILE_MIN_SECONDS:-150})); then
        echo "skipped: $(remaining) s left in this call"
    else
        RESERVE=20 capped "${TP_COMPILE_SECONDS:-300}" python3 bench/throughput.py \
            "${COMMON[@]}" --variants ceiling-compile medssl-simclr-compile \
            --out "$OUT/gpu-resnet50-224-compile.json"
    fi
} 2>&1 | tee "$LOG"
say "3 throughput: $(grep -E 'pairs/s|img/s|failed|skipped' "$LOG" | tr -s ' ' | paste -sd ';' -)"
