#!/usr/bin/env bash
# Step 2 on the GPU machine: one epoch of MICLe pretraining (ResNet-50, 224 px, HAM10000) under
# torchrun with an NCCL group of one GPU: SyncBatchNorm, DDP and NCCL collectives for real
# (scripts/gpu/nccl_pretrain.py says why it makes the group itself). Also decodes the 224 px
# image cache that steps 3 and 4 reuse. Writes $OUT/2-torchrun.log and $OUT/2-nccl.json.
# About 1 minute.
cd "$(dirname "$0")/../.." || exit 2
source scripts/gpu/env.sh
RUN=/tmp/medssl-nccl-run
rm -rf "$RUN"
capped "${TORCHRUN_SECONDS:-150}" python3 -m torch.distributed.run --standalone \
    --nproc_per_node 1 scripts/gpu/nccl_pretrain.py --root "$DATA/ham10000" --run-dir "$RUN" \
    --json "$OUT/2-nccl.json" 2>&1 | tee "$OUT/2-torchrun.log"
status=${PIPESTATUS[0]}
checks=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['checks'], \
d['metrics'])" "$OUT/2-nccl.json" 2>/dev/null || echo "no summary")
say "2 torchrun + NCCL: exit $status; $checks"
