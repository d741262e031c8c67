#!/usr/bin/env bash
# Wheels for the GPU machine, fetched here (it reaches no registry): bitsandbytes, which its image lacks,
# and our pinned transformers with the hub and tokenizers it needs, in case the image's differ, and what
# our huggingface_hub 2 imports that the image lacks (httpx2, httpcore2, truststore: the first GPU run
# stopped at `import huggingface_hub` without them). About 60 MiB in all: with the ~3 MiB tree that is
# under the 64 MiB a device call carries. Name `.whl` in the call's carry; bench/gpu_run.sh installs what
# it finds there ahead of the image's own packages.
#   bash bench/gpu_wheels.sh              all of them
#   bash bench/gpu_wheels.sh bitsandbytes   only some (names as in requirements.txt, or installed in .venv)
# A name pinned in requirements.txt is fetched at that pin; one that is not (a dependency of a pinned
# package, as httpx2 is of huggingface_hub) at the version installed in .venv, which pip resolved for it.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || grep -qx '/.whl/' .gitignore || echo '/.whl/' >>.git/info/exclude
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(bitsandbytes transformers huggingface_hub tokenizers httpx2 httpcore2 truststore)
PY=${PY:-.venv/bin/python}
pins=()
for name in "${names[@]}"; do
  pin=$(grep -i "^${name}==" requirements.txt || true)
  if [ -z "$pin" ]; then
    version=$($PY -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name" 2>/dev/null) || {
      echo "$name: not pinned in requirements.txt and not installed in .venv" >&2
      exit 1
    }
    pin="${name}==${version}"
  fi
  pins+=("$pin")
done
echo "fetching: ${pins[*]}"
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
du -sh .whl
