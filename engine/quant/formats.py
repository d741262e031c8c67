"""Number formats as a scheme sees them: thin functions over the `elements` registry.

The grids themselves (int, the nf4 / fp4 codebooks, fp8), their bits, and the exact arithmetic of
encode / decode / fake live in `engine.quant.elements`, one class per family and one registry entry per
format; its docstring explains each family. This module keeps the scheme-level functions every caller
imports (`encode(x, scale, zero, scheme)`, `grid_max(scheme)`, `codebook("nf4")`, ...) and dispatches
each on `scheme.format` through `elements.element`, so no function here branches on the format family.

Everything is computed in float32. `fake` is the fused encode+decode used for error studies; it gives
bit-identical results to `decode(encode(...))`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.quant.elements import (
    ELEMENTS,
    FP4_RAW,
    LUT_BITS,
    NF4_VALUES,
    Codebook,
    FloatElement,
    element,
    int_range,
)
from engine.quant.schemes import QuantScheme

__all__ = [
    "FP4_RAW",
    "FP8_DTYPES",
    "LUT_BITS",
    "NF4_VALUES",
    "all_codes",
    "code_dtype",
    "codebook",
    "codebook_search",
    "decode",
    "encode",
    "fake",
    "grid_max",
    "grid_values",
    "int_range",
    "nearest_position",
]

# name -> torch float8 dtype of every registered FloatElement (a snapshot taken at import)
FP8_DTYPES = {name: fmt.dtype for name, fmt in ELEMENTS.items() if isinstance(fmt, FloatElement)}


def _codebook_element(fmt: str) -> Codebook:
    found = ELEMENTS.get(fmt) if isinstance(fmt, str) else None
    if not isinstance(found, Codebook):
        names = [name for name, e in ELEMENTS.items() if isinstance(e, Codebook)]
        known = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        raise ValueError(f"format {fmt!r} has no codebook; codebooks exist for {known}")
    return found


def codebook(fmt: str) -> Tensor:
    """The codebook values of nf4 / fp4 in bitsandbytes' index order, float32 in [-1, 1] (a copy)."""
    return _codebook(fmt).clone()


def _codebook(fmt: str) -> Tensor:
    return _codebook_element(fmt).table


def codebook_search(fmt: str) -> tuple[Tensor, Tensor, Tensor]:
    """(sorted values, midpoints between neighbours, sorted position -> code index) for nearest lookup."""
    return _codebook_element(fmt).search


def _codebook_lut(fmt: str) -> tuple[Tensor, Tensor]:
    """(base position, threshold midpoint or +inf) per bin of the nearest-entry lookup table."""
    return _codebook_element(fmt).lut


def nearest_position(s: Tensor, fmt: str) -> Tensor:
    """int32 position in the sorted codebook of the entry nearest to each s (s already in [-1, 1])."""
    return _codebook_element(fmt).nearest_position(s)


def grid_max(scheme: QuantScheme) -> float:
    """The value a block's absmax is mapped to (symmetric formats)."""
    return element(scheme.format).grid_max(scheme)


def code_dtype(scheme: QuantScheme) -> torch.dtype:
    """dtype of the unpacked codes held by a QTensor."""
    return element(scheme.format).code_dtype(scheme)


def grid_values(scheme: QuantScheme) -> Tensor:
    """Every representable value at scale 1 (zero point 0), sorted; for plots of the grid."""
    return element(scheme.format).grid_values(scheme)


def all_codes(scheme: QuantScheme) -> Tensor:
    """Every code of the format, as the dtype QTensor stores."""
    return element(scheme.format).all_codes(scheme)


# -- encode / decode ---------------------------------------------------------------------------------
# x: (..., block) float32; scale, zero: float32 broadcastable to x (one per block, or static).


def encode(
    x: Tensor,
    scale: Tensor,
    zero: Tensor | None,
    scheme: QuantScheme,
    out: Tensor | None = None,
    inv: Tensor | None = None,
) -> Tensor:
    """Codes of `x` (dtype `code_dtype(scheme)`, same shape as x), written to `out` when given.

    `inv` (optional): the multiplier applied before rounding when a scale rule computes it apart from
    1 / scale (the microscaling scale formats)."""
    return element(scheme.format).encode(x, scale, zero, scheme, out, inv)


def decode(codes: Tensor, scale: Tensor, zero: Tensor | None, scheme: QuantScheme) -> Tensor:
    """float32 values of `codes` (a new tensor)."""
    return element(scheme.format).decode(codes, scale, zero, scheme)


def fake(
    x: Tensor,
    scale: Tensor,
    zero: Tensor | None,
    scheme: QuantScheme,
    out: Tensor | None = None,
    inv: Tensor | None = None,
) -> Tensor:
    """decode(encode(x)) without materialising integer codes: the fast path for error studies.

    Writes float32 results to `out` when given (it must not alias x).
    """
    return element(scheme.format).fake(x, scale, zero, scheme, out, inv)
