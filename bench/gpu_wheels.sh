#!/usr/bin/env bash
# Wheels for the GPU machine, fetched here (it reaches no registry): bitsandbytes, which its image lacks,
# and our pinned transformers with the hub and tokenizers it needs, in case the image's differ. 58 MiB in
# all: with the ~3 MiB tree that is under the 64 MiB a device call carries. Name `.whl` in the call's carry;
# bench/gpu_run.sh installs what it finds there ahead of the image's own packages.
#   bash bench/gpu_wheels.sh              all four
#   bash bench/gpu_wheels.sh bitsandbytes   only some (names as in requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || grep -qx '/.whl/' .gitignore || echo '/.whl/' >>.git/info/exclude
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(bitsandbytes transformers huggingface_hub tokenizers)
pins=()
for name in "${names[@]}"; do
  pins+=("$(grep -i "^${name}==" requirements.txt)")
done
PY=${PY:-.venv/bin/python}
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
du -sh .whl
