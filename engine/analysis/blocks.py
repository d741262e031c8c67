"""What the grid page draws: one block of a tensor with its quantization levels, and schemes ranked.

`block_picture` quantizes the whole tensor (so the scales are exactly the ones the scheme would store)
and then cuts out one block — a row for per-channel, a group of a row for per-group, the whole tensor
for per-tensor — with the real values its codes map back to. `scheme_table` measures a list of schemes on
one tensor; schemes that cannot apply (a group size that does not divide the row) are reported, not
dropped silently.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.quant import formats
from engine.quant.metrics import error_summary
from engine.quant.primitives import block_size, fake_quantize, quantize
from engine.quant.schemes import QuantScheme, bits_per_weight

MAX_PLOTTED_VALUES = 4096  # a per-tensor "block" can be millions of values; plots get a seeded sample


@dataclass(frozen=True)
class BlockPicture:
    values: Tensor  # (n,) original values of the block (a seeded sample when the block is huge)
    dequantized: Tensor  # (n,) what those values come back as
    levels: Tensor  # (levels,) every real value this block's codes can represent, sorted
    clipped: Tensor  # (n,) bool: beyond the outermost level, so the error exceeds rounding
    scale: float  # the block's stored scale
    zero_point: float | None  # asymmetric int only: the integer zero point, or the float minimum (asym_min)
    description: str  # "row 3, group 2 of 18 (elements 64-95)"
    block_elements: int  # elements sharing this scale (before sampling)


def block_count(shape: tuple[int, ...], scheme: QuantScheme) -> tuple[int, int]:
    """(rows, blocks per row) that a user can pick from; validates the shape against the scheme."""
    size = block_size(scheme, shape)
    if scheme.granularity == "tensor":
        return 1, 1
    rows = math.prod(shape[:-1])
    return rows, shape[-1] // size


def block_levels(scheme: QuantScheme, scale: float, zero_point: float | None) -> Tensor:
    codes = formats.all_codes(scheme).view(1, -1)  # (1, levels): every code, as QTensor stores it
    zero = None if zero_point is None else torch.tensor([[zero_point]])
    levels = formats.decode(codes, torch.tensor([[scale]]), zero, scheme).view(-1)
    return torch.unique(levels)  # sorted; +0 and -0 collapse


def block_picture(
    x: Tensor, scheme: QuantScheme, row: int = 0, block: int = 0, seed: int = 0
) -> BlockPicture:
    x = x.detach().float().reshape(-1, x.shape[-1]) if x.dim() > 1 else x.detach().float().view(1, -1)
    rows, blocks = block_count(tuple(x.shape), scheme)
    if not (0 <= row < rows and 0 <= block < blocks):
        raise ValueError(f"row {row} / block {block} is outside this tensor ({rows} rows x {blocks} blocks)")
    qt = quantize(x, scheme)
    dequantized = qt.dequantize()
    size = block_size(scheme, tuple(x.shape))
    if scheme.granularity == "tensor":
        values, back = x.reshape(-1), dequantized.reshape(-1)
        description = f"the whole tensor ({x.numel():,} values share one scale)"
        flat_index = 0
    else:
        start = block * size
        values, back = x[row, start : start + size], dequantized[row, start : start + size]
        flat_index = row * blocks + block
        description = (
            f"row {row}" if scheme.granularity == "channel" else f"row {row}, group {block} of {blocks}"
        )
        description += f" (elements {start}-{start + size - 1})"
    scale = float(qt.block_scale.reshape(-1)[flat_index])  # both levels for NVFP4
    zero = None if qt.zero_point is None else float(qt.zero_point.float().reshape(-1)[flat_index])
    levels = block_levels(scheme, scale, zero)
    tolerance = 1e-6 * max(abs(float(levels[0])), abs(float(levels[-1])), 1e-12)
    clipped = (values < levels[0] - tolerance) | (values > levels[-1] + tolerance)
    if values.numel() > MAX_PLOTTED_VALUES:
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(values.numel(), generator=generator)[:MAX_PLOTTED_VALUES]
        keep = torch.cat([keep, values.abs().argmax().view(1)]).unique()  # never drop the extreme value
        values, back, clipped = values[keep], back[keep], clipped[keep]
    return BlockPicture(values, back, levels, clipped, scale, zero, description, size)


def mapping_curve(picture: BlockPicture, scheme: QuantScheme, points: int = 801) -> tuple[Tensor, Tensor]:
    """(x, q(x)) over the block's range plus a margin: the real -> code -> real staircase."""
    low = min(float(picture.values.min()), float(picture.levels[0]))
    high = max(float(picture.values.max()), float(picture.levels[-1]))
    margin = 0.15 * (high - low or 1.0)
    xs = torch.linspace(low - margin, high + margin, points)
    if scheme.is_microscaling:  # the block's scale is fixed: round onto its element grid
        return xs, formats.fake(xs, torch.tensor(picture.scale), None, scheme)
    static = dataclasses.replace(scheme, double_quant=False)  # scales are given, nothing to compress
    zero = None if picture.zero_point is None else torch.tensor(picture.zero_point)
    return xs, fake_quantize(xs, static, scale=torch.tensor(picture.scale), zero_point=zero)


def standard_schemes() -> list[QuantScheme]:
    """The comparison set of the grid page: int8/4/3/2 x sym/asym x tensor/channel/g32/g64/g128, NF4,
    bitsandbytes' FP4, FP8, and the microscaling formats MXFP4, NVFP4, MXFP6 (E2M3) and MXFP8 (E4M3)."""
    schemes = []
    for bits in (8, 4, 3, 2):
        for symmetric in (True, False):
            schemes.append(QuantScheme(bits, "int", symmetric, "tensor"))
            schemes.append(QuantScheme(bits, "int", symmetric, "channel"))
            for group in (32, 64, 128):
                schemes.append(QuantScheme(bits, "int", symmetric, "group", group))
        if bits in (4, 3):  # llama.cpp's Q4_1 / Q3-style float-minimum grids
            for group in (32, 64):
                schemes.append(QuantScheme(bits, "int", False, "group", group, zero_kind="float"))
    for fmt in ("nf4", "fp4"):
        schemes.append(QuantScheme(4, fmt, True, "group", 64, scale_dtype="float32"))
        schemes.append(QuantScheme(4, fmt, True, "group", 64, scale_dtype="float32", double_quant=True))
    schemes.append(QuantScheme(8, "fp8_e4m3", True, "tensor", scale_dtype="float32"))
    schemes.append(QuantScheme(8, "fp8_e4m3", True, "channel", scale_dtype="float32"))
    schemes.append(QuantScheme(8, "fp8_e5m2", True, "channel", scale_dtype="float32"))
    schemes += [QuantScheme.from_label(label) for label in ("mxfp4", "nvfp4", "mxfp6_e2m3", "mxfp8_e4m3")]
    return schemes


def scheme_table(x: Tensor, schemes: list[QuantScheme]) -> list[dict]:
    """One row per scheme: error metrics on x and the effective bits per weight (scales included)."""
    x = x.detach().float()
    rows = []
    for scheme in schemes:
        row = {"scheme": scheme.label, "format": scheme.format, "bits": scheme.bits}
        row["granularity"] = f"g{scheme.group_size}" if scheme.granularity == "group" else scheme.granularity
        try:
            shape = tuple(x.shape) if x.dim() > 1 else (1, x.numel())
            row["bits/weight"] = bits_per_weight(scheme, shape[-1], math.prod(shape[:-1]))
            row.update(error_summary(x, fake_quantize(x, scheme)))
            row["note"] = ""
        except ValueError as exc:
            row.update({"bits/weight": math.nan, "mse": math.nan, "sqnr_db": math.nan})
            row.update({"max_abs_err": math.nan, "relative_error": math.nan, "note": str(exc)})
        rows.append(row)
    return rows
