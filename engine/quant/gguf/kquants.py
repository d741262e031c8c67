"""llama.cpp's k-quants (super-blocks of 256): Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.

Each codec maps float32 super-blocks (S, 256) to the exact bytes of ggml's `block_qX_K` (S, type_size) and
back, following ggml-quants.c's `quantize_row_qX_K_ref` (`quantize_row_qX_K_impl` for the `_weighted`
variants, given each value's importance) and `dequantize_row_qX_K`:
a scale search per sub-block (engine.quant.gguf.search), the sub-block scales (and mins) quantized to 4 or
6 bits against one fp16 super-block scale, then every value re-quantized with the scale it will be read
back with. Layouts (little-endian):

- Q2_K (84 B): scales[16] (low nibble scale, high nibble min, per 16), qs[64] (2-bit), d, dmin (fp16).
- Q3_K (110 B): hmask[32] (third bits), qs[64] (low 2 bits), scales[12] (16 x 6-bit, offset 32), d.
- Q4_K (144 B): d, dmin, scales[12] (8 x 6-bit scale + 8 x 6-bit min), qs[128] (nibbles).
- Q5_K (176 B): d, dmin, scales[12], qh[32] (fifth bits), qs[128].
- Q6_K (210 B): ql[128] (low nibbles), qh[64] (high 2 bits), scales[16] (int8), d.
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.quant.gguf._common import (
    F32,
    as_u8,
    fp16_bytes,
    fp16_from_bytes,
    fp16_round,
    nearest_int,
    rdiv,
    seq_sum,
    signed_absmax,
    sqrtf,
)
from engine.quant.gguf.search import (
    GROUP_MAX_EPS,
    make_q3_quants,
    make_qkx2_quants,
    make_qp_quants,
    make_qx_quants,
)

QK_K = 256


def _positive_max(t: Tensor) -> Tensor:
    """C's `float m = 0; if (v > m) m = v;` over the last axis."""
    top = t.amax(-1)
    return torch.where(top > 0, top, torch.zeros_like(top))


def _requantize(x: Tensor, L: Tensor, d: Tensor, lo: int, hi: int, dm: Tensor | None = None) -> Tensor:
    """Codes for x (S, n_sub, m) read back as d * code - dm; sub-blocks whose d is 0 keep their search codes."""
    shifted = x if dm is None else x + dm.unsqueeze(-1)
    fresh = nearest_int(shifted / d.unsqueeze(-1)).clamp(lo, hi)
    return torch.where((d != 0).unsqueeze(-1), fresh, L.reshape(x.shape))


def _pack_crumbs(L: Tensor) -> Tensor:
    """(S, 256) 2-bit codes -> (S, 64): byte 32h + l holds elements 128h + 32k + l at bits 2k."""
    parts = L.reshape(L.shape[0], 2, 4, 32) << (2 * torch.arange(4, dtype=torch.int32)).reshape(1, 1, 4, 1)
    return as_u8(parts.sum(2).reshape(L.shape[0], 64))


def _unpack_crumbs(qs: Tensor) -> Tensor:
    shifts = (2 * torch.arange(4, dtype=torch.int32)).reshape(1, 1, 4, 1)
    return ((qs.to(torch.int32).reshape(-1, 2, 1, 32) >> shifts) & 3).reshape(-1, QK_K)


def _pack_bitplanes(bits: Tensor) -> Tensor:
    """(S, 8, 32) of 0/1 -> (S, 32): bit b of byte l from bits[:, b, l]."""
    return as_u8((bits << torch.arange(8, dtype=torch.int32).reshape(1, 8, 1)).sum(1))


def _unpack_bitplanes(b: Tensor) -> Tensor:
    return (b.to(torch.int32).unsqueeze(1) >> torch.arange(8, dtype=torch.int32).reshape(1, 8, 1)) & 1


def _pack_nibble_pairs(L: Tensor) -> Tensor:
    """(S, 256) -> (S, 128): byte 32k + l holds element 64k + l (low) and 64k + 32 + l (high)."""
    pairs = (L & 0x0F).reshape(L.shape[0], 4, 2, 32)
    return as_u8(pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(L.shape[0], 128)


def _unpack_nibble_pairs(qs: Tensor) -> Tensor:
    q = qs.to(torch.int32).reshape(-1, 4, 1, 32)
    return torch.cat([q & 0x0F, q >> 4], dim=2).reshape(-1, QK_K)


def _pack_scales_k4(ls: Tensor, lm: Tensor) -> Tensor:
    """8 six-bit scales and 8 six-bit mins -> the 12 bytes `get_scale_min_k4` reads."""
    return as_u8(
        torch.cat(
            [
                ls[:, :4] | ((ls[:, 4:] >> 4) << 6),
                lm[:, :4] | ((lm[:, 4:] >> 4) << 6),
                (ls[:, 4:] & 15) | ((lm[:, 4:] & 15) << 4),
            ],
            dim=-1,
        )
    )


def _unpack_scales_k4(b: Tensor) -> tuple[Tensor, Tensor]:
    q = b.to(torch.int32)
    ls = torch.cat([q[:, 0:4] & 63, (q[:, 8:12] & 15) | ((q[:, 0:4] >> 6) << 4)], dim=-1)
    lm = torch.cat([q[:, 4:8] & 63, (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)], dim=-1)
    return ls, lm


def _to_six_bits(values: Tensor, top: Tensor) -> Tensor:
    """`uint8_t l = nearest_int(inv * v); l = MIN(63, l)` with inv = 63 / top (0 when top is 0)."""
    inv = torch.where(top > 0, rdiv(63.0, top), torch.zeros_like(top))
    return (nearest_int(inv.unsqueeze(-1) * values) & 0xFF).clamp(max=63)


def quantize_q2_k(x: Tensor) -> Tensor:
    S = x.shape[0]
    sub = x.reshape(S * 16, 16)
    scales, mins, L = make_qkx2_quants(sub, sub.abs(), 3, -0.5, 0.1, 15, True)
    scales, mins = scales.reshape(S, 16), mins.reshape(S, 16)
    max_scale, max_min = _positive_max(scales), _positive_max(mins)
    ls = torch.where(
        (max_scale > 0).unsqueeze(-1), nearest_int(rdiv(15.0, max_scale).unsqueeze(-1) * scales), 0
    )
    lm = torch.where((max_min > 0).unsqueeze(-1), nearest_int(rdiv(15.0, max_min).unsqueeze(-1) * mins), 0)
    packed_scales = as_u8(ls | (lm << 4))
    d, dmin = max_scale / 15, max_min / 15
    sc = packed_scales.to(torch.int32)
    dq = fp16_round(d).unsqueeze(-1) * (sc & 15)
    dm = fp16_round(dmin).unsqueeze(-1) * (sc >> 4)
    L = _requantize(x.reshape(S, 16, 16), L, dq, 0, 3, dm).reshape(S, QK_K)
    return torch.cat([packed_scales, _pack_crumbs(L), fp16_bytes(d), fp16_bytes(dmin)], dim=-1)


def dequantize_q2_k(b: Tensor) -> Tensor:
    sc = b[:, 0:16].to(torch.int32)
    d, dmin = fp16_from_bytes(b[:, 80:82]).unsqueeze(-1), fp16_from_bytes(b[:, 82:84]).unsqueeze(-1)
    dl, ml = (d * (sc & 15)).unsqueeze(-1), (dmin * (sc >> 4)).unsqueeze(-1)
    q = _unpack_crumbs(b[:, 16:80]).reshape(-1, 16, 16).to(F32)
    return (dl * q - ml).reshape(-1, QK_K)


def quantize_q3_k(x: Tensor) -> Tensor:
    S = x.shape[0]
    scales, L = make_q3_quants(x.reshape(S * 16, 16), 4)
    scales = scales.reshape(S, 16)
    max_scale = signed_absmax(scales)
    nonzero = (max_scale != 0).unsqueeze(-1)
    iscale = rdiv(-32.0, max_scale)
    ls = torch.where(nonzero, nearest_int(iscale.unsqueeze(-1) * scales).clamp(-32, 31) + 32, 0)
    d = torch.where(max_scale != 0, rdiv(1.0, iscale), torch.zeros_like(iscale))
    return _finish_q3_k(x, L, ls, d)


def _finish_q3_k(x: Tensor, L: Tensor, ls: Tensor, d: Tensor) -> Tensor:
    """Q3_K bytes from the search codes L, the 6-bit sub-block scales ls (offset 32) and the scale d."""
    S = x.shape[0]
    low, high = ls & 15, ls >> 4
    crumbs = high.reshape(S, 4, 4) << (2 * torch.arange(4, dtype=torch.int32)).reshape(1, 4, 1)
    packed_scales = as_u8(torch.cat([low[:, :8] | (low[:, 8:] << 4), crumbs.sum(1)], dim=-1))
    dq = fp16_round(d).unsqueeze(-1) * (ls - 32)
    L = _requantize(x.reshape(S, 16, 16), L, dq, -4, 3).reshape(S, QK_K)
    L = torch.where(dq.repeat_interleave(16, dim=-1) != 0, L + 4, L)
    hmask = _pack_bitplanes((L > 3).to(torch.int32).reshape(S, 8, 32))
    return torch.cat([hmask, _pack_crumbs(L & 3), packed_scales, fp16_bytes(d)], dim=-1)


def dequantize_q3_k(b: Tensor) -> Tensor:
    q = b[:, 96:108].to(torch.int32)
    low = torch.cat([q[:, :8] & 15, q[:, :8] >> 4], dim=-1)
    high = (q[:, 8:12].unsqueeze(1) >> (2 * torch.arange(4, dtype=torch.int32)).reshape(1, 4, 1)) & 3
    sc = (low | (high.reshape(-1, 16) << 4)) - 32
    dl = (fp16_from_bytes(b[:, 108:110]).unsqueeze(-1) * sc).unsqueeze(-1)
    codes = _unpack_crumbs(b[:, 32:96]) - 4 * (1 - _unpack_bitplanes(b[:, 0:32]).reshape(-1, QK_K))
    return (dl * codes.reshape(-1, 16, 16).to(F32)).reshape(-1, QK_K)


def _quantize_q45_k(x: Tensor, nmax: int, rmin: float, nstep: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Q4_K / Q5_K shared part: (codes (S, 256), scale bytes (S, 12), d bytes, dmin bytes)."""
    S = x.shape[0]
    sub = x.reshape(S * 8, 32)
    av_x = torch.sqrt(seq_sum(sub * sub) / 32)
    weights = av_x.unsqueeze(-1) + sub.abs()
    scales, mins, L = make_qkx2_quants(sub, weights, nmax, rmin, 0.1, nstep, False)
    scales, mins = scales.reshape(S, 8), mins.reshape(S, 8)
    max_scale, max_min = _positive_max(scales), _positive_max(mins)
    ls, lm = _to_six_bits(scales, max_scale), _to_six_bits(mins, max_min)
    d, dmin = max_scale / 63, max_min / 63
    dq = fp16_round(d).unsqueeze(-1) * ls
    dm = fp16_round(dmin).unsqueeze(-1) * lm
    L = _requantize(x.reshape(S, 8, 32), L, dq, 0, nmax, dm).reshape(S, QK_K)
    return L, _pack_scales_k4(ls, lm), fp16_bytes(d), fp16_bytes(dmin)


def _dequantize_q45_k(b: Tensor, q: Tensor) -> Tensor:
    d, dmin = fp16_from_bytes(b[:, 0:2]).unsqueeze(-1), fp16_from_bytes(b[:, 2:4]).unsqueeze(-1)
    ls, lm = _unpack_scales_k4(b[:, 4:16])
    d1, m1 = (d * ls).unsqueeze(-1), (dmin * lm).unsqueeze(-1)
    return (d1 * q.reshape(-1, 8, 32).to(F32) - m1).reshape(-1, QK_K)


def quantize_q4_k(x: Tensor) -> Tensor:
    L, scales, d, dmin = _quantize_q45_k(x, 15, -1.0, 20)
    return torch.cat([d, dmin, scales, _pack_nibble_pairs(L)], dim=-1)


def dequantize_q4_k(b: Tensor) -> Tensor:
    return _dequantize_q45_k(b, _unpack_nibble_pairs(b[:, 16:144]))


def quantize_q5_k(x: Tensor) -> Tensor:
    L, scales, d, dmin = _quantize_q45_k(x, 31, -0.5, 15)
    qh = _pack_bitplanes((L >> 4).reshape(-1, 8, 32))
    return torch.cat([d, dmin, scales, qh, _pack_nibble_pairs(L)], dim=-1)


def dequantize_q5_k(b: Tensor) -> Tensor:
    high = _unpack_bitplanes(b[:, 16:48]).reshape(-1, QK_K)
    return _dequantize_q45_k(b, _unpack_nibble_pairs(b[:, 48:176]) | (high << 4))


def quantize_q6_k(x: Tensor) -> Tensor:
    S = x.shape[0]
    scales, L = make_qx_quants(x.reshape(S * 16, 16), 32)
    return _finish_q6_k(x, scales.reshape(S, 16), L)


def _finish_q6_k(x: Tensor, scales: Tensor, L: Tensor) -> Tensor:
    """Q6_K bytes from the sub-block scales (S, 16) and search codes L, as `quantize_row_q6_K_ref` ends."""
    S = x.shape[0]
    max_scale = signed_absmax(scales)
    empty = max_scale.abs() < GROUP_MAX_EPS
    iscale = rdiv(-128.0, max_scale)
    d = torch.where(empty, torch.zeros_like(iscale), rdiv(1.0, iscale))
    sc = torch.where(empty.unsqueeze(-1), 0, nearest_int(iscale.unsqueeze(-1) * scales).clamp(max=127))
    dq = fp16_round(d).unsqueeze(-1) * sc
    L = _requantize(x.reshape(S, 16, 16), L, dq, -32, 31).reshape(S, QK_K)
    L = torch.where(dq.repeat_interleave(16, dim=-1) != 0, L + 32, L)
    L = torch.where(empty.unsqueeze(-1), 0, L)
    parts = L.reshape(S, 2, 4, 32)
    ql = (parts[:, :, 0:2] & 15) | ((parts[:, :, 2:4] & 15) << 4)
    qh = ((parts >> 4) << (2 * torch.arange(4, dtype=torch.int32)).reshape(1, 1, 4, 1)).sum(2)
    return torch.cat([as_u8(ql.reshape(S, 128)), as_u8(qh.reshape(S, 64)), as_u8(sc), fp16_bytes(d)], dim=-1)


def dequantize_q6_k(b: Tensor) -> Tensor:
    ql = b[:, 0:128].to(torch.int32).reshape(-1, 2, 1, 64)
    low = torch.cat([ql & 15, ql >> 4], dim=2).reshape(-1, 2, 4, 32)
    shifts = (2 * torch.arange(4, dtype=torch.int32)).reshape(1, 1, 4, 1)
    high = (b[:, 128:192].to(torch.int32).reshape(-1, 2, 1, 32) >> shifts) & 3
    q = ((low | (high << 4)) - 32).reshape(-1, 16, 16).to(F32)
    sc = b[:, 192:208].contiguous().view(torch.int8).to(F32)
    d = fp16_from_bytes(b[:, 208:210]).unsqueeze(-1)
    return ((d * sc).unsqueeze(-1) * q).reshape(-1, QK_K)


# -- with an importance matrix: ggml-quants.c's `quantize_row_qX_K_impl` (quant_weights != NULL) -----------
# qw (S, 256): each value's importance (the imatrix entry of its input channel). The searches are weighted by
# qw * sqrt(sigma2 + x^2), sigma2 from the super-block's mean square (twice it, but for Q2_K); the sub-block
# scales and mins are then fitted to 4 or 6 bits by `make_qp_quants`, weighted by each sub-block's weight.


def _importance_weights(x: Tensor, qw: Tensor, sub: int, factor: float) -> tuple[Tensor, Tensor]:
    """(sub-blocks of x (S * 256 / sub, sub), their search weights qw * sqrt(sigma2 + x^2))."""
    sigma2 = factor * seq_sum(x * x) / QK_K
    xs = x.reshape(-1, sub)
    sigma2 = sigma2.repeat_interleave(QK_K // sub).unsqueeze(-1)
    return xs, qw.reshape(-1, sub) * sqrtf(sigma2 + xs * xs)


def quantize_q2_k_weighted(x: Tensor, qw: Tensor) -> Tensor:
    S = x.shape[0]
    sub, weight = _importance_weights(x, qw, 16, 1.0)
    sw = seq_sum(weight).reshape(S, 16)
    scales, mins, L = make_qkx2_quants(sub, weight, 3, -0.9, 0.05, 36, False, guarded=True)
    d, ls = make_qp_quants(scales.reshape(S, 16), 15, sw)
    dmin, lm = make_qp_quants(mins.reshape(S, 16), 15, sw)
    packed_scales = as_u8(ls | (lm << 4))
    sc = packed_scales.to(torch.int32)
    dq = fp16_round(d).unsqueeze(-1) * (sc & 15)
    dm = fp16_round(dmin).unsqueeze(-1) * (sc >> 4)
    L = _requantize(x.reshape(S, 16, 16), L, dq, 0, 3, dm).reshape(S, QK_K)
    return torch.cat([packed_scales, _pack_crumbs(L), fp16_bytes(d), fp16_bytes(dmin)], dim=-1)


def quantize_q3_k_weighted(x: Tensor, qw: Tensor) -> Tensor:
    S = x.shape[0]
    sub, weight = _importance_weights(x, qw, 16, 2.0)
    sw = seq_sum(weight).reshape(S, 16)
    scales, L = make_qx_quants(sub, 4, weight)
    d, ls = make_qx_quants(scales.reshape(S, 16), 32, sw)  # ls: 6-bit codes, offset 32
    return _finish_q3_k(x, L, ls, d)


def _quantize_q45_k_weighted(x: Tensor, qw: Tensor, nmax: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    S = x.shape[0]
    sub, weights = _importance_weights(x, qw, 32, 2.0)
    sw = seq_sum(weights).reshape(S, 8)
    scales, mins, L = make_qkx2_quants(sub, weights, nmax, -0.9, 0.05, 36, False, guarded=True)
    d, ls = make_qp_quants(scales.reshape(S, 8), 63, sw)
    dmin, lm = make_qp_quants(mins.reshape(S, 8), 63, sw)
    if nmax == 31:  # Q5_K caps them at 63 (Q4_K does not: only a negative fit could exceed it)
        ls, lm = ls.clamp(max=63), lm.clamp(max=63)
    dq = fp16_round(d).unsqueeze(-1) * ls
    dm = fp16_round(dmin).unsqueeze(-1) * lm
    L = _requantize(x.reshape(S, 8, 32), L, dq, 0, nmax, dm).reshape(S, QK_K)
    return L, _pack_scales_k4(ls, lm), fp16_bytes(d), fp16_bytes(dmin)


def quantize_q4_k_weighted(x: Tensor, qw: Tensor) -> Tensor:
    L, scales, d, dmin = _quantize_q45_k_weighted(x, qw, 15)
    return torch.cat([d, dmin, scales, _pack_nibble_pairs(L)], dim=-1)


def quantize_q5_k_weighted(x: Tensor, qw: Tensor) -> Tensor:
    L, scales, d, dmin = _quantize_q45_k_weighted(x, qw, 31)
    qh = _pack_bitplanes((L >> 4).reshape(-1, 8, 32))
    return torch.cat([d, dmin, scales, qh, _pack_nibble_pairs(L)], dim=-1)


def quantize_q6_k_weighted(x: Tensor, qw: Tensor) -> Tensor:
    """Q6_K weighs its search by the importance alone (no sigma2 term)."""
    S = x.shape[0]
    scales, L = make_qx_quants(x.reshape(S * 16, 16), 32, qw.reshape(S * 16, 16))
    return _finish_q6_k(x, scales.reshape(S, 16), L)
