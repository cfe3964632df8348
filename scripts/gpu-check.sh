#!/usr/bin/env bash
# The one device command (BENCHMARKS.md, "GPU"): on the lent GPU machine, as it is, with no network.
#
#   scripts/prepare-wheelhouse.sh     # here, first: wheelhouse/ (ignored; carried to the device)
#   bash scripts/gpu-check.sh         # there, with wheelhouse/ carried; results under $OUT
#
# 1. installs sdxs-rt, and each of diffusers / pillow the machine cannot import, from wheelhouse/
#    (pip --no-index --no-deps --target: the machine's own packages stay as they are);
# 2. python -m sdxs_rt.dev.bench.gpu_check --tests: preflight (imports from the install, the
#    install is this tree's code, the gpu tests collect), then without CUDA a "no CUDA" report
#    and exit 4; with CUDA the gpu-marked tests, the correctness checks and the `full` bench.
# Budget: SDXS_RT_GPU_BUDGET_S (480 s) for everything; the phases' estimates are in BENCHMARKS.md.
# Exit: 0 passed; 1 a test, check or bench path failed; 3 something is not in place; 4 no CUDA.
# Writes gpu-check.log, gpu_check.json, bench-full.json, pytest-gpu.log to $OUT (./gpu-results).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 3
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PY=${PYTHON:-python3}
WHEELHOUSE=${SDXS_RT_WHEELHOUSE:-wheelhouse}
SITE=${SDXS_RT_SITE:-$(mktemp -d)/site}
BUDGET_S=${SDXS_RT_GPU_BUDGET_S:-480}
# import name:distribution of what the wheelhouse may have to supply
OPTIONAL_WHEELS="diffusers:diffusers PIL:pillow"

not_in_place() {
    echo "gpu-check: NOT IN PLACE: $*"
    exit 3
}

wheel_of() {
    local found
    found=$(find "$WHEELHOUSE" -maxdepth 1 -iname "$1-*.whl" 2>/dev/null | sort | tail -n 1)
    [ -n "$found" ] && echo "$found"
}

pip_target() {
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$SITE" "$1" || not_in_place "pip could not install $1"
    echo "installed $(basename "$1") into $SITE"
}

install() {
    echo "== install: offline from $WHEELHOUSE into $SITE ($("$PY" --version))"
    rm -rf "$SITE"
    local wheel pair module dist
    wheel=$(wheel_of sdxs_rt) ||
        not_in_place "no sdxs_rt-*.whl in $WHEELHOUSE: run scripts/prepare-wheelhouse.sh first"
    pip_target "$wheel"
    for pair in $OPTIONAL_WHEELS; do
        module=${pair%%:*} dist=${pair#*:}
        if "$PY" -c "import $module" 2>/dev/null; then
            echo "$dist: already on this machine"
            continue
        fi
        wheel=$(wheel_of "$dist") ||
            not_in_place "$module does not import here and $WHEELHOUSE has no $dist wheel"
        pip_target "$wheel"
    done
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
}

main() {
    install
    "$PY" -m sdxs_rt.dev.bench.gpu_check --tests --site "$SITE" --budget-s $((BUDGET_S - SECONDS))
}

main 2>&1 | tee "$OUT/gpu-check.log"
exit "${PIPESTATUS[0]}"
