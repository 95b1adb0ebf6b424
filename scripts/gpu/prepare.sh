#!/usr/bin/env bash
# Run HERE, on the CPU machine, before a GPU session: fills gpu_carry/ (git-ignored), the one
# path every `run` call names in carry, with what the GPU image lacks:
#   gpu_carry/data.tar.gz  HAM10000 and PH2 from ../shared/data (the device machine gets only
#                          the checkout; ../shared does not travel)
#   gpu_carry/wheels/      kornia (+ kornia_rs), lightly and its pure-Python needs the image
#                          lacks (hydra-core, omegaconf, antlr4), pydicom: for Python 3.12
#                          x86_64, at the versions in .venv (requirements-ci.lock's; lightly
#                          and its needs: the bench extra's, not in the lock)
# and prints the size of what would travel: the checkout plus gpu_carry must stay < 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${MEDSSL_SHARED_DATA:-../shared/data}
CARRY=gpu_carry
PY=.venv/bin/python
mkdir -p "$CARRY"

# --- data: one gzipped tar (10,215 small files travel better as one; JPEGs barely compress)
stale() { [ -n "$(find "$DATA/ham10000" "$DATA/ph2" -newer "$1" -print -quit)" ]; }
if [ ! -f "$CARRY/data.tar.gz" ] || stale "$CARRY/data.tar.gz"; then
    tar -czf "$CARRY/data.tar.gz.tmp" -C "$DATA" ham10000 ph2
    mv "$CARRY/data.tar.gz.tmp" "$CARRY/data.tar.gz"
fi

# --- wheels: one version of each (two would stop the install on the device), at the
# versions in .venv: lightly (and hydra, omegaconf) come with the bench extra, not with setup.sh
if ! "$PY" -c "import lightly" 2>/dev/null; then
    "$PY" -m pip install -q -c constraints-ci.txt -e ".[bench]" 2>&1 \
        | { grep -v "^WARNING: Location" || true; }
fi
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
rm -rf "$CARRY/wheels"
mkdir -p "$CARRY/wheels"
quiet() { "$@" 2>&1 | { grep -v -e "^WARNING: Location" -e "^Looking in" || true; }; }
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
    manylinux1_x86_64; do
    PLATFORMS+=(--platform "$p")
done
quiet "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d "$CARRY/wheels" \
    "kornia==$(version kornia)" "kornia-rs==$(version kornia_rs)" \
    "lightly==$(version lightly)" "hydra-core==$(version hydra-core)" \
    "omegaconf==$(version omegaconf)" "pydicom==$(version pydicom)"
# antlr4-python3-runtime (hydra's and omegaconf's parser) is published as a source archive
# only: build its pure-Python wheel here
quiet "$PY" -m pip wheel -q --no-deps -w "$CARRY/wheels" \
    "antlr4-python3-runtime==$(version antlr4-python3-runtime)"

# --- what travels: tracked + untracked-not-ignored files of the checkout, and gpu_carry
tree_bytes=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } \
    | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
carry_bytes=$(du -sb "$CARRY" | cut -f1)
ls -l "$CARRY" "$CARRY/wheels"
total=$((tree_bytes + carry_bytes))
awk -v t="$tree_bytes" -v c="$carry_bytes" 'BEGIN {
    m = 1048576
    printf "checkout %.1f MiB + gpu_carry %.1f MiB = %.1f MiB of the 64 MiB a call carries\n",
        t / m, c / m, (t + c) / m
}'
if ((total > 60 * 1048576)); then
    echo "over 60 MiB: leave room for gpu_carry/evidence-224-state.tar.gz (a few MiB)" >&2
    exit 1
fi
