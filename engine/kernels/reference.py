"""The reference path for every packed format: dequantize, then one float matmul.

Slow and obviously right; the tests hold every fast kernel (`cpu.py`, `cuda.py`) to it, and the dispatch
table (`dispatch.py`) falls back to `layer_forward` when a fast kernel fails. The formats are defined
here, once, in the plain layouts the kernels pack from (`formats.py` names them, `layouts.py` stores them):

    W4A16  codes (N, K) uint8 in [0, 15], scales and zeros (N, K / group) float:
           w = (code - 8) * scale + zero        tinygemm's "float zero point" form
    W8A16  codes (N, K) int8 in [-127, 127], scales (N,) float:   w = code * scale
    W8A8   W8A16's weights, and activations quantized per token (row) at run time:
           x ~ q_x * s_x with s_x = max|x_row| / 127, so y = (q_x @ codes^T) * s_x * s_w

Our int4 grid (engine.quant.primitives) maps onto W4A16 exactly: a symmetric code q in [-8, 7] is stored as
q + 8 with zero 0, and an asymmetric code q in [0, 15] with integer zero point zp keeps q and gets
zero = (8 - zp) * scale (exact in float32: a 4-bit integer times an fp16 scale). Kernels may hold the
scales and zeros in a 16-bit activation dtype; that rounding is theirs, not the format's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.quant.primitives import QTensor

INT4_MIDPOINT = 8  # codes are stored unsigned; the kernels subtract 8 before scaling
INT8_MAX = 127  # symmetric int8: codes in [-127, 127] (grid_max), so -128 never appears


# -- from our quantized tensors to the kernel formats ---------------------------------------------------


def int4_from_qtensor(qt: QTensor) -> tuple[Tensor, Tensor, Tensor]:
    """(codes (N, K) uint8 in [0, 15], scales (N, G) float32, zeros (N, G) float32) of a group-wise int4
    QTensor; dequantize_int4 of them equals qt.dequantize() (same grid, same stored scales)."""
    scheme = qt.scheme
    if not scheme.is_int or scheme.bits != 4 or scheme.granularity != "group" or len(qt.shape) != 2:
        raise ValueError(f"W4A16 needs a 2-d int4 group-wise tensor (got {scheme.label}, {tuple(qt.shape)})")
    if scheme.double_quant or scheme.zero_kind != "int":
        raise ValueError(f"W4A16 stores fp scales and an integer zero point; {scheme.label} does not fit")
    scales = qt.scale.float()  # (N, G)
    if scheme.symmetric:
        codes = (qt.codes.to(torch.int16) + INT4_MIDPOINT).to(torch.uint8)
        zeros = torch.zeros_like(scales)
    else:
        codes = qt.codes.to(torch.uint8)
        zeros = (INT4_MIDPOINT - qt.zero_point.float()) * scales
    return codes, scales, zeros


def int8_from_qtensor(qt: QTensor) -> tuple[Tensor, Tensor]:
    """(codes (N, K) int8, scales (N,) float32) of a per-channel symmetric int8 QTensor."""
    scheme = qt.scheme
    if (
        not scheme.is_int
        or scheme.bits != 8
        or scheme.granularity != "channel"
        or not scheme.symmetric
        or scheme.double_quant
        or len(qt.shape) != 2
    ):
        raise ValueError(f"W8A16 needs a 2-d int8 per-channel symmetric tensor (got {scheme.label})")
    return qt.codes.to(torch.int8), qt.scale.float().reshape(-1)


# -- dequantization -------------------------------------------------------------------------------------


def dequantize_int4(codes: Tensor, scales: Tensor, zeros: Tensor, group_size: int) -> Tensor:
    """(N, K) float32 weights from W4A16 codes (N, K), scales and zeros (N, K / group_size)."""
    n, k = codes.shape
    if k % group_size or scales.shape != (n, k // group_size) or zeros.shape != scales.shape:
        raise ValueError(
            f"codes {tuple(codes.shape)} with group_size {group_size} need scales and zeros of shape "
            f"{(n, k // group_size)}, got {tuple(scales.shape)} and {tuple(zeros.shape)}"
        )
    grouped = codes.float().view(n, k // group_size, group_size) - INT4_MIDPOINT  # (N, G, group)
    return (grouped * scales.float().unsqueeze(-1) + zeros.float().unsqueeze(-1)).view(n, k)


def dequantize_nibbles(
    qweight: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int, dtype: torch.dtype
) -> Tensor:
    """(N, K) weights in `dtype`, on qweight's device, from the nibbles layout (N, K / 2) uint8 (element 2j
    in the high nibble) with (N, K / group) scales and optional zeros: the dequantize-then-matmul kernel's
    first half, on any device."""
    n = qweight.shape[0]
    codes = torch.stack([qweight >> 4, qweight & 0xF], dim=-1).view(n, -1, group_size)  # (N, G, group)
    w = (codes.to(dtype) - INT4_MIDPOINT) * scales.to(dtype).unsqueeze(-1)
    if zeros is not None:
        w += zeros.to(dtype).unsqueeze(-1)
    return w.view(n, -1)


def dequantize_int8(codes: Tensor, scales: Tensor) -> Tensor:
    """(N, K) float32 weights from int8 codes (N, K) and per-row scales (N,)."""
    return codes.float() * scales.float().reshape(-1, 1)


def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per row of x (tokens, K): (codes int8, scales (tokens, 1) float32).

    The same grid as `quantize(x, QuantScheme(8, granularity="channel", scale_dtype="float32"))`: scale
    absmax / 127, codes rounded half to even, all-zero rows get scale 1.
    """
    x = x.float()
    absmax = x.abs().amax(dim=-1, keepdim=True)  # (tokens, 1)
    scales = torch.where(absmax > 0, absmax / INT8_MAX, torch.ones_like(absmax))
    codes = torch.round(x / scales).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return codes, scales


# -- matmuls: x (tokens, K) -> (tokens, N), in x's dtype -------------------------------------------------


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    y = x.float() @ weight.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def int4_matmul(
    x: Tensor, codes: Tensor, scales: Tensor, zeros: Tensor, group_size: int, bias: Tensor | None = None
) -> Tensor:
    return _linear(x, dequantize_int4(codes, scales, zeros, group_size), bias)


def int8_matmul(x: Tensor, codes: Tensor, scales: Tensor, bias: Tensor | None = None) -> Tensor:
    return _linear(x, dequantize_int8(codes, scales), bias)


def w8a8_matmul(x: Tensor, codes: Tensor, scales: Tensor, bias: Tensor | None = None) -> Tensor:
    """Per-token int8 activations times int8 weights; the integer products summed exactly (float64)."""
    x_codes, x_scales = quantize_per_token(x)
    exact = (x_codes.double() @ codes.double().t()).float()  # (tokens, N): integers, exact in float64
    y = exact * x_scales * scales.float().reshape(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


# -- the reference kernel for a packed layer (engine.kernels.dispatch's last entry) --------------------------


def layer_forward(x: Tensor, layer, bias: bool = True) -> Tensor:
    """x (..., in) -> (..., out) for a QuantLinear: its stored bytes unpacked to the plain form (whatever
    the layout), dequantized and multiplied in float32 on the CPU, bias added unless `bias` is False; in
    x's dtype and device."""
    shape = x.shape
    rows = x.reshape(-1, shape[-1]).cpu()  # (tokens, in)
    parts = layer.codes_and_qparams()
    added = None if layer.bias is None or not bias else layer.bias.cpu()
    y = layer.weight_format.reference_matmul(rows, parts, layer.group_size, added)
    return y.to(x.device).view(*shape[:-1], layer.out_features)
