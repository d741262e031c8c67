"""Our Triton kernels built ahead of time for an H100 (sm_90a) on this CPU-only machine: every kernel and
every config the decode autotuner may pick compiles, in bf16 and fp16, and none spills registers to
local memory (engine/kernels/triton_aot.py). Speed needs the GPU; this is what can be known without one."""

from __future__ import annotations

import importlib.util
import warnings

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")


def plans():
    if importlib.util.find_spec("triton") is None:
        return []
    from engine.kernels import triton_aot

    return triton_aot.planned_builds()


@pytest.mark.parametrize(
    "plan",
    plans(),
    ids=lambda p: f"{p[0].removesuffix('_kernel')}-{p[1]}-" + "-".join(map(str, p[2].values())),
)
def test_kernel_builds_for_h100_without_spilling(plan):
    from engine.kernels import triton_aot

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Triton 3.9 warns that its FP-fusion default will change
        built = triton_aot.build(*plan)
    assert built.local_bytes == 0, f"{built.kernel} {built.config} spills {built.local_bytes} bytes"
    assert 0 < built.registers <= 255  # sm_90's per-thread ceiling
    assert built.shared_bytes <= 227 * 1024  # an H100 SM's shared memory per block
    assert built.ptx_lines > 100


def test_every_autotuned_config_is_planned():
    from engine.kernels import cuda

    planned = plans()
    gemv4 = {p[2]["BLOCK_N"] for p in planned if p[0] == "w4a16_gemv_kernel" and p[1] == "bf16"}
    gemv8 = {(p[2]["BLOCK_N"], p[2]["BLOCK_K"]) for p in planned if p[0] == "w8a16_gemv_kernel"}
    assert gemv4 == {b for b, _, _ in cuda.W4A16_GEMV_CONFIGS}
    assert gemv8 == {(b, k) for b, k, _ in cuda.W8A16_GEMV_CONFIGS}
