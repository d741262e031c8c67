#!/usr/bin/env bash
# The GPU part of issue 8 (and issue 7's measured GPU peak), from the repo root on the GPU machine:
#   bash bench/gpu_run.sh tests       GPU tests: kernels vs reference, CUDA graphs, memory peak (~3 min)
#   bash bench/gpu_run.sh kernels     microbenchmarks + end-to-end decode, SmolLM2-135M shapes (~5 min)
#   bash bench/gpu_run.sh decode      decode loops on Llama-2-7B shapes, 128 + 256 tokens (~6 min)
#   bash bench/gpu_run.sh memory      memory estimate vs the allocator's peak (~3 min)
# One part per device call: a call may run 10 minutes. The device tool sets $OUT; the logs land there.
# The GPU machine has torch, Triton and transformers but none of the default model's files (they do not
# fit in what travels), so the benchmarks use catalog configs with random weights (--synthetic).
# bitsandbytes is absent there: its formats are left out unless its wheel travels. `bash
# bench/gpu_wheels.sh` fetches it here, with our pinned transformers in case the image's differs; name
# `.whl` in the device call's carry and this script installs what it finds there, ahead of the image's.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=. TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpu-run}
PY=${PY:-python3}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:.
fi

{ date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
  $PY -c "import triton; print('triton', triton.__version__)"
  $PY -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)" 2>&1 | tail -1
} 2>&1 | tee "$OUT/env.txt"

case "${1:-tests}" in
  tests)
    $PY -m pytest -p no:cacheprovider -q -m gpu -o addopts="-ra" \
      tests/engine/kernels/test_kernels.py tests/engine/runtime/test_decode.py tests/engine/sizing/test_measure.py 2>&1 | tee "$OUT/gpu_tests.txt" ;;
  kernels)
    timeout 560 $PY -m bench.bench_kernels --synthetic smollm2-135m-instruct --rounds 3 2>&1 | tee "$OUT/bench_kernels.md" ;;
  decode)
    timeout 560 $PY -m bench.bench_decode --synthetic llama-2-7b --rounds 2 2>&1 | tee "$OUT/bench_decode.md" ;;
  memory)
    timeout 560 $PY -m bench.bench_memory_gpu 2>&1 | tee "$OUT/bench_memory.md" ;;
  *)
    echo "unknown part ${1}; use tests, kernels, decode or memory" >&2; exit 2 ;;
esac
