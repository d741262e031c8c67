#!/usr/bin/env bash
# The GPU part of issues 8 and 16 (and issue 7's measured GPU peak), from the repo root on the GPU machine:
#   bash bench/gpu_run.sh             = all: ONE device call of under 9 minutes (issue 16), each step under
#                                       its own timeout and within a 530 s budget, each written to $OUT as it
#                                       runs: env.txt; gpu_tests.txt (every file with gpu-marked tests,
#                                       ~3 min cap); bench_kernels.md (kernel and call time per format,
#                                       Llama-2-7B shapes first, ~2.5 min cap); bench_decode.md (Llama-2-7B-
#                                       shaped random weights, bf16 and W4A16, eager and compiled static
#                                       cache, 128 + 128 tokens, ~3 min cap: what is left of the budget).
#                                       steps.txt says when each step started and how it ended.
#   bash bench/gpu_run.sh tests       GPU tests only: kernels vs reference, CUDA graphs, memory peak (~3 min)
#   bash bench/gpu_run.sh kernels     microbenchmarks + end-to-end decode, SmolLM2-135M shapes (~5 min)
#   bash bench/gpu_run.sh decode      decode loops on Llama-2-7B shapes, 128 + 256 tokens (~6 min)
#   bash bench/gpu_run.sh memory      memory estimate vs the allocator's peak (~3 min)
# One part per device call: a call may run 10 minutes. The device tool sets $OUT; the logs land there.
# The GPU machine has torch, Triton and transformers but none of the default model's files (they do not
# fit in what travels), so the benchmarks use catalog configs with random weights (--synthetic).
# bitsandbytes is absent there: its formats are left out unless its wheel travels. `bash
# bench/gpu_wheels.sh` fetches it here, with our pinned transformers and huggingface_hub (and the httpx2,
# httpcore2 and truststore that huggingface_hub 2 imports) in case the image's differ; name `.whl` in the
# device call's carry and this script installs what it finds there, ahead of the image's.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=. TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpu-run}
PY=${PY:-python3}
BUDGET=${BUDGET:-530}  # seconds for the whole of `all`, install and env lines included
START=$SECONDS
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:.
fi

{ date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
  $PY -c "import huggingface_hub; print('huggingface_hub', huggingface_hub.__version__)" 2>&1 | tail -1
  $PY -c "import triton; print('triton', triton.__version__)"
  $PY -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)" 2>&1 | tail -1
} 2>&1 | tee "$OUT/env.txt"

# Every test file with gpu-marked tests (tests/engine/kernels, runtime, sizing, speed, ...).
mapfile -t GPU_TEST_FILES < <(grep -rl --include='*.py' "pytest.mark.gpu" tests | sort)
GPU_TESTS=($PY -m pytest -p no:cacheprovider -q -m gpu -o addopts="-ra" --durations=10 "${GPU_TEST_FILES[@]}")

# step NAME FILE CAP COMMAND...: run COMMAND under its own timeout (CAP seconds, or what is left of the
# budget if less), its output tee'd to $OUT/FILE as it comes; a line in steps.txt before and after.
step() {
  local name=$1 file=$2 cap=$3
  shift 3
  local left=$((BUDGET - (SECONDS - START)))
  ((left < cap)) && cap=$left
  if ((cap < 30)); then
    echo "$(date -u +%T) $name skipped: ${left} s left of the ${BUDGET} s budget" | tee -a "$OUT/steps.txt"
    return
  fi
  echo "$(date -u +%T) $name: started, cap ${cap} s" | tee -a "$OUT/steps.txt"
  local began=$SECONDS
  timeout -k 10 "$cap" "$@" 2>&1 | tee "$OUT/$file"
  local rc=${PIPESTATUS[0]}
  local how="exit $rc after $((SECONDS - began)) s"
  ((rc == 124 || rc == 137)) && how="TIMED OUT after $((SECONDS - began)) s (exit $rc); $file holds what it printed"
  echo "$(date -u +%T) $name: $how" | tee -a "$OUT/steps.txt"
}

case "${1:-all}" in
  all)
    step "GPU tests" gpu_tests.txt 170 "${GPU_TESTS[@]}"
    step "kernel table" bench_kernels.md 150 \
      $PY -m bench.bench_kernels --synthetic smollm2-135m-instruct --kernels-only --repeats 20
    step "Llama-2-7B decode" bench_decode.md 190 \
      $PY -m bench.bench_decode --synthetic llama-2-7b --variants bf16 W4A16 \
      --loops "static cache" "static + compile" --rounds 2 --prompt-tokens 128 --new-tokens 128
    echo "$(date -u +%T) all: $((SECONDS - START)) s in all" | tee -a "$OUT/steps.txt" ;;
  tests)
    "${GPU_TESTS[@]}" 2>&1 | tee "$OUT/gpu_tests.txt" ;;
  kernels)
    timeout 560 $PY -m bench.bench_kernels --synthetic smollm2-135m-instruct --rounds 3 2>&1 | tee "$OUT/bench_kernels.md" ;;
  decode)
    timeout 560 $PY -m bench.bench_decode --synthetic llama-2-7b --rounds 2 2>&1 | tee "$OUT/bench_decode.md" ;;
  memory)
    timeout 560 $PY -m bench.bench_memory_gpu 2>&1 | tee "$OUT/bench_memory.md" ;;
  *)
    echo "unknown part ${1}; use all, tests, kernels, decode or memory" >&2; exit 2 ;;
esac
