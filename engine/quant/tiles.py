"""How each granularity cuts a tensor into blocks that share a scale, and the 2-D blocks ("block" granularity,
tiles as DeepSeek-V3's FP8 weights). `blocks(x, scheme)` is the (n_blocks, block_size) view the primitives
reduce along its last dim (see engine.quant.primitives), `unblocks` puts a result back in x's shape.

A weight (out, in) gets one scale per `size` x `size` tile (DeepSeek-V3's `weight_quant`, torchao's
`PerBlock((128, 128))`, vLLM's and llm-compressor's "FP8 block"); activations get one per 1 x `size` group
of each token (DeepSeek-V3's `act_quant`). Tensors with more than 2 dims flatten their leading dims into rows.

The primitives reuse their per-row path on a tiled view: `to_tiles` lays every tile out as one row of a
(tiles, height * width) float32 tensor and `from_tiles` puts rows back in place. Edge tiles are partial when
`size` does not divide a dim (SmolLM2's rows of 576 = 4.5 x 128): they are padded by repeating the tile's last
row and column, which leaves its absmax, minimum and maximum (so its scale and zero point) unchanged, and the
padding is cut off again.

Codes follow DeepSeek-V3's and torchao's order of operations: x is divided by the tile's float32 scale
(absmax / 448 for fp8_e4m3) and then rounded to the element (`divided`), where the per-row path multiplies
by the reciprocal; codes and scales are bit-identical to torchao's `_choose_scale_float8` /
`_quantize_affine_float8` with block size (128, 128) and (1, 128).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from engine.quant import formats
from engine.quant.shapes import check_shape, tile_counts

_ONE = torch.ones(())


def block_size(scheme, shape: tuple[int, ...] | torch.Size) -> int:
    """Elements per block for a tensor of `shape` (validates that the shape fits the scheme)."""
    check_shape(scheme, shape)
    if scheme.granularity == "tensor":
        return math.prod(shape)
    if scheme.granularity == "channel":
        return shape[-1]
    if scheme.granularity == "block":
        return scheme.group_size**2
    return scheme.group_size


def scale_shape(scheme, shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    """Shape of the stored scale: one entry per block, laid out like the tensor's rows (tiles: a grid)."""
    if scheme.granularity == "tensor":
        return (1,) * len(shape)
    if scheme.granularity == "block":
        check_shape(scheme, shape)
        return tile_counts(shape, scheme.group_size)
    return (*shape[:-1], shape[-1] // block_size(scheme, shape))


def blocks(x: Tensor, scheme, tokens: bool = False) -> Tensor:
    """(n_blocks, block_size) float32 view of x (a copy for other dtypes and for tiles); `tokens`: x's rows
    are activations, which a block scheme cuts in 1 x g groups."""
    if scheme.granularity == "block":
        check_shape(scheme, x.shape)
        return to_tiles(x, *tile_shape(scheme, tokens))
    return x.float().reshape(-1, block_size(scheme, x.shape))


def unblocks(out: Tensor, x: Tensor, scheme, tokens: bool = False) -> Tensor:
    """The (n_blocks, block_size) result of `blocks(x)` put back in x's shape."""
    if scheme.granularity == "block":
        return from_tiles(out, x.shape, *tile_shape(scheme, tokens))
    return out.view(x.shape)


def to_tiles(x: Tensor, height: int, width: int) -> Tensor:
    """(tiles, height * width) float32 copy of x seen as (rows, last dim), tiles in row-major order,
    partial edge tiles padded with their own last row / column."""
    rows, cols = math.prod(x.shape[:-1]), x.shape[-1]
    tile_rows, tile_cols = math.ceil(rows / height), math.ceil(cols / width)
    x2 = x.float().reshape(rows, cols)
    pad_rows, pad_cols = tile_rows * height - rows, tile_cols * width - cols
    if pad_rows or pad_cols:
        x2 = torch.nn.functional.pad(x2.unsqueeze(0), (0, pad_cols, 0, pad_rows), mode="replicate")[0]
    tiles = x2.view(tile_rows, height, tile_cols, width).transpose(1, 2)
    return tiles.reshape(tile_rows * tile_cols, height * width)


def from_tiles(t: Tensor, shape: tuple[int, ...] | torch.Size, height: int, width: int) -> Tensor:
    """Inverse of `to_tiles`: the (tiles, height * width) rows put back as a tensor of `shape`."""
    rows, cols = math.prod(shape[:-1]), shape[-1]
    tile_rows, tile_cols = math.ceil(rows / height), math.ceil(cols / width)
    whole = t.view(tile_rows, tile_cols, height, width).transpose(1, 2)
    whole = whole.reshape(tile_rows * height, tile_cols * width)
    return whole[:rows, :cols].reshape(shape)


def tile_shape(scheme, tokens: bool = False) -> tuple[int, int]:
    """(height, width) of a block scheme's tiles: g x g on weights, 1 x g on tokens (activations)."""
    return (1 if tokens else scheme.group_size), scheme.group_size


def runner(kernel, scheme):
    """formats.encode / formats.fake as a scheme's granularity runs it: tiles divide by the scale first,
    except under a float minimum (x - min is what gets scaled there)."""
    return divided(kernel) if scheme.granularity == "block" and scheme.zero_kind != "float" else kernel


def divided(kernel):
    """formats.encode / formats.fake with x divided by its scale first (DeepSeek-V3's, torchao's order)."""

    def run(x: Tensor, scale: Tensor, zero: Tensor | None, scheme, out: Tensor, inv: Tensor | None = None):
        return kernel(x / scale, scale, zero, scheme, out=out, inv=_ONE)

    return run


def decode(codes: Tensor, scale: Tensor, zero: Tensor | None, scheme) -> Tensor:
    """float32 values of a block scheme's codes (x's shape) from (tile rows, tile columns) scales."""
    rows, cols = math.prod(codes.shape[:-1]), codes.shape[-1]
    size = scheme.group_size

    def spread(t: Tensor) -> Tensor:  # one value per element: each tile's entry repeated over the tile
        full = t.float().repeat_interleave(size, dim=0).repeat_interleave(size, dim=1)
        return full[:rows, :cols]

    values = formats.decode(
        codes.reshape(rows, cols), spread(scale), None if zero is None else spread(zero), scheme
    )
    return values.view(codes.shape)
