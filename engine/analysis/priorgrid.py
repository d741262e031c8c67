"""Prior-grid detection: does a weight already sit on a low-bit grid?

Weights that were quantized before (a GGUF, GPTQ, AWQ or bitsandbytes checkpoint dequantized back to
floats) look like full-precision tensors but re-quantizing them is nearly free, which would flatter
every method on the dashboard. We look at blocks of g consecutive input-dim elements (32, 64, 128 and
the whole row) and ask two questions per block:

- distinct values: at most 16 in every block of g means a 4-bit (or smaller) grid with one scale per g,
  whatever the format (int, NF4, FP4);
- affine fit: do the block's values fit d*q + m with integer q? d is the smallest gap between distinct
  values, divided by k = 1..4 in case adjacent levels are missing; levels = span / d + 1. This finds
  8-bit grids (llama.cpp Q8_0, int8 per channel) where counting cannot: 32 values never exceed 256 levels.

Speed: both checks need sorted blocks, so we first run them on an evenly spaced sample of at most 128
rows; a full-precision tensor fails there, cheaply, and only a candidate grid is confirmed on every block
(one full sort). For undetected tensors `max_distinct_per_block` is therefore a lower bound from the
sample; for a detected grid it is exact at the detected block size. Tolerances: an affine block fits
when every value is within 0.1 d of the grid (fp16-stored dequantized weights still fit), and a grid
is affine when at least 99% of blocks fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from engine.quant import formats
from engine.quant.schemes import CODEBOOK_FORMATS

TRIED_GROUP_SIZES = (32, 64, 128)
SAMPLE_ROWS = 128
AFFINE_TOLERANCE = 0.1  # in units of the grid step d
AFFINE_FRACTION = 0.99
CODEBOOK_TOLERANCE = 1e-3  # |value / absmax - nearest codebook entry|
MAX_LEVELS = 256  # an affine fit with more levels than 8 bits is not a low-bit grid


@dataclass(frozen=True)
class PriorGrid:
    detected: bool
    bits: int | None  # grid width, when detected
    group_size: int | None  # largest block size tried that holds the grid; in_features means per row
    max_distinct_per_block: dict[int, int]  # block size -> most distinct values in one block
    description: str
    affine: bool = False  # the blocks fit d*q + m (int grids); False for codebooks such as NF4
    codebook: str | None = None  # "nf4" or "fp4" when the values match a bitsandbytes codebook
    levels: int | None = field(default=None)  # most grid levels one block spans (affine grids)


@dataclass(frozen=True)
class _BlockStats:
    max_distinct: int
    affine_fraction: float  # of blocks with at least two distinct values
    max_levels: int  # over blocks that fit an affine grid


def _block_stats(rows: Tensor, g: int, affine: bool = True) -> _BlockStats:
    """Distinct-value count and (optionally) affine fit of every block of g elements in (rows, in_features)."""
    values, _ = torch.sort(rows.reshape(-1, g), dim=-1)  # (blocks, g)
    gaps = values[:, 1:] - values[:, :-1]  # (blocks, g - 1)
    distinct = (gaps > 0).sum(dim=-1) + 1  # (blocks,)
    if not affine:
        return _BlockStats(int(distinct.max()), 0.0, 0)
    several = distinct > 1
    n_several = int(several.sum())
    if n_several == 0:
        return _BlockStats(1, 1.0, 1)
    values, gaps = values[several], gaps[several]  # only blocks with a step to measure
    offsets = values - values[:, :1]  # (blocks, g)
    span = offsets[:, -1:]  # (blocks, 1)
    smallest_gap = gaps.masked_fill(gaps <= 0, math.inf).amin(dim=-1, keepdim=True)  # (blocks, 1)
    levels = torch.zeros(values.shape[0], dtype=torch.int64)  # 0 = no fit yet
    todo = torch.arange(values.shape[0])
    for k in (1, 2, 3, 4):  # the smallest gap may skip k - 1 missing levels
        ratio = span[todo] / smallest_gap[todo]  # (todo, 1)
        n_steps = torch.round(ratio * k)
        sane = (n_steps >= 1) & (n_steps <= MAX_LEVELS - 1)
        steps = offsets[todo] * (n_steps / span[todo])  # in units of d = span / n_steps
        ok = ((steps - steps.round()).abs().amax(dim=-1, keepdim=True) <= AFFINE_TOLERANCE) & sane
        ok = ok.squeeze(1)
        levels[todo[ok]] = n_steps[ok].squeeze(1).long() + 1
        hopeless = (ratio * (k + 1) > MAX_LEVELS - 0.5).squeeze(1)  # n only grows with k
        todo = todo[~ok & ~hopeless]
        if todo.numel() == 0:
            break
    fits = levels > 0
    fraction = float(fits.sum()) / n_several
    max_levels = int(levels.max()) if bool(fits.any()) else 0
    return _BlockStats(int(distinct.max()), fraction, max_levels)


def _codebook_match(rows: Tensor, g: int) -> str | None:
    """'nf4' / 'fp4' if every block of g, divided by its absmax, lands on that codebook."""
    blocks = rows.reshape(-1, g)  # (blocks, g)
    absmax = blocks.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    normalized = (blocks / absmax).clamp_(-1, 1)
    for name in CODEBOOK_FORMATS:
        values, _, _ = formats.codebook_search(name)
        nearest = values[formats.nearest_position(normalized, name).long()]
        if float((normalized - nearest).abs().max()) <= CODEBOOK_TOLERANCE:
            return name
    return None


def _sample_rows(rows: Tensor) -> Tensor:
    if rows.shape[0] <= SAMPLE_ROWS:
        return rows
    index = torch.linspace(0, rows.shape[0] - 1, SAMPLE_ROWS).round().long()
    return rows.index_select(0, index)


def _where(g: int, in_features: int) -> str:
    return "every row" if g == in_features else f"every block of {g}"


def _format_hint(bits: int, g: int, in_features: int, affine: bool, codebook: str | None) -> str:
    if codebook is not None:
        return f"matches the bitsandbytes {codebook.upper()} codebook"
    if not affine:
        return "not an affine grid; some other codebook"
    if g == 32 and bits in (4, 8):
        return f"values fit d*q + m per block, consistent with llama.cpp Q{bits}_0 / Q{bits}_1"
    if g == in_features:
        return f"values fit d*q + m per row, consistent with per-channel int{bits}"
    return f"values fit d*q + m per block, consistent with int{bits} g{g} (GPTQ / AWQ style)"


def detect_prior_grid(weight: Tensor, group_sizes: tuple[int, ...] = TRIED_GROUP_SIZES) -> PriorGrid:
    """Report whether `weight` (..., in_features) already sits on a low-bit grid (see module docstring)."""
    if weight.ndim == 0 or weight.numel() == 0:
        raise ValueError("prior-grid detection needs a non-empty tensor with at least one dimension")
    in_features = weight.shape[-1]
    rows = weight.detach().float().reshape(-1, in_features)  # (rows, in_features)
    sizes = sorted({g for g in group_sizes if in_features % g == 0 and g < in_features} | {in_features})
    sample = _sample_rows(rows)
    sample_stats = {g: _block_stats(sample, g) for g in sizes}
    counts = {g: st.max_distinct for g, st in sample_stats.items()}
    confirm_all = rows.shape[0] > sample.shape[0]

    # 4 bits or fewer: few distinct values in the smallest blocks sets the width; the group is the
    # largest block that stays within 2**bits values (and, for affine grids, still fits one grid).
    finest = sample_stats[sizes[0]]
    if finest.max_distinct <= 16 and finest.max_distinct < sizes[0]:  # repeats in every block, or no evidence
        width = max(1, math.ceil(math.log2(finest.max_distinct)))
        finest_affine = finest.affine_fraction >= AFFINE_FRACTION

        def holds(st: _BlockStats) -> bool:
            if st.max_distinct > 2**width:
                return False
            return not finest_affine or (st.affine_fraction >= AFFINE_FRACTION and st.max_levels <= 2**width)

        for g in reversed([g for g in sizes if holds(sample_stats[g])]):
            full = _block_stats(rows, g, affine=False) if confirm_all else sample_stats[g]
            if full.max_distinct > 2**width:
                continue
            counts[g] = full.max_distinct
            bits = max(1, math.ceil(math.log2(full.max_distinct)))
            affine = sample_stats[g].affine_fraction >= AFFINE_FRACTION
            codebook = None if affine else _codebook_match(rows, g)
            hint = _format_hint(bits, g, in_features, affine, codebook)
            return PriorGrid(
                detected=True,
                bits=bits,
                group_size=g,
                max_distinct_per_block=counts,
                description=(
                    f"at most {full.max_distinct} distinct values in {_where(g, in_features)} → already on "
                    f"a {bits}-bit grid ({hint})"
                ),
                affine=affine,
                codebook=codebook,
                levels=sample_stats[g].max_levels if affine else None,
            )

    # Up to 8 bits: an affine grid of at most 256 levels in (nearly) every block.
    for g in reversed(sizes):
        if sample_stats[g].affine_fraction < AFFINE_FRACTION:
            continue
        full = _block_stats(rows, g) if confirm_all else sample_stats[g]
        if full.affine_fraction < AFFINE_FRACTION:
            continue
        counts[g] = full.max_distinct
        bits = max(1, math.ceil(math.log2(full.max_levels)))
        return PriorGrid(
            detected=True,
            bits=bits,
            group_size=g,
            max_distinct_per_block=counts,
            description=(
                f"{_where(g, in_features)} fits d*q + m with at most {full.max_levels} levels → already "
                f"on a {bits}-bit grid ({_format_hint(bits, g, in_features, True, None)})"
            ),
            affine=True,
            levels=full.max_levels,
        )

    g = sizes[0]
    return PriorGrid(
        detected=False,
        bits=None,
        group_size=None,
        max_distinct_per_block=counts,
        description=(
            f"{counts[g]} distinct values in some block of {g} and no affine grid → not on a low-bit "
            "grid (full-precision weights)"
        ),
    )
