#!/usr/bin/env bash
# Step 4 on the GPU machine, one `run` call each time (twice for the two seeds): the 224 px
# evidence sweep (protocols/ham10000-evidence-224px.yaml), resumed from where the last call
# left it, stopped in time for the call's deadline, then packed for the next call.
#
# Where it resumes from: the sweep folder itself when the machine is still warm (it then
# holds everything, checkpoints too), else gpu_carry/evidence-224-state.tar.gz, the archive
# an earlier call wrote to $OUT and the session copied into gpu_carry/ (finished seeds only,
# no weights: scripts/gpu/sweep_state.py). Writes $OUT/4-evidence-224.log,
# $OUT/evidence-224-state.tar.gz, $OUT/results.csv and $OUT/paired.csv.
cd "$(dirname "$0")/../.." || exit 2
source scripts/gpu/env.sh
PROTOCOL=${EVIDENCE_PROTOCOL:-protocols/ham10000-evidence-224px.yaml}
SWEEP=sweeps/ham224-evidence
STATE=gpu_carry/evidence-224-state.tar.gz
LOG=$OUT/4-evidence-224.log
{
    if [ -d "$SWEEP" ]; then
        echo "== resuming the sweep folder this warm machine still has"
    elif [ -f "$STATE" ]; then
        echo "== restoring the finished seeds of an earlier call from $STATE"
        mkdir -p sweeps && tar -xzf "$STATE" -C sweeps
    else
        echo "== a new sweep"
    fi
    # RESERVE: time for packing (it rebuilds the paired bootstrap and the report first)
    RESERVE=${EVIDENCE_RESERVE:-75} capped "${EVIDENCE_SECONDS:-600}" \
        python3 -m medssl.cli sweep "$PROTOCOL" --out "$SWEEP"
    echo "sweep exit: $? (130 or 124: stopped at the call's deadline; the next call resumes)"
    echo "== packing"
    python3 scripts/gpu/sweep_state.py "$PROTOCOL" "$SWEEP" "$OUT/evidence-224-state.tar.gz"
} 2>&1 | tee "$LOG"
for name in results.csv paired.csv; do
    [ -f "$SWEEP/$name" ] && cp "$SWEEP/$name" "$OUT/$name"
done
say "4 evidence: $(grep -E '^packed|^sweep finished|sweep exit' "$LOG" | paste -sd ';' -)"
