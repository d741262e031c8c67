"""Our Triton kernels for packed int4 / int8 weights with 16-bit activations (engine.kernels.cuda launches them).

Imported only where Triton is: by engine.kernels.cuda on a GPU (or under TRITON_INTERPRET=1, Triton's CPU
interpreter), and by the ahead-of-time compile check (tests/engine/kernels/test_triton_compile.py,
bench/bench_triton_compile.py), which builds them for an H100 (sm_90a) on a machine without a GPU.
Formats: engine/kernels/reference.py; the launch rules and the autotuned configs: engine/kernels/cuda.py.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def w4a16_gemv_kernel(
    x_ptr,
    w_ptr,
    s_ptr,
    z_ptr,
    y_ptr,
    N,
    K,
    stride_x,
    stride_y,
    GROUP: tl.constexpr,
    GROUPS_PER_BLOCK: tl.constexpr,
    HAS_ZERO: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # one program: BLOCK_N output rows of one token; K walked GROUPS_PER_BLOCK groups at a time
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_ok = rows < N
    BLOCK_K: tl.constexpr = GROUP * GROUPS_PER_BLOCK
    pairs = tl.arange(0, BLOCK_K // 2)  # byte j holds elements 2j (high nibble) and 2j + 1 (low)
    groups = tl.arange(0, GROUPS_PER_BLOCK)
    n_groups = K // GROUP
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        packed = tl.load(
            w_ptr + rows[:, None] * (K // 2) + (k0 // 2 + pairs)[None, :], mask=row_ok[:, None], other=0
        )  # (BLOCK_N, BLOCK_K / 2) uint8
        high = (packed >> 4).to(tl.float32) - 8.0
        low = (packed & 0xF).to(tl.float32) - 8.0
        x_even = tl.load(x_ptr + m * stride_x + k0 + 2 * pairs).to(tl.float32)  # (BLOCK_K / 2,)
        x_odd = tl.load(x_ptr + m * stride_x + k0 + 2 * pairs + 1).to(tl.float32)
        products = high * x_even[None, :] + low * x_odd[None, :]  # (BLOCK_N, BLOCK_K / 2)
        per_group = tl.sum(tl.reshape(products, (BLOCK_N, GROUPS_PER_BLOCK, GROUP // 2)), axis=2)
        g0 = k0 // GROUP
        qparam = rows[:, None] * n_groups + g0 + groups[None, :]  # (BLOCK_N, GROUPS_PER_BLOCK)
        scales = tl.load(s_ptr + qparam, mask=row_ok[:, None], other=0.0).to(tl.float32)
        acc += tl.sum(per_group * scales, axis=1)
        if HAS_ZERO:  # zero * sum of the group's inputs
            x_sums = tl.sum(tl.reshape(x_even + x_odd, (GROUPS_PER_BLOCK, GROUP // 2)), axis=1)
            zeros = tl.load(z_ptr + qparam, mask=row_ok[:, None], other=0.0).to(tl.float32)
            acc += tl.sum(zeros * x_sums[None, :], axis=1)
    tl.store(y_ptr + m * stride_y + rows, acc.to(y_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def w4a16_gemm_kernel(
    x_ptr,
    w_ptr,
    s_ptr,
    z_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_x,
    stride_y,
    GROUP: tl.constexpr,
    HAS_ZERO: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # one program: a (BLOCK_M, BLOCK_N) output tile; K walked one group (one scale per row) at a time
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    pairs = tl.arange(0, GROUP // 2)
    ks = tl.arange(0, GROUP)
    n_groups = K // GROUP
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(0, n_groups):
        k0 = g * GROUP
        x = tl.load(x_ptr + rm[:, None] * stride_x + (k0 + ks)[None, :], mask=(rm < M)[:, None], other=0.0)
        packed = tl.load(
            w_ptr + rn[:, None] * (K // 2) + (k0 // 2 + pairs)[None, :], mask=(rn < N)[:, None], other=0
        )  # (BLOCK_N, GROUP / 2)
        codes = tl.interleave(packed >> 4, packed & 0xF)  # (BLOCK_N, GROUP), in k order
        scales = tl.load(s_ptr + rn * n_groups + g, mask=rn < N, other=0.0).to(tl.float32)
        w = (codes.to(tl.float32) - 8.0) * scales[:, None]
        if HAS_ZERO:
            zeros = tl.load(z_ptr + rn * n_groups + g, mask=rn < N, other=0.0).to(tl.float32)
            w += zeros[:, None]
        acc += tl.dot(x, tl.trans(w.to(x.dtype)))  # (BLOCK_M, GROUP) @ (GROUP, BLOCK_N)
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    tl.store(y_ptr + rm[:, None] * stride_y + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def w8a16_gemv_kernel(
    x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_x, stride_y, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr
):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        w = tl.load(w_ptr + rows[:, None] * K + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0)
        x = tl.load(x_ptr + m * stride_x + ks, mask=k_ok, other=0.0).to(tl.float32)
        acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
    scales = tl.load(s_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + m * stride_y + rows, (acc * scales).to(y_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def w8a16_gemm_kernel(
    x_ptr,
    w_ptr,
    s_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_x,
    stride_y,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x = tl.load(
            x_ptr + rm[:, None] * stride_x + ks[None, :],
            mask=(rm < M)[:, None] & k_ok[None, :],
            other=0.0,
        )
        w = tl.load(w_ptr + rn[:, None] * K + ks[None, :], mask=(rn < N)[:, None] & k_ok[None, :], other=0)
        acc += tl.dot(x, tl.trans(w.to(x.dtype)))  # int8 codes are exact in 16 bits
    scales = tl.load(s_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    out = acc * scales[None, :]
    tl.store(y_ptr + rm[:, None] * stride_y + rn[None, :], out.to(y_ptr.dtype.element_ty), mask=mask)
