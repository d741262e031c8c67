"""Any format a tensor can be quantized to, behind one name: our `QuantScheme` (a grid with scales:
int / NF4 / FP8 / MX / NVFP4 ...) or one of llama.cpp's GGUF block types (`engine.quant.gguf.GGUFType`:
Q4_0, Q4_K, ...). The sidebar's scheme is one of these; the operations every page needs dispatch here on
the type, so a page never asks which kind it holds.

    fmt = parse_format("Q4_K")        # or "mxfp4", "int4 g128 asym"
    w_hat = fake_quantize_any(w, fmt)
    check_fits(fmt, w.shape)          # ValueError in words when the rows do not fit its blocks
    bits = bits_per_weight_of(fmt, w.shape)
"""

from __future__ import annotations

import math
from functools import singledispatch

import torch
from torch import Tensor

from engine.quant import gguf
from engine.quant.gguf import GGUF_TYPES, GGUFType
from engine.quant.primitives import fake_quantize
from engine.quant.schemes import QuantScheme, bits_per_weight, check_shape, parse_label
from engine.quant.weighted import weighted_fake_quantize

Format = QuantScheme | GGUFType


def parse_format(label: str) -> Format:
    """A GGUF type name ("Q4_K", "gguf q4_k") or else a scheme label (`engine.quant.schemes.parse_label`)."""
    if isinstance(label, str):
        name = label.strip().upper().removeprefix("GGUF").strip()
        if name in GGUF_TYPES:
            return GGUF_TYPES[name]
    return parse_label(label)


def fake_quantize_any(x: Tensor, fmt: Format, importance: Tensor | None = None) -> Tensor:
    """x quantized to `fmt` and read back, same shape and dtype. `importance`: llama.cpp's importance
    matrix row for this weight ((in_features,) mean x_j^2, engine.methods.imatrix), which weights the
    scale search (GGUF types: llama.cpp's weighted quantizers; our schemes: engine.quant.weighted)."""
    return _fake(fmt, x, importance)


@singledispatch  # dispatches on its first argument: the format
def _fake(fmt, x: Tensor, importance: Tensor | None) -> Tensor:
    raise TypeError(f"not a quantization format: {fmt!r}")


@_fake.register
def _(fmt: QuantScheme, x: Tensor, importance: Tensor | None) -> Tensor:
    if importance is None:
        return fake_quantize(x, fmt)
    return weighted_fake_quantize(x, fmt, importance)


@_fake.register
def _(fmt: GGUFType, x: Tensor, importance: Tensor | None) -> Tensor:
    return gguf.fake_quantize(x, fmt, importance)


@singledispatch
def check_fits(fmt, shape: tuple[int, ...] | torch.Size) -> None:
    """ValueError, in words, when a tensor of `shape` cannot be stored in `fmt`."""
    raise TypeError(f"not a quantization format: {fmt!r}")


@check_fits.register
def _(fmt: QuantScheme, shape: tuple[int, ...] | torch.Size) -> None:
    check_shape(fmt, shape)


@check_fits.register
def _(fmt: GGUFType, shape: tuple[int, ...] | torch.Size) -> None:
    if len(shape) == 0 or math.prod(shape) == 0:
        raise ValueError(f"{fmt.name} quantizes rows of values; this tensor has none")
    fmt.check_row(shape[-1])


@singledispatch
def bits_per_weight_of(fmt, shape: tuple[int, ...] | torch.Size) -> float:
    """Exact bits per value of a tensor of `shape` in `fmt`, scales (and minimums) included."""
    raise TypeError(f"not a quantization format: {fmt!r}")


@bits_per_weight_of.register
def _(fmt: QuantScheme, shape: tuple[int, ...] | torch.Size) -> float:
    return bits_per_weight(fmt, shape[-1], math.prod(shape[:-1]))


@bits_per_weight_of.register
def _(fmt: GGUFType, shape: tuple[int, ...] | torch.Size) -> float:
    check_fits(fmt, shape)
    return fmt.bits_per_weight


def chunks_by_row(fmt: Format) -> bool:
    """Whether quantizing a tensor row chunk by row chunk gives the same values as all at once (every
    block lies within one row): False for one scale per tensor, 2-D tiles, QLoRA's double quantization and
    NVFP4's per-tensor second scale."""
    if isinstance(fmt, GGUFType):
        return True
    return not (fmt.granularity in ("tensor", "block") or fmt.double_quant or fmt.two_level)


__all__ = [
    "Format",
    "bits_per_weight_of",
    "check_fits",
    "chunks_by_row",
    "fake_quantize_any",
    "parse_format",
]
