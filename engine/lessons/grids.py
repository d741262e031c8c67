"""Lessons 1 and 2: what a grid looks like. Linear (int4) vs quantile (NF4) vs float (FP4) levels on data
of a chosen distribution, and symmetric vs asymmetric int grids on one-sided, activation-like data.

Synthetic tensors stand in for weights: the default model's weights were shipped on a 4-bit grid (Q4_1),
so re-quantizing them would show near-zero error that says nothing about the method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.analysis.blocks import block_levels
from engine.analysis.tensors import synthetic_tensor
from engine.lessons._common import ratio, sample_values
from engine.quant import formats
from engine.quant.metrics import mse, sqnr_db
from engine.quant.primitives import choose_qparams, fake_quantize, quantize
from engine.quant.schemes import QuantScheme

# -- 1. linear vs non-linear (quantile) grids --------------------------------------------------------

DISTRIBUTIONS = ("gaussian", "laplace", "uniform")
MAPPING_FORMATS = ("int4", "nf4", "fp4")


def distribution_tensor(kind: str, rows: int = 256, cols: int = 1024, seed: int = 0) -> Tensor:
    """(rows, cols) unit-variance values from `kind` (gaussian / laplace / uniform), no outliers."""
    if kind == "uniform":
        generator = torch.Generator().manual_seed(seed)
        return (torch.rand(rows, cols, generator=generator) * 2 - 1) * math.sqrt(3)
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {kind!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    return synthetic_tensor(kind, rows, cols, outliers=0, seed=seed)


@dataclass(frozen=True)
class MappingLesson:
    distribution: str
    block: int  # values sharing one absmax scale
    normalized: Tensor  # (n,) sample of value / its block's absmax, in [-1, 1]
    levels: dict[str, Tensor]  # format -> its levels at scale 1 (what normalized values round to)
    mse: dict[str, float]  # format -> MSE on the whole tensor
    sqnr_db: dict[str, float]

    @property
    def takeaway(self) -> str:
        nf4, int4 = self.mse["nf4"], self.mse["int4"]
        best = min(self.mse, key=self.mse.get)
        where = f"On {self.distribution} data in blocks of {self.block}"
        if nf4 < int4:
            line = f"{where}, NF4's MSE is {ratio(int4, nf4):.2f}x lower than int4's: "
            line += "its levels sit where the values crowd."
        else:
            line = f"{where}, int4's MSE is {ratio(nf4, int4):.2f}x lower than NF4's: "
            line += "evenly spread values want evenly spaced levels."
        return line + f" Best of the three: {best.upper()} ({self.sqnr_db[best]:.1f} dB SQNR)."


def mapping_lesson(distribution: str = "gaussian", block: int = 64, seed: int = 0) -> MappingLesson:
    """int4 (uniform) vs NF4 (normal quantiles) vs FP4 (float), all absmax-scaled per block of `block`."""
    x = distribution_tensor(distribution, seed=seed)  # (256, 1024)
    if 1024 % block:
        raise ValueError(f"block {block} does not divide the 1024-value rows; use a power of two up to 1024")
    schemes = {
        "int4": QuantScheme(4, "int", True, "group", block, scale_dtype="float32"),
        "nf4": QuantScheme(4, "nf4", True, "group", block, scale_dtype="float32"),
        "fp4": QuantScheme(4, "fp4", True, "group", block, scale_dtype="float32"),
    }
    errors, sqnr, levels = {}, {}, {}
    for name, scheme in schemes.items():
        xq = fake_quantize(x, scheme)
        errors[name], sqnr[name] = mse(x, xq), sqnr_db(x, xq)
        grid = formats.grid_values(scheme) / formats.grid_max(scheme)
        levels[name] = torch.unique(
            grid[grid.abs() <= 1.0 + 1e-6]
        )  # int4's -8 only by clipping; fp4's ±0 is one level
    blocks = x.reshape(-1, block)  # (n_blocks, block)
    normalized = blocks / blocks.abs().amax(dim=1, keepdim=True)
    return MappingLesson(distribution, block, sample_values(normalized, seed=seed), levels, errors, sqnr)


# -- 2. symmetric vs asymmetric ----------------------------------------------------------------------

SYMMETRY_DATA = {"relu": "ReLU outputs", "silu": "SiLU outputs", "gaussian": "Gaussian (two-sided)"}


def activation_like(kind: str, rows: int = 64, cols: int = 1024, seed: int = 0) -> Tensor:
    """ReLU(N(0,1)) (one-sided), SiLU(2 N(0,1)) (mostly one-sided), or N(0,1) (two-sided)."""
    z = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    if kind == "relu":
        return torch.relu(z)
    if kind == "silu":
        return nn.functional.silu(2 * z)
    if kind == "gaussian":
        return z
    raise ValueError(f"unknown data {kind!r}; choose one of {', '.join(SYMMETRY_DATA)}")


@dataclass(frozen=True)
class SymmetryLesson:
    data: str
    bits: int
    values: Tensor  # (n,) sample of the data
    levels: dict[str, Tensor]  # "symmetric" / "asymmetric" -> real-valued levels of the per-tensor grid
    mse: dict[str, float]
    codes_used: dict[str, int]  # distinct codes the data actually hits
    bits_sweep: dict[str, list[float]]  # MSE at 2..8 bits, for each variant
    sweep_bits: list[int]

    @property
    def takeaway(self) -> str:
        sym, asym = self.mse["symmetric"], self.mse["asymmetric"]
        used = f"symmetric uses {self.codes_used['symmetric']} of its {2**self.bits} codes"
        on = f"On {SYMMETRY_DATA[self.data]}"
        if asym < sym / 1.1:
            return (
                f"{on}, asymmetric int{self.bits} has {ratio(sym, asym):.1f}x lower MSE than symmetric: "
                f"{used}, asymmetric {self.codes_used['asymmetric']}."
            )
        if sym < asym / 1.1:
            return f"{on}, symmetric int{self.bits} has {ratio(asym, sym):.1f}x lower MSE ({used})."
        return (
            f"{on} the two are within 10% (MSE ratio {ratio(sym, asym):.2f}): two-sided data fills both "
            f"halves of the grid, so a zero point buys nothing ({used})."
        )


def symmetry_lesson(data: str = "relu", bits: int = 4, seed: int = 0) -> SymmetryLesson:
    """Per-tensor int grids with and without a zero point on the same activation-like tensor."""
    x = activation_like(data, seed=seed)  # (64, 1024)
    variants = {"symmetric": True, "asymmetric": False}
    levels, errors, used = {}, {}, {}
    for name, symmetric in variants.items():
        scheme = QuantScheme(bits, "int", symmetric, "tensor", scale_dtype="float32")
        qt = quantize(x, scheme)
        errors[name] = mse(x, qt.dequantize())
        used[name] = int(torch.unique(qt.codes).numel())
        scale, zero = choose_qparams(x, scheme)
        levels[name] = block_levels(scheme, float(scale), None if zero is None else float(zero))
    sweep_bits = list(range(2, 9))
    sweep = {
        name: [mse(x, fake_quantize(x, QuantScheme(b, "int", symmetric, "tensor"))) for b in sweep_bits]
        for name, symmetric in variants.items()
    }
    return SymmetryLesson(data, bits, sample_values(x, seed=seed), levels, errors, used, sweep, sweep_bits)
