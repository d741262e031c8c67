"""Helpers every lesson shares: a safe ratio for takeaways and a seeded sample of a tensor's values."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def ratio(worse: float, better: float) -> float:
    return math.inf if better == 0 else worse / better


def sample_values(x: Tensor, n: int = 20_000, seed: int = 0) -> Tensor:
    flat = x.reshape(-1)
    if flat.numel() <= n:
        return flat.clone()
    return flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))[:n]]
