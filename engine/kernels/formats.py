"""The packed formats: which quantization schemes a real kernel runs, one small class per format.

A format says what is multiplied (W4A16: int4 group-wise weights, 16-bit activations; W8A16: int8
per-channel weights; W8A8: those weights and int8 per-token activations), never how the bits are stored
(engine.kernels.layouts) or which kernel multiplies them (engine.kernels.dispatch). Each format knows
which schemes it accepts, how to get its plain codes (engine.kernels.reference's forms) from our
quantized tensors or from a method's kept integer codes, and its reference matmul.

Adding a format is adding a class here and listing it in `PACKED_FORMATS`, before any format that would
also accept its schemes.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from engine.kernels import reference
from engine.quant.primitives import QTensor
from engine.quant.schemes import QuantScheme

REFUSAL_HINT = (
    "packed kernels run int4 group-wise weights (sym or asym), int8 per-channel symmetric weights, "
    "and those int8 weights with int8 per-token activations; use RTNConfig (fake quantization) to "
    "study other schemes"
)


class PackedFormat:
    """What a packed layer multiplies; subclasses fill in the name and the four steps."""

    name: ClassVar[str]
    grouped: ClassVar[bool] = False  # True: the layer keeps a group_size (scales per group of inputs)

    def accepts(self, weights: QuantScheme, activations: QuantScheme | None) -> bool:
        raise NotImplementedError

    def from_qtensor(self, qt: QTensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(codes, scales, zeros or None) in reference.py's plain form, from one of our QTensors."""
        raise NotImplementedError

    def from_int_codes(self, c) -> tuple[Tensor, Tensor, Tensor | None]:
        """The same, from engine.models.export.IntCodes (unsigned codes, integer zero points)."""
        raise NotImplementedError

    def dequantize(self, parts: dict[str, Tensor], group_size: int | None) -> Tensor:
        """(out, in) float32 weights from the plain parts ({"codes", "scales"[, "zeros"]})."""
        raise NotImplementedError

    def reference_matmul(
        self, rows: Tensor, parts: dict[str, Tensor], group_size: int | None, bias: Tensor | None
    ) -> Tensor:
        """rows (tokens, in) -> (tokens, out) in rows' dtype: dequantize, then one float matmul."""
        raise NotImplementedError


class W4A16(PackedFormat):
    """int4 group-wise weights (sym or asym), 16-bit activations: w = (code - 8) * scale + zero."""

    name = "W4A16"
    grouped = True

    def accepts(self, weights, activations) -> bool:
        return weights.bits == 4 and weights.granularity == "group" and activations is None

    def from_qtensor(self, qt):
        return reference.int4_from_qtensor(qt)

    def from_int_codes(self, c):
        # unsigned codes with integer zeros -> the kernels' (code - 8) * s + z form
        zeros = (reference.INT4_MIDPOINT - c.zeros.float()) * c.scales
        return c.codes.to(torch.uint8), c.scales, zeros

    def dequantize(self, parts, group_size):
        return reference.dequantize_int4(parts["codes"], parts["scales"], parts["zeros"], group_size)

    def reference_matmul(self, rows, parts, group_size, bias):
        return reference.int4_matmul(rows, **parts, group_size=group_size, bias=bias)


class W8A16(PackedFormat):
    """int8 per-channel symmetric weights, 16-bit activations: w = code * scale."""

    name = "W8A16"

    def accepts(self, weights, activations) -> bool:
        return (
            weights.bits == 8
            and weights.granularity == "channel"
            and weights.symmetric
            and activations is None
        )

    def from_qtensor(self, qt):
        codes, scales = reference.int8_from_qtensor(qt)
        return codes, scales, None

    def from_int_codes(self, c):
        # symmetric int8: int_codes offset the codes by 128
        return (c.codes - c.zeros).to(torch.int8), c.scales.reshape(-1), None

    def dequantize(self, parts, group_size):
        return reference.dequantize_int8(parts["codes"], parts["scales"])

    def reference_matmul(self, rows, parts, group_size, bias):
        return reference.int8_matmul(rows, **parts, bias=bias)


class W8A8(W8A16):
    """W8A16's weights with int8 per-token symmetric activations, quantized at run time."""

    name = "W8A8"

    def accepts(self, weights, activations) -> bool:
        return (
            W8A16().accepts(weights, None)
            and activations is not None
            and activations.is_int
            and activations.bits == 8
            and activations.symmetric
            and activations.granularity == "channel"
            and activations.clip_ratio == 1.0
        )

    def reference_matmul(self, rows, parts, group_size, bias):
        return reference.w8a8_matmul(rows, **parts, bias=bias)


PACKED_FORMATS: tuple[PackedFormat, ...] = (W4A16(), W8A16(), W8A8())
FORMATS = tuple(f.name for f in PACKED_FORMATS)  # the names the Speed page uses
_BY_NAME = {f.name: f for f in PACKED_FORMATS}


def format_named(name: str) -> PackedFormat:
    if name not in _BY_NAME:
        raise ValueError(f"unknown packed format {name!r}; known: {', '.join(FORMATS)}")
    return _BY_NAME[name]


def packed_format(weights: QuantScheme, activations: QuantScheme | None = None) -> str:
    """W4A16, W8A16 or W8A8 for schemes our kernels run; ValueError saying what would, otherwise."""
    if not weights.is_int or weights.double_quant or weights.zero_kind != "int":
        raise ValueError(f"weights {weights.label}: {REFUSAL_HINT}")
    for fmt in PACKED_FORMATS:
        if fmt.accepts(weights, activations):
            return fmt.name
    acts = f" with activations {activations.label}" if activations else ""
    raise ValueError(f"weights {weights.label}{acts}: {REFUSAL_HINT}")
