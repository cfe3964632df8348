#!/usr/bin/env bash
# Prepare wheelhouse/ for scripts/gpu-check.sh, on a machine with PyPI access (a CPU one will do).
#
#   scripts/prepare-wheelhouse.sh                 # -> wheelhouse/: sdxs-rt + diffusers, about 17 MB
#   scripts/prepare-wheelhouse.sh --offline DIR   # only the sdxs-rt wheel (the CPU dry-run test)
#
# The lent GPU machine has torch, transformers 5, huggingface_hub 1, tokenizers, safetensors,
# pillow and pytest, but no diffusers and no network: it gets only what it lacks, as pure-Python
# wheels installed there with --no-deps. sdxs-rt's wheel is built from exactly the files the
# device receives (tracked + untracked-not-ignored), so rebuild it after every change:
# gpu-check.sh refuses a wheel whose code differs from the tree it runs in.
# DIFFUSERS_VERSION: defaults to the version installed here (the one the CPU tests ran with).
set -euo pipefail
cd "$(dirname "$0")/.."
offline=0
if [ "${1:-}" = "--offline" ]; then
    offline=1
    shift
fi
dest=$(realpath -m "${1:-wheelhouse}")
PY=${PYTHON:-python3}

src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
# what the device machine receives; a tracked file deleted in the tree is left out
git ls-files -z -c -o --exclude-standard | while IFS= read -r -d '' f; do
    [ -f "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -xf - -C "$src"

rm -rf "$dest"
mkdir -p "$dest"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$dest" "$src"
if [ "$offline" = 0 ]; then
    version=${DIFFUSERS_VERSION:-$("$PY" -c 'import importlib.metadata as m; print(m.version("diffusers"))')}
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$dest" "diffusers==$version"
fi
ls -l "$dest"
du -sh "$dest"
