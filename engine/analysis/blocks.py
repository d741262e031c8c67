"""What the grid page draws: one block of a tensor with its quantization levels, and schemes ranked.

A format here is a `QuantScheme` or a llama.cpp block type (`engine.quant.gguf.GGUFType`); the functions
below take either and dispatch on the type.

`block_picture` quantizes the whole tensor (so the scales are exactly the ones the scheme would store)
and then cuts out one block — a row for per-channel, a group of a row for per-group, one tile for 2-D
blocks (picked as tile row and tile column), the whole tensor for per-tensor — with the real values its codes map back to. For a GGUF type the block is one llama.cpp
block (32 values) or one sub-block of a k-quant's super-block of 256, its levels decoded from the packed
bytes (engine.analysis.packed_blocks). `microscaling_view` adds what a two-level format has on top: the
scale every block got against the scale format's own grid, what saturated, and one block's bytes.
`scheme_table` measures a list of formats on one tensor; those that cannot apply (a group size that does
not divide the row, a k-quant on rows that are not a multiple of 256) are reported, not dropped silently.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.analysis.packed_blocks import DecodedBlock, gguf_block, mx_block, sub_block_size
from engine.quant import formats, gguf
from engine.quant.gguf import GGUFType
from engine.quant.metrics import error_summary
from engine.quant.primitives import QTensor, block_size, fake_quantize, quantize
from engine.quant.schemes import QuantScheme
from engine.quant.shapes import tile_counts
from engine.quant.weight_formats import Format, bits_per_weight_of, fake_quantize_any

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


def block_count(shape: tuple[int, ...], scheme: Format) -> tuple[int, int]:
    """(rows, blocks per row) that a user can pick from; validates the shape against the scheme.
    A GGUF type's blocks are its scales' blocks: a k-quant's sub-blocks of 16 or 32; 2-D blocks are tiles,
    so this is (tile rows, tiles per tile row)."""
    if isinstance(scheme, GGUFType):
        scheme.check_row(shape[-1])
        return math.prod(shape[:-1]), shape[-1] // sub_block_size(scheme)
    size = block_size(scheme, shape)
    if scheme.granularity == "tensor":
        return 1, 1
    if scheme.granularity == "block":
        return tile_counts(shape, scheme.group_size)
    rows = math.prod(shape[:-1])
    return rows, shape[-1] // size


def block_levels(scheme: QuantScheme, scale: float, zero_point: float | None) -> Tensor:
    codes = formats.all_codes(scheme).view(1, -1)  # (1, levels): every code, as QTensor stores it
    zero = None if zero_point is None else torch.tensor([[zero_point]])
    levels = formats.decode(codes, torch.tensor([[scale]]), zero, scheme).view(-1)
    return torch.unique(levels)  # sorted; +0 and -0 collapse


def _rows(x: Tensor) -> Tensor:
    """x as (rows, row length) float32."""
    return x.detach().float().reshape(-1, x.shape[-1]) if x.dim() > 1 else x.detach().float().view(1, -1)


def _check_pick(x: Tensor, scheme: Format, row: int, block: int) -> int:
    """Blocks per row, after checking that (row, block) is inside x."""
    rows, blocks = block_count(tuple(x.shape), scheme)
    if not (0 <= row < rows and 0 <= block < blocks):
        raise ValueError(f"row {row} / block {block} is outside this tensor ({rows} rows x {blocks} blocks)")
    return blocks


def _clipped(values: Tensor, levels: Tensor) -> Tensor:
    tolerance = 1e-6 * max(abs(float(levels[0])), abs(float(levels[-1])), 1e-12)
    return (values < levels[0] - tolerance) | (values > levels[-1] + tolerance)


def block_picture(x: Tensor, scheme: Format, row: int = 0, block: int = 0, seed: int = 0) -> BlockPicture:
    if isinstance(scheme, GGUFType):
        return gguf_view(x, scheme, row, block).picture
    x = _rows(x)
    blocks = _check_pick(x, scheme, row, block)
    qt = quantize(x, scheme)
    dequantized = qt.dequantize()
    size = block_size(scheme, tuple(x.shape))
    if scheme.granularity == "block":
        values, back, description, size = _tile(x, dequantized, scheme.group_size, row, block)
        flat_index = row * blocks + block
    elif scheme.granularity == "tensor":
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
    clipped = _clipped(values, levels)
    if values.numel() > MAX_PLOTTED_VALUES:
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(values.numel(), generator=generator)[:MAX_PLOTTED_VALUES]
        keep = torch.cat([keep, values.abs().argmax().view(1)]).unique()  # never drop the extreme value
        values, back, clipped = values[keep], back[keep], clipped[keep]
    return BlockPicture(values, back, levels, clipped, scale, zero, description, size)


def _tile(x: Tensor, dequantized: Tensor, g: int, row: int, col: int) -> tuple[Tensor, Tensor, str, int]:
    """(values, dequantized, description, elements) of tile (row, col) of a block scheme, partial at edges."""
    rows, cols = slice(row * g, (row + 1) * g), slice(col * g, (col + 1) * g)
    values, back = x[rows, cols], dequantized[rows, cols]
    r0, c0 = row * g, col * g
    description = (
        f"block ({row}, {col}): rows {r0}-{r0 + values.shape[0] - 1}, columns {c0}-{c0 + values.shape[1] - 1}"
    )
    return values.reshape(-1), back.reshape(-1), description, values.numel()


def mapping_curve(picture: BlockPicture, scheme: Format, points: int = 801) -> tuple[Tensor, Tensor]:
    """(x, q(x)) over the block's range plus a margin: the real -> code -> real staircase."""
    low = min(float(picture.values.min()), float(picture.levels[0]))
    high = max(float(picture.values.max()), float(picture.levels[-1]))
    margin = 0.15 * (high - low or 1.0)
    xs = torch.linspace(low - margin, high + margin, points)
    if isinstance(scheme, GGUFType):  # the block's scale and minimum are fixed: the nearest level
        midpoints = (picture.levels[1:] + picture.levels[:-1]) / 2
        return xs, picture.levels[torch.bucketize(xs, midpoints)]
    if scheme.is_microscaling:  # the block's scale is fixed: round onto its element grid
        return xs, formats.fake(xs, torch.tensor(picture.scale), None, scheme)
    static = dataclasses.replace(scheme, double_quant=False)  # scales are given, nothing to compress
    zero = None if picture.zero_point is None else torch.tensor(picture.zero_point)
    return xs, fake_quantize(xs, static, scale=torch.tensor(picture.scale), zero_point=zero)


def standard_schemes() -> list[Format]:
    """The comparison set of the grid page: int8/4/3/2 x sym/asym x tensor/channel/g32/g64/g128, NF4,
    bitsandbytes' FP4, FP8 (per tensor, per channel, DeepSeek-V3's 128 x 128 blocks), the microscaling
    formats MXFP4, NVFP4, MXFP6 (E2M3) and MXFP8 (E4M3), and llama.cpp's block types (Q8_0 ... Q5_1,
    Q2_K ... Q6_K)."""
    schemes: list[Format] = []
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
    schemes.append(QuantScheme.from_label("fp8_e4m3 block128"))  # DeepSeek-V3's 128 x 128 blocks
    schemes += [QuantScheme.from_label(label) for label in ("mxfp4", "nvfp4", "mxfp6_e2m3", "mxfp8_e4m3")]
    schemes += [*gguf.LEGACY, *gguf.K_QUANTS]
    return schemes


def gguf_fallback_note(t: GGUFType, row_length: int) -> str:
    """What llama.cpp does with rows that t's blocks do not fit (its per-tensor fallback), in a sentence."""
    from engine.methods.gguf import tensor_type  # engine.methods loads transformers: only when needed

    try:
        used = tensor_type(t, row_length)
    except ValueError:
        return "llama.cpp has no fallback for this type and refuses such a tensor."
    if used is None:
        return "llama.cpp stores such a tensor in 16-bit floats (F16) instead."
    return f"llama.cpp stores such a tensor as {used.name} instead."


def _table_columns(scheme: Format) -> dict:
    if isinstance(scheme, GGUFType):
        kind = "GGUF k-quant" if scheme.is_k_quant else "GGUF legacy"
        return {"scheme": scheme.label, "format": kind, "bits": None, "granularity": f"b{scheme.block_size}"}
    grain = {"group": f"g{scheme.group_size}", "block": f"block{scheme.group_size}"}
    granularity = grain.get(scheme.granularity, scheme.granularity)
    return {"scheme": scheme.label, "format": scheme.format, "bits": scheme.bits, "granularity": granularity}


def scheme_table(x: Tensor, schemes: list[Format]) -> list[dict]:
    """One row per scheme or GGUF type: error metrics on x and the effective bits per weight (scales
    included); a row with NaN metrics and a note for one that does not fit x's rows."""
    x = x.detach().float()
    shape = tuple(x.shape) if x.dim() > 1 else (1, x.numel())
    rows = []
    for scheme in schemes:
        row = _table_columns(scheme)
        try:
            row["bits/weight"] = bits_per_weight_of(scheme, shape)
            row.update(error_summary(x, fake_quantize_any(x, scheme)))
            row["note"] = ""
        except ValueError as exc:
            note = str(exc)
            if isinstance(scheme, GGUFType):
                note += " " + gguf_fallback_note(scheme, shape[-1])
            row.update({"bits/weight": math.nan, "mse": math.nan, "sqnr_db": math.nan})
            row.update({"max_abs_err": math.nan, "relative_error": math.nan, "note": note})
        rows.append(row)
    return rows


# -- GGUF blocks and microscaling scales --------------------------------------------------------------


@dataclass(frozen=True)
class GGUFView:
    picture: BlockPicture  # the picked (sub-)block: values, levels decoded from the packed bytes
    packed: DecodedBlock  # the whole llama.cpp block that holds it (a k-quant's super-block of 256)
    sub: int  # which of the block's sub-blocks was picked (0 for the legacy types)


def gguf_view(x: Tensor, t: GGUFType, row: int = 0, block: int = 0) -> GGUFView:
    """Block `block` of row `row` counted in t's scale blocks (block_count), packed and read back."""
    x = _rows(x)
    blocks = _check_pick(x, t, row, block)
    sub_size = sub_block_size(t)
    per_block = t.block_size // sub_size
    index, sub = divmod(block, per_block)
    start = index * t.block_size
    packed = gguf_block(x[row, start : start + t.block_size], t)
    first = start + sub * sub_size
    values = x[row, first : first + sub_size]
    back = packed.values()[sub * sub_size : (sub + 1) * sub_size]
    levels = packed.levels(sub)
    where = f"elements {first}-{first + sub_size - 1}"
    if per_block == 1:
        description = f"row {row}, block {index} of {blocks} ({where})"
    else:
        description = f"row {row}, super-block {index} of {blocks // per_block}, sub-block {sub} of {per_block} ({where})"
    offset = -float(packed.minimum[sub]) if bool(packed.minimum.any()) else None
    picture = BlockPicture(
        values,
        back,
        levels,
        _clipped(values, levels),
        float(packed.scale[sub]),
        offset,
        description,
        sub_size,
    )
    return GGUFView(picture, packed, sub)


MAX_LAID_OUT = 256  # values; a per-tensor or per-channel "block" is too long to show byte by byte


@dataclass(frozen=True)
class ScaleCensus:
    """The scales a set of blocks got, against every scale the scale format can store."""

    scales: Tensor  # (k,) float32, ascending: the distinct scales the blocks' codes are multiplied by
    counts: Tensor  # (k,) int64: how many blocks got each
    grid: Tensor  # float32, ascending: every storable scale from the smallest used to the largest used
    steps_per_doubling: int  # storable scales per factor of two: 1 for E8M0, 8 for E4M3
    tensor_scale: float | None  # NVFP4's float32 second level (scales and grid include it)


@dataclass(frozen=True)
class MicroscalingView:
    tensor_scales: ScaleCensus  # every block of the tensor
    row_scales: ScaleCensus  # the blocks of the picked row
    picked_scale: float  # the picked block's scale (both levels for NVFP4)
    saturated: int  # values above the element's largest value after scaling, whole tensor
    values: int  # values in the tensor
    block_saturated: int  # the same in the picked block
    block_values: int
    packed: DecodedBlock | None  # the picked block's bytes; None when a block is over MAX_LAID_OUT values


def _census(stored: Tensor, qt: QTensor) -> ScaleCensus:
    """Census of (n,) stored block scales (the 8-bit scale dtype) of a microscaling QTensor."""
    dtype = qt.scheme.torch_scale_dtype
    every = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).float()
    every = torch.unique(every[torch.isfinite(every) & (every > 0)])  # what one scale byte can hold
    used, counts = torch.unique(stored.float(), return_counts=True)
    steps = int(((every >= 1) & (every < 2)).sum())
    grid = every[(every >= used[0]) & (every <= used[-1])]
    if qt.tensor_scale is None:
        return ScaleCensus(used, counts, grid, steps, None)
    ts = qt.tensor_scale.float()
    return ScaleCensus(ts * used, counts, ts * grid, steps, float(ts))


def microscaling_view(x: Tensor, scheme: QuantScheme, row: int = 0, block: int = 0) -> MicroscalingView:
    """The second level of a microscaling scheme on x: block scales, saturation, one block's bytes."""
    if not scheme.is_microscaling:
        raise ValueError(f"{scheme.label} has no microscaling block scales.")
    x = _rows(x)
    blocks = _check_pick(x, scheme, row, block)
    qt = quantize(x, scheme)
    index = 0 if scheme.granularity == "tensor" else row * blocks + block
    effective = qt.block_scale.reshape(-1)  # (n_blocks,)
    size = block_size(scheme, tuple(x.shape))
    over = x.reshape(-1, size).abs() > formats.grid_max(scheme) * effective.unsqueeze(-1)  # (n_blocks, size)
    stored = qt.scale.reshape(-1)
    row_stored = stored if scheme.granularity == "tensor" else stored.view(x.shape[0], -1)[row]
    return MicroscalingView(
        tensor_scales=_census(stored, qt),
        row_scales=_census(row_stored, qt),
        picked_scale=float(effective[index]),
        saturated=int(over.sum()),
        values=x.numel(),
        block_saturated=int(over[index].sum()),
        block_values=size,
        packed=mx_block(qt, index) if size <= MAX_LAID_OUT else None,
    )
