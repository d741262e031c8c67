"""llama.cpp's legacy block formats (blocks of 32): Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

Each codec maps float32 blocks (B, 32) to the exact bytes of ggml's `block_qX_Y` structs (B, type_size) and
back, following ggml-quants.c's `quantize_row_*_ref` / `dequantize_row_*` (`quantize_row_*_impl` for the
`_weighted` variants, given an importance per column; see the end of this module):

- Q4_0 / Q5_0 (symmetric): d = (the value of largest magnitude, with its sign) / -8 (or -16), code =
  trunc(x / d + 8.5) (or + 16.5) capped at 15 (31); the block's extreme value lands on code 0.
- Q4_1 / Q5_1 (asymmetric): d = (max - min) / 15 (31), m = min, code = trunc((x - min) / d + 0.5).
- Q8_0: d = max|x| / 127, code = round half away from zero of x / d.

Layouts (little-endian): Q4_0 = d fp16, 16 bytes of nibbles (element j in the low nibble of byte j, element
j + 16 in its high nibble); Q4_1 = d, m, nibbles; Q5_0 = d, qh (32 fifth bits as one uint32, bit j for
element j), nibbles; Q5_1 = d, m, qh, nibbles; Q8_0 = d, 32 int8.
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.quant.gguf._common import (
    F32,
    as_u8,
    fp16_bytes,
    fp16_from_bytes,
    rdiv,
    round_away,
    seq_sum,
    signed_absmax,
    sqrtf,
)
from engine.quant.gguf.search import make_qkx2_quants, make_qx_quants

HALF = 16  # elements j and j + 16 share a byte


def inverse(d: Tensor) -> Tensor:
    """C's `id = d ? 1.0f/d : 0.0f`, one column per block."""
    return torch.where(d != 0, rdiv(1.0, d), torch.zeros_like(d)).unsqueeze(-1)


def pack_nibbles(q: Tensor) -> Tensor:
    """(B, 32) codes -> (B, 16) bytes: low nibble element j, high nibble element j + 16."""
    return as_u8((q[:, :HALF] & 0x0F) | ((q[:, HALF:] & 0x0F) << 4))


def unpack_nibbles(qs: Tensor) -> Tensor:
    qs = qs.to(torch.int32)
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def pack_bits(bits: Tensor) -> Tensor:
    """(B, 8 * k) of 0/1 -> (B, k) bytes, bit i of byte b from element 8b + i (little-endian bit order)."""
    weights = 1 << torch.arange(8, dtype=torch.int32)
    return as_u8((bits.to(torch.int32).reshape(bits.shape[0], -1, 8) * weights).sum(-1))


def unpack_bits(b: Tensor) -> Tensor:
    """(B, k) bytes -> (B, 8 * k) of 0/1."""
    shifts = torch.arange(8, dtype=torch.int32)
    return ((b.to(torch.int32).unsqueeze(-1) >> shifts) & 1).reshape(b.shape[0], -1)


def _symmetric_codes(x: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    """Q4_0 / Q5_0: (codes 0..2*levels-1, d) with d = signed max / -levels."""
    d = signed_absmax(x) / -levels
    codes = torch.trunc(x * inverse(d) + (levels + 0.5)).clamp(0, 2 * levels - 1).to(torch.int32)
    return codes, d


def _asymmetric_codes(x: Tensor, top: int) -> tuple[Tensor, Tensor, Tensor]:
    """Q4_1 / Q5_1: (codes 0..top, d, min) with d = (max - min) / top."""
    low, high = x.amin(-1), x.amax(-1)
    d = (high - low) / top
    codes = torch.trunc((x - low.unsqueeze(-1)) * inverse(d) + 0.5).clamp(0, top).to(torch.int32)
    return codes, d, low


def quantize_q4_0(x: Tensor) -> Tensor:
    codes, d = _symmetric_codes(x, 8)
    return torch.cat([fp16_bytes(d), pack_nibbles(codes)], dim=-1)


def dequantize_q4_0(b: Tensor) -> Tensor:
    d = fp16_from_bytes(b[:, 0:2]).unsqueeze(-1)
    return (unpack_nibbles(b[:, 2:]) - 8).to(F32) * d


def quantize_q4_1(x: Tensor) -> Tensor:
    codes, d, low = _asymmetric_codes(x, 15)
    return torch.cat([fp16_bytes(d), fp16_bytes(low), pack_nibbles(codes)], dim=-1)


def dequantize_q4_1(b: Tensor) -> Tensor:
    d = fp16_from_bytes(b[:, 0:2]).unsqueeze(-1)
    m = fp16_from_bytes(b[:, 2:4]).unsqueeze(-1)
    return unpack_nibbles(b[:, 4:]).to(F32) * d + m


def quantize_q5_0(x: Tensor) -> Tensor:
    codes, d = _symmetric_codes(x, 16)
    return torch.cat([fp16_bytes(d), pack_bits(codes >> 4), pack_nibbles(codes)], dim=-1)


def dequantize_q5_0(b: Tensor) -> Tensor:
    d = fp16_from_bytes(b[:, 0:2]).unsqueeze(-1)
    codes = unpack_nibbles(b[:, 6:]) | (unpack_bits(b[:, 2:6]) << 4)
    return (codes - 16).to(F32) * d


def quantize_q5_1(x: Tensor) -> Tensor:
    codes, d, low = _asymmetric_codes(x, 31)
    return torch.cat([fp16_bytes(d), fp16_bytes(low), pack_bits(codes >> 4), pack_nibbles(codes)], dim=-1)


def dequantize_q5_1(b: Tensor) -> Tensor:
    d = fp16_from_bytes(b[:, 0:2]).unsqueeze(-1)
    m = fp16_from_bytes(b[:, 2:4]).unsqueeze(-1)
    codes = unpack_nibbles(b[:, 8:]) | (unpack_bits(b[:, 4:8]) << 4)
    return codes.to(F32) * d + m


def quantize_q8_0(x: Tensor) -> Tensor:
    d = x.abs().amax(-1) / 127
    codes = round_away(x * inverse(d)).to(torch.int8)
    return torch.cat([fp16_bytes(d), codes.view(torch.uint8)], dim=-1)


def dequantize_q8_0(b: Tensor) -> Tensor:
    d = fp16_from_bytes(b[:, 0:2]).unsqueeze(-1)
    return b[:, 2:].contiguous().view(torch.int8).to(F32) * d


# -- with an importance matrix: ggml-quants.c's `quantize_row_qX_Y_impl` (quant_weights != NULL) -----------
# rows (R, cols), importance (cols,). Each block's search is weighted by qw * sqrt(sigma2 + x^2), sigma2 the
# mean square of the whole row; the symmetric types take `make_qx_quants`' scale (no -8 / -16 rule), the
# asymmetric ones `make_qkx3_quants`' scale and minimum. Q8_0 has no weighted path in llama.cpp.


def _weighted_blocks(rows: Tensor, importance: Tensor) -> tuple[Tensor, Tensor]:
    """(blocks (B, 32), their search weights) for rows (R, cols) and importance (cols,)."""
    sigma2 = seq_sum(rows * rows) / rows.shape[-1]
    weight = importance.reshape(1, -1) * sqrtf(sigma2.unsqueeze(-1) + rows * rows)
    return rows.reshape(-1, 32), weight.reshape(-1, 32)


def _symmetric_weighted(rows: Tensor, importance: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    blocks, weight = _weighted_blocks(rows, importance)
    d, codes = make_qx_quants(blocks, levels, weight)
    return codes, d


def _asymmetric_weighted(rows: Tensor, importance: Tensor, top: int) -> tuple[Tensor, Tensor, Tensor]:
    blocks, weight = _weighted_blocks(rows, importance)
    d, the_min, codes = make_qkx2_quants(blocks, weight, top, -0.9, 0.05, 36, False, guarded=True)
    return codes, d, -the_min


def quantize_q4_0_weighted(rows: Tensor, importance: Tensor) -> Tensor:
    codes, d = _symmetric_weighted(rows, importance, 8)
    return torch.cat([fp16_bytes(d), pack_nibbles(codes)], dim=-1)


def quantize_q4_1_weighted(rows: Tensor, importance: Tensor) -> Tensor:
    codes, d, low = _asymmetric_weighted(rows, importance, 15)
    return torch.cat([fp16_bytes(d), fp16_bytes(low), pack_nibbles(codes)], dim=-1)


def quantize_q5_0_weighted(rows: Tensor, importance: Tensor) -> Tensor:
    codes, d = _symmetric_weighted(rows, importance, 16)
    return torch.cat([fp16_bytes(d), pack_bits(codes >> 4), pack_nibbles(codes)], dim=-1)


def quantize_q5_1_weighted(rows: Tensor, importance: Tensor) -> Tensor:
    codes, d, low = _asymmetric_weighted(rows, importance, 31)
    return torch.cat([fp16_bytes(d), fp16_bytes(low), pack_bits(codes >> 4), pack_nibbles(codes)], dim=-1)
