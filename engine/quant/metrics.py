"""Error metrics between a reference tensor and its quantized version, and between logits.

All reductions accumulate in float64 so a million-element tensor's error is not lost in float32
rounding; results are plain Python floats (ready for a table or a chart).

- sqnr_db is 10 * log10(sum x^2 / sum (x - y)^2), the signal-to-quantization-noise ratio over the whole
  tensor (torchao's `compute_error`), +inf when y == x.
- kl_divergence(ref_logits, logits) is KL(P_ref || P) in nats, with log_softmax in float32 over the last
  dim and a mean over every position (batch * tokens), the direction llama.cpp's `--kl-divergence` uses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _diff(x: Tensor, y: Tensor) -> Tensor:
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: reference {tuple(x.shape)} vs quantized {tuple(y.shape)}")
    return x.float() - y.float()


def _sum_sq(t: Tensor) -> float:
    return float(torch.sum(t * t, dtype=torch.float64))


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def _relative(signal: float, noise: float) -> float:
    if signal == 0:
        return 0.0 if noise == 0 else math.inf
    return math.sqrt(noise / signal)


def mse(x: Tensor, y: Tensor) -> float:
    """Mean squared error."""
    return _sum_sq(_diff(x, y)) / x.numel()


def sqnr_db(x: Tensor, y: Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better; +inf when identical)."""
    return _sqnr(_sum_sq(x.float()), _sum_sq(_diff(x, y)))


def max_abs_err(x: Tensor, y: Tensor) -> float:
    """Largest absolute elementwise error."""
    return float(_diff(x, y).abs().max())


def relative_error(x: Tensor, y: Tensor) -> float:
    """||x - y|| / ||x|| (Frobenius); +inf when x is all zeros and y is not."""
    return _relative(_sum_sq(x.float()), _sum_sq(_diff(x, y)))


def error_summary(x: Tensor, xq: Tensor) -> dict[str, float]:
    """mse, sqnr_db, max_abs_err and relative_error of xq against the reference x, in one pass."""
    d = _diff(x, xq)
    noise, signal = _sum_sq(d), _sum_sq(x.float())
    return {
        "mse": noise / x.numel(),
        "sqnr_db": _sqnr(signal, noise),
        "max_abs_err": float(d.abs().max()),
        "relative_error": _relative(signal, noise),
    }


def kl_divergence(ref_logits: Tensor, logits: Tensor) -> float:
    """Mean over positions of KL(softmax(ref_logits) || softmax(logits)), in nats."""
    if ref_logits.shape != logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(ref_logits.shape)} vs {tuple(logits.shape)}")
    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)  # (..., vocab)
    logp = torch.log_softmax(logits.float(), dim=-1)
    per_position = torch.sum(ref_logp.exp() * (ref_logp - logp), dim=-1)  # (...)
    return float(per_position.double().mean())


def top1_agreement(ref_logits: Tensor, logits: Tensor) -> float:
    """Fraction of positions where both logits pick the same top-1 token."""
    if ref_logits.shape != logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(ref_logits.shape)} vs {tuple(logits.shape)}")
    same = ref_logits.argmax(dim=-1) == logits.argmax(dim=-1)
    return float(same.double().mean())
