"""CUDA kernels: our Triton W4A16 / W8A16 kernels, PyTorch's tinygemm int4 op as the baseline, and
`torch._int_mm` for W8A8.

Run on a GPU once (an H100, before issue 16): our Triton GEMVs were slower than cuBLAS bf16 and tinygemm
faster (docs/benchmarks.md). So nothing here is preferred by hand any more: the kernel table
(engine/kernels/dispatch.py) lists what can run and engine/kernels/choice.py times the candidates on the
device, once per batch bucket, and keeps the fastest correct one. The Triton kernels
(engine/kernels/triton_kernels.py) stay as the teaching path and a candidate; they are checked in Triton's
CPU interpreter (TRITON_INTERPRET=1, every autotuned config; tests/engine/kernels/test_kernels.py) and
built ahead of time for an H100, sm_90a, without spilling (engine/kernels/triton_aot.py). The GPU tests
are marked `gpu` and skip without CUDA.

Kernels (weights as QuantLinear stores them on a GPU; see engine/kernels/reference.py for the formats):
- `w4a16`: int4 codes two per byte in pack_int4 order (element 2j in the high nibble), (N, K / 2)
  uint8, with (N, K / group) scales and optional zeros (the nibbles layout). regime "gemv": streams the
  packed bytes once per row and reduces on the CUDA cores, autotuned per (N, K) over
  W4A16_GEMV_CONFIGS; regime "gemm": a tiled GEMM that dequantizes one group-wide K tile to 16 bits in
  registers and feeds `tl.dot`. Dequantize-then-cuBLAS is the table's `dequant_matmul`.
- `w8a16`: the same two regimes for int8 codes (N, K) with one scale per row.
- `tinygemm_*`: `aten._convert_weight_to_int4pack` / `aten._weight_int4pack_mm` (bf16 activations,
  scales and zeros as (K / group, N, 2) bf16): the tinygemm layout, and `tinygemm_unpack` reads it back.
- `w8a8_mm`: per-token int8 activations, `torch._int_mm` (cuBLAS needs more than 16 rows, so small
  batches are padded to INT_MM_MIN_ROWS) and a float epilogue with both scales.

Triton is imported here at module import, and only when CUDA is available (or TRITON_INTERPRET=1 asks
for the interpreter); the dispatch table imports this module only for tensors on a GPU.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from engine.quant.primitives import pack_int4

GEMV_MAX_TOKENS = 4  # w4a16 / w8a16 called without a regime: the GEMV up to this many rows
INT_MM_MIN_ROWS = 32  # torch._int_mm on CUDA needs more than 16 rows; pad small batches to this
TINYGEMM_GROUP_SIZES = (32, 64, 128, 256)


INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter (tests, no GPU)


def _import_triton():
    if not (torch.cuda.is_available() or INTERPRETING):
        return None, None
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None, None
    return triton, tl


triton, tl = _import_triton()


def triton_available() -> bool:
    return triton is not None


# -- Triton kernels (engine/kernels/triton_kernels.py) -----------------------------------------------------

if triton is not None:
    from engine.kernels.triton_kernels import (
        w4a16_gemm_kernel,
        w4a16_gemv_kernel,
        w8a16_gemm_kernel,
        w8a16_gemv_kernel,
    )

GEMM_BLOCK_M, GEMM_BLOCK_N = 16, 64  # tl.dot needs tiles of at least 16

# Decode GEMVs are autotuned: at the first call per (N, K) on a GPU, Triton times each config and keeps
# the fastest. Fewer rows per program give more programs (N / 8 = 512 for N = 4096 on 132 SMs), more
# warps more loads in flight; which wins on an H100 is for the GPU run to find, not for us to guess. The
# first config is the untuned default; Triton's CPU interpreter (no GPU timer) runs it alone.
W4A16_GEMV_CONFIGS = [  # (BLOCK_N, num_warps, num_stages)
    (32, 4, 2),
    (8, 2, 3),
    (8, 4, 4),
    (16, 2, 4),
    (16, 4, 3),
    (32, 8, 3),
    (64, 4, 2),
    (64, 8, 3),
]
W8A16_GEMV_CONFIGS = [  # (BLOCK_N, BLOCK_K, num_warps)
    (32, 128, 4),
    (8, 256, 2),
    (8, 512, 4),
    (16, 256, 4),
    (16, 512, 8),
    (32, 256, 4),
    (64, 128, 8),
]
AUTOTUNE = triton is not None and not INTERPRETING


def gemv_config(fmt: str, index: int) -> dict:
    """Launch arguments of one GEMV config (`W4A16_GEMV_CONFIGS` / `W8A16_GEMV_CONFIGS`)."""
    if fmt == "W4A16":
        block_n, warps, stages = W4A16_GEMV_CONFIGS[index]
        return {"BLOCK_N": block_n, "num_warps": warps, "num_stages": stages}
    block_n, block_k, warps = W8A16_GEMV_CONFIGS[index]
    return {"BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": warps}


if AUTOTUNE:
    _w4a16_gemv = triton.autotune(
        [triton.Config({"BLOCK_N": b}, num_warps=w, num_stages=st) for b, w, st in W4A16_GEMV_CONFIGS],
        key=["N", "K"],
    )(w4a16_gemv_kernel)
    _w8a16_gemv = triton.autotune(
        [triton.Config({"BLOCK_N": b, "BLOCK_K": k}, num_warps=w) for b, k, w in W8A16_GEMV_CONFIGS],
        key=["N", "K"],
    )(w8a16_gemv_kernel)


def tuned_gemv_configs() -> dict[str, dict]:
    """What the autotuner picked so far: {format: {(N, K, ...): "BLOCK_N: 8, num_warps: 2, ..."}}."""
    if not AUTOTUNE:
        return {}
    return {
        fmt: {key: str(config) for key, config in tuner.cache.items()}
        for fmt, tuner in (("W4A16", _w4a16_gemv), ("W8A16", _w8a16_gemv))
    }


def _launch_gemv(fmt: str, grid, *args, config: int | None = None, **kwargs) -> None:
    """The autotuned GEMV on a GPU; config `config` (the first if None) untuned, or in the interpreter."""
    if config is None and AUTOTUNE:
        (_w4a16_gemv if fmt == "W4A16" else _w8a16_gemv)[grid](*args, **kwargs)
    else:
        raw = w4a16_gemv_kernel if fmt == "W4A16" else w8a16_gemv_kernel
        raw[grid](*args, **kwargs, **gemv_config(fmt, config or 0))


def _groups_per_block(k: int, group_size: int) -> int:
    """Groups the GEMV reads per step: up to 256 elements (128 bytes per row), dividing K."""
    for count in (4, 2, 1):
        if group_size * count <= 256 and k % (group_size * count) == 0:
            return count
    return 1


def triton_group_ok(group_size: int | None) -> bool:
    """Our int4 kernels take power-of-two groups from 16 to 256 (tl.arange and tl.dot sizes)."""
    return group_size is not None and 16 <= group_size <= 256 and group_size & (group_size - 1) == 0


def _check_triton() -> None:
    if triton is None:
        raise RuntimeError(
            "Triton is not available: it needs CUDA (or TRITON_INTERPRET=1) and `pip install triton`"
        )


def w4a16(
    x: Tensor,
    qweight: Tensor,
    scales: Tensor,
    zeros: Tensor | None,
    group_size: int,
    gemv: int | None = None,
    regime: str | None = None,
) -> Tensor:
    """x (M, K) @ W^T for packed int4 W (N, K / 2) uint8; scales / zeros (N, K / group). Triton.
    `gemv`: run that W4A16_GEMV_CONFIGS entry instead of the autotuner's pick (tests check every one).
    `regime`: "gemv" or "gemm" (the kernel table times both); None picks by M (GEMV_MAX_TOKENS)."""
    _check_triton()
    m, k = x.shape
    n = qweight.shape[0]
    if not triton_group_ok(group_size) or k % group_size or qweight.shape[1] * 2 != k:
        raise ValueError(
            f"w4a16 needs a power-of-two group_size in [16, 256] dividing K (got {group_size}, K={k})"
        )
    x = x.contiguous()
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    zero_arg = scales if zeros is None else zeros  # never read when HAS_ZERO is False
    if (regime or ("gemv" if m <= GEMV_MAX_TOKENS else "gemm")) == "gemv":
        _launch_gemv(
            "W4A16",
            lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), m),
            x,
            qweight,
            scales,
            zero_arg,
            y,
            n,
            k,
            x.stride(0),
            y.stride(0),
            GROUP=group_size,
            GROUPS_PER_BLOCK=_groups_per_block(k, group_size),
            HAS_ZERO=zeros is not None,
            config=gemv,
        )
    else:
        grid = (triton.cdiv(m, GEMM_BLOCK_M), triton.cdiv(n, GEMM_BLOCK_N))
        w4a16_gemm_kernel[grid](
            x,
            qweight,
            scales,
            zero_arg,
            y,
            m,
            n,
            k,
            x.stride(0),
            y.stride(0),
            GROUP=group_size,
            HAS_ZERO=zeros is not None,
            BLOCK_M=GEMM_BLOCK_M,
            BLOCK_N=GEMM_BLOCK_N,
        )
    return y


def w8a16(
    x: Tensor, qweight: Tensor, scales: Tensor, gemv: int | None = None, regime: str | None = None
) -> Tensor:
    """x (M, K) @ (codes * scales)^T for int8 codes (N, K) and per-row scales (N,). Triton.
    `gemv`: run that W8A16_GEMV_CONFIGS entry instead of the autotuner's pick; `regime` as in w4a16."""
    _check_triton()
    m, k = x.shape
    n = qweight.shape[0]
    x = x.contiguous()
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if (regime or ("gemv" if m <= GEMV_MAX_TOKENS else "gemm")) == "gemv":
        _launch_gemv(
            "W8A16",
            lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), m),
            x,
            qweight,
            scales,
            y,
            n,
            k,
            x.stride(0),
            y.stride(0),
            config=gemv,
        )
    else:
        grid = (triton.cdiv(m, GEMM_BLOCK_M), triton.cdiv(n, GEMM_BLOCK_N))
        w8a16_gemm_kernel[grid](
            x,
            qweight,
            scales,
            y,
            m,
            n,
            k,
            x.stride(0),
            y.stride(0),
            BLOCK_M=GEMM_BLOCK_M,
            BLOCK_N=GEMM_BLOCK_N,
            BLOCK_K=64,
        )
    return y


# -- W8A8 -------------------------------------------------------------------------------------------------


def w8a8_mm(x: Tensor, codes_t: Tensor, scales: Tensor) -> Tensor:
    """Per-token int8 x (M, K) times int8 weights stored (K, N) contiguous; scales (N,) float32.

    The activation codes are reference.quantize_per_token's in fewer launches (as engine.kernels.cpu's
    w8a8_mm: no clamp, a tiny scale for an all-zero row); cuBLAS' int8 GEMM wants more than 16 rows, so
    small batches are padded to INT_MM_MIN_ROWS."""
    xf = x.float()
    x_scales = torch.linalg.vector_norm(xf, float("inf"), dim=-1, keepdim=True)  # (M, 1) absmax
    x_scales = x_scales.clamp_min_(torch.finfo(torch.float32).tiny).div_(127.0)
    x_codes = xf.div(x_scales).round_().to(torch.int8)
    m = x_codes.shape[0]
    if m < INT_MM_MIN_ROWS:
        x_codes = F.pad(x_codes, (0, 0, 0, INT_MM_MIN_ROWS - m))
    y = torch._int_mm(x_codes, codes_t)[:m]  # (M, N) int32 sums
    return (y * (x_scales * scales)).to(x.dtype)


# -- tinygemm: PyTorch's int4 op, the baseline -------------------------------------------------------------


def tinygemm_supported(out_features: int, in_features: int, group_size: int) -> str | None:
    if group_size not in TINYGEMM_GROUP_SIZES:
        return f"tinygemm takes groups of {TINYGEMM_GROUP_SIZES}, not {group_size}"
    if out_features % 8 or in_features % 32 or in_features % group_size:
        return f"tinygemm needs N % 8 == 0 and K % 32 == 0 (got N={out_features}, K={in_features})"
    return None


def tinygemm_pack(codes: Tensor, scales: Tensor, zeros: Tensor, device) -> tuple[Tensor, Tensor]:
    """(packed int4 weight, scales_and_zeros (G, N, 2) bf16) from W4A16 codes (N, K) uint8 in [0, 15]."""
    n, k = codes.shape
    inner_k_tiles = next(tiles for tiles in (8, 4, 2) if k % (tiles * 16) == 0)
    nibbles = pack_int4(codes).view(n, k // 2).to(device)  # high nibble first, as torchao packs for CUDA
    packed = torch.ops.aten._convert_weight_to_int4pack(nibbles, inner_k_tiles)
    scales_and_zeros = torch.stack([scales.t(), zeros.t()], dim=-1).to(device, torch.bfloat16).contiguous()
    return packed, scales_and_zeros


def tinygemm_unpack(packed: Tensor, scales_and_zeros: Tensor, group_size: int, n: int, k: int) -> dict:
    """The plain W4A16 form (codes (N, K) uint8, scales and zeros (N, G) float32, on the CPU) of tinygemm's
    opaque layout: multiply by the identity in slices of rows (W^T, as torchao reads it back), then round
    (w - zero) / scale back to the integer code. Exact: |w| <= 16 * scale, so bfloat16's relative 2^-8
    leaves every code within 1/16 of an integer."""
    scales = scales_and_zeros[..., 0].t().float().cpu()  # (N, G)
    zeros = scales_and_zeros[..., 1].t().float().cpu()
    columns = []
    for start in range(0, k, 1024):
        width = min(1024, k - start)
        eye = torch.zeros(width, k, dtype=torch.bfloat16, device=packed.device)
        eye[torch.arange(width), torch.arange(start, start + width)] = 1
        columns.append(
            torch.ops.aten._weight_int4pack_mm(eye, packed, group_size, scales_and_zeros).float().cpu()
        )
    weight_t = torch.cat(columns)  # (K, N)
    grouped = weight_t.t().reshape(n, k // group_size, group_size)
    safe = torch.where(scales == 0, torch.ones_like(scales), scales).unsqueeze(-1)
    codes = ((grouped - zeros.unsqueeze(-1)) / safe).round_().add_(8).clamp_(0, 15)
    return {"codes": codes.reshape(n, k).to(torch.uint8), "scales": scales, "zeros": zeros}


def tinygemm_mm(x: Tensor, packed: Tensor, scales_and_zeros: Tensor, group_size: int) -> Tensor:
    """x (M, K) in bfloat16 (cast otherwise) @ W^T -> (M, N) in x's dtype."""
    if x.dtype != torch.bfloat16:
        return tinygemm_mm(x.to(torch.bfloat16), packed, scales_and_zeros, group_size).to(x.dtype)
    return torch.ops.aten._weight_int4pack_mm(x.contiguous(), packed, group_size, scales_and_zeros)


class TinygemmLinear(nn.Module):
    """The baseline as a layer: tinygemm on a QuantLinear's W4A16 codes (no bias), for the benchmarks."""

    def __init__(self, module) -> None:
        super().__init__()
        packed, scales_and_zeros = tinygemm_pack(**module.codes_and_qparams(), device=module.qweight.device)
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.group_size = module.group_size

    def forward(self, x: Tensor) -> Tensor:
        return tinygemm_mm(x, self.packed, self.scales_and_zeros, self.group_size)
