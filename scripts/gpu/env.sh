# shellcheck shell=bash
# Sourced by every step script on the GPU machine (never here): installs the carried wheels,
# unpacks the carried data beside the checkout, sets PYTHONPATH and the call's deadline.
# Idempotent, so steps chained in one `run` call (or a warm machine) redo nothing.
set -uo pipefail

if [ ! -d gpu_carry ]; then
    echo "gpu_carry/ is missing: run scripts/gpu/prepare.sh on the CPU machine and name" \
        "gpu_carry in the run call's carry list" >&2
    exit 2
fi
REPO=$(pwd)
export OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"

# The call's deadline: every step stops its long command in time for the call to end
# inside the run tool's timeout_s. GPU_CALL_START is set once, by the first step of a call.
export GPU_CALL_START=${GPU_CALL_START:-$(date +%s)}
export CALL_SECONDS=${CALL_SECONDS:-570}

remaining() { echo $((GPU_CALL_START + CALL_SECONDS - $(date +%s))); }

# capped SECONDS CMD...: CMD for at most SECONDS, and never past the deadline less RESERVE
# seconds (kept for what follows it). SIGINT first: Python then stops as after Ctrl-C (pytest
# prints its summary, medssl releases its run), SIGKILL 20 s later.
capped() {
    local want=$1 left
    shift
    left=$(($(remaining) - ${RESERVE:-30}))
    if ((left < want)); then want=$left; fi
    if ((want < 15)); then
        echo "skipped, no time left in this call: $*"
        return 124
    fi
    timeout --signal=INT --kill-after=20 "$want" "$@"
}

# say LINE: one line of the call's summary (printed last by the runbook's commands)
say() { echo "$*" | tee -a "$OUT/summary.txt"; }

# Python packages the image lacks (kornia, lightly, ...), as wheels into their own folder
if [ ! -f /tmp/site/.medssl-wheels ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site gpu_carry/wheels/*.whl || exit 3
    touch /tmp/site/.medssl-wheels
fi
# medssl from the checkout: no install step (the image has no setuptools>=77 to build with
# offline, and nothing needs its metadata); `python3 -m medssl.cli` is the `medssl` command
export PYTHONPATH=/tmp/site:$REPO/src${PYTHONPATH:+:$PYTHONPATH}

# The data where the protocols and tests look for it: ../shared/data beside the checkout.
# A real folder (not a link): runs record the resolved path, and a sweep resumed in a later
# call compares it with the one it recorded.
DATA=$(cd .. && pwd)/shared/data
if [ ! -f "$DATA/ham10000/HAM10000_metadata.csv" ] || [ ! -f "$DATA/ph2/labels.csv" ]; then
    mkdir -p "$DATA" && tar -xzf gpu_carry/data.tar.gz -C "$DATA" || exit 4
fi
export DATA MEDSSL_SHARED_DATA=$DATA
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
