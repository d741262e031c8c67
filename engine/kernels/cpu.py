"""CPU kernels: PyTorch's own packed int4 / int8 matmuls and its int8 x int8 GEMM.

- W4A16: `aten._convert_weight_to_int4pack_for_cpu(codes (N, K) int32, innerKTiles)` packs unsigned
  codes into (N, K / 2) uint8; `aten._weight_int4pack_mm_for_cpu(x (M, K), packed, group, sz)` computes
  x @ W^T with W = (code - 8) * scale + zero and `sz` = (K / group, N, 2) [scale, zero] pairs in x's
  dtype. Groups of 32, 64, 128 or 256 only; N a multiple of 16.
- W8A16: `aten._weight_int8pack_mm(x (M, K), codes (N, K) int8, scales (N,))`, scales in x's dtype.
- W8A8: `torch._int_mm(a (M, K) int8, b (K, N) int8) -> int32`, with per-token activation scales.

Both weight-only ops accept float32, float16 and bfloat16 activations, but in torch 2.13 only bfloat16
takes the vectorised path (measured: float32 and float16 are many times slower than bfloat16, and slower
than nn.Linear in float32; figures for one machine belong in docs/benchmarks.md). So the layouts that
hold them compute in bfloat16 (COMPUTE_DTYPE): their scales are stored in bfloat16 at pack time, which
rounds our fp16 scales to 8 significant bits (relative 2^-9, the same order as rounding the activations
themselves), and a float32 model's activations are cast to bfloat16 and back by the layer, not here. The
kernel table (engine.kernels.dispatch) calls the aten ops directly.

The packed int4 layout is the kernel's own and depends on the CPU (blocks of 64 output rows with
AVX-512, 32 with AVX2; see `unpack_int4`). `unpack_int4` inverts it so the reference path reads the very
bytes the kernel reads; `int4_block_rows()` finds the block once per process by packing random codes, so
an unknown layout turns the fast path off (QuantLinear then uses the reference) instead of computing
garbage.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

COMPUTE_DTYPE = torch.bfloat16  # the only activation dtype with fast packed kernels on CPU (see above)
INT4_GROUP_SIZES = (32, 64, 128, 256)


# -- W4A16 -----------------------------------------------------------------------------------------------


def int4_supported(out_features: int, in_features: int, group_size: int) -> str | None:
    """None when the CPU int4 kernel takes this shape, else the reason it does not."""
    if group_size not in INT4_GROUP_SIZES:
        return f"the CPU int4 kernel takes groups of {INT4_GROUP_SIZES}, not {group_size}"
    if in_features % group_size:
        return f"a group size of {group_size} does not divide the layer's input width of {in_features}"
    if out_features % 16:
        return f"the layer's output width of {out_features} is not a multiple of 16"
    if not int4_layout_ok():
        return "this torch build packs int4 differently from what unpack_int4 expects"
    return None


def pack_int4(codes: Tensor, scales: Tensor, zeros: Tensor, dtype: torch.dtype = COMPUTE_DTYPE):
    """(packed (N, K / 2) uint8, scales_and_zeros (G, N, 2) in `dtype`) from W4A16 codes (N, K) uint8 in
    [0, 15] and scales / zeros (N, G)."""
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
    scales_and_zeros = torch.stack([scales.t(), zeros.t()], dim=-1).to(dtype).contiguous()  # (G, N, 2)
    return packed, scales_and_zeros


def unpack_int4(packed: Tensor, block_rows: int | None = None) -> Tensor:
    """Codes (N, K) uint8 from the CPU int4 layout (aten's weight_to_int4pack_kernel).

    Rows go in blocks of `block_rows` (64 with AVX-512, 32 with AVX2), each stored as a (K, block / 2)
    byte array: byte (k, j) holds row j in its low nibble and row j + block / 2 in its high nibble. A
    last, shorter block (and every block of a non-vectorised build, block_rows=2) pairs rows 2j and
    2j + 1 instead.
    """
    block = block_rows or int4_block_rows()
    if block is None:
        raise RuntimeError("this torch build's CPU int4 layout is not one unpack_int4 knows")
    n, half_k = packed.shape
    k = 2 * half_k
    flat = packed.reshape(-1)
    full = n // block * block
    parts = []
    if full:
        blocks = flat[: full * half_k].view(full // block, k, block // 2)  # (blocks, K, block / 2)
        rows = torch.cat([blocks & 0xF, blocks >> 4], dim=2)  # (blocks, K, block): rows j, then j + block/2
        parts.append(rows.transpose(1, 2).reshape(full, k))
    if full < n:
        tail = flat[full * half_k :].view(k, (n - full) // 2)  # (K, tail / 2): rows 2j and 2j + 1
        pairs = torch.stack([tail & 0xF, tail >> 4], dim=2).view(k, n - full)
        parts.append(pairs.t())
    return torch.cat(parts).contiguous() if len(parts) > 1 else parts[0].contiguous()


def unpack_scales_and_zeros(scales_and_zeros: Tensor) -> tuple[Tensor, Tensor]:
    """(scales, zeros), each (N, G) float32, from the (G, N, 2) kernel layout."""
    both = scales_and_zeros.float().transpose(0, 1)  # (N, G, 2)
    return both[..., 0], both[..., 1]


@functools.cache
def int4_block_rows() -> int | None:
    """Row block of this build's CPU int4 layout (64, 32 or 2), found once by packing random codes;
    None if the op is missing or the layout is none of those (the fast path is then off)."""
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (176, 128), generator=generator, dtype=torch.int32)  # 176 = 2*64 + 48
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    except (RuntimeError, AttributeError):
        return None
    if packed.shape != (codes.shape[0], codes.shape[1] // 2) or packed.dtype != torch.uint8:
        return None
    for block in (64, 32, 2):
        if torch.equal(unpack_int4(packed, block), codes.to(torch.uint8)):
            return block
    return None


def int4_layout_ok() -> bool:
    return int4_block_rows() is not None


# -- W8A16 and W8A8 --------------------------------------------------------------------------------------


def w8a8_mm(x: Tensor, codes_t: Tensor, scales: Tensor) -> Tensor:
    """Per-token int8 x (M, K) times int8 weights given transposed, codes_t (K, N); scales (N,) float32.

    The activation codes are reference.quantize_per_token's, in fewer ops (at batch 1 each small op costs
    about as much as the int8 GEMM itself on a 576-wide layer): no clamp, since |x| / (absmax / 127)
    cannot round past 127, and an all-zero row gets a tiny scale instead of 1 (its codes are 0 either way).
    """
    xf = x.float()
    x_scales = torch.linalg.vector_norm(xf, float("inf"), dim=-1, keepdim=True)  # (M, 1) absmax
    x_scales = x_scales.clamp_min_(torch.finfo(torch.float32).tiny).div_(127.0)
    x_codes = xf.div(x_scales).round_().to(torch.int8)
    y = torch._int_mm(x_codes, codes_t)  # (M, N) int32
    return (y * (x_scales * scales)).to(x.dtype)
