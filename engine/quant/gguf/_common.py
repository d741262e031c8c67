"""Float helpers that reproduce the C reference's float32 arithmetic bit for bit.

llama.cpp's reference quantizers are plain C on `float`: every product, sum and quotient is one IEEE float32
operation, sums run left to right, and `nearest_int` rounds half to even. Torch matches that as long as
(a) reductions that feed a decision run in the same order (`seq_sum`), and (b) a Python number divided by a
tensor is written as a tensor division (`rdiv`): `2.0 / t` in torch is `t.reciprocal() * 2.0`, two roundings.
"""

from __future__ import annotations

import torch
from torch import Tensor

F32 = torch.float32


def rdiv(numerator: float, t: Tensor) -> Tensor:
    """`numerator / t` as one correctly rounded float32 division."""
    return torch.div(torch.tensor(numerator, dtype=t.dtype), t)


def seq_sum(t: Tensor) -> Tensor:
    """Sum over the last axis from 0.0, left to right, as the C loops `s += v[i]` do (float32)."""
    columns = t.movedim(-1, 0).contiguous()
    total = torch.zeros_like(columns[0])
    for column in columns:
        total = total + column
    return total


def sqrtf(t: Tensor) -> Tensor:
    """C's `sqrtf`, correctly rounded: torch's vectorised float32 sqrt can be one ulp off, so take it in
    float64 and round once (exact for sqrt: 53 bits >= 2 * 24 + 2)."""
    return torch.sqrt(t.double()).to(F32)


def nearest_int(t: Tensor) -> Tensor:
    """ggml's `nearest_int`: round half to even (the 1.5 * 2^23 trick), as an int32 tensor."""
    return torch.round(t).to(torch.int32)


def round_away(t: Tensor) -> Tensor:
    """C `roundf`: half away from zero, without the float error of `floor(|x| + 0.5)`."""
    a = t.abs()
    floored = torch.floor(a)
    return torch.copysign(floored + torch.floor(2 * (a - floored)), t)


def signed_absmax(x: Tensor) -> Tensor:
    """The value with the largest magnitude, with its sign; the first one wins ties (C's strict `>`)."""
    index = x.abs().argmax(dim=-1, keepdim=True)
    return x.gather(-1, index).squeeze(-1)


def fp16_round(t: Tensor) -> Tensor:
    """GGML_FP32_TO_FP16 then back: round to nearest even fp16, as float32."""
    return t.to(torch.float16).to(F32)


def fp16_bytes(t: Tensor) -> Tensor:
    """(B,) float32 -> (B, 2) uint8, the little-endian fp16 bytes ggml stores."""
    return t.to(torch.float16).reshape(-1, 1).view(torch.uint8)


def fp16_from_bytes(b: Tensor) -> Tensor:
    """(B, 2) uint8 -> (B,) float32."""
    return b.contiguous().view(torch.float16).reshape(-1).to(F32)


def as_u8(t: Tensor) -> Tensor:
    """Codes (small non-negative ints) as uint8, keeping only the low 8 bits like a C `uint8_t` store."""
    return (t.to(torch.int32) & 0xFF).to(torch.uint8)
