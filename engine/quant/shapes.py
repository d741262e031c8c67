"""Which shapes a scheme can quantize, and the group sizes to suggest when it cannot.

Kept apart from `schemes` (which imports it): these need only a scheme's granularity and group size, and
the group-size pickers (`engine.quant.group_sizes`, the UI) use them without the scheme grammar.
"""

from __future__ import annotations

import math

import torch

# Group sizes a picker offers where they fit: powers of two from 16 to 256 (NVFP4 uses 16, llama.cpp and the
# MX formats 32, bitsandbytes 64, GPTQ / AWQ 128) and three times a power of two (48, 96, 192) for widths
# such as 576 = 3 x 192 and 1536 = 3 x 512 that small models use.
CANDIDATE_GROUP_SIZES = (16, 32, 48, 64, 96, 128, 192, 256)


def suggest_group_sizes(in_features: int) -> list[int]:
    """Group sizes that divide `in_features`: multiples of 32 if any, else divisors >= 8, else all."""
    divisors = [d for d in range(1, in_features + 1) if in_features % d == 0]
    for pick in ([d for d in divisors if d % 32 == 0], [d for d in divisors if d >= 8]):
        if pick:
            return pick
    return divisors


def group_sizes_dividing(widths, candidates: tuple[int, ...] = CANDIDATE_GROUP_SIZES) -> list[int]:
    """The candidates that divide every width; when none does, `suggest_group_sizes` of the widths' greatest
    common divisor (576 and 1536 -> 16, 32, 48, 64, 96, 192; 100 -> 10, 20, 25, 50, 100). No widths: all
    the candidates."""
    widths = [int(width) for width in widths]
    if not widths:
        return list(candidates)
    common = math.gcd(*widths)
    return [size for size in candidates if common % size == 0] or suggest_group_sizes(common)


def or_list(numbers) -> str:
    """A list of choices in words: "16, 32 or 64"."""
    words = [f"{n}" for n in numbers]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def tile_counts(shape: tuple[int, ...] | torch.Size, size: int) -> tuple[int, int]:
    """(tile rows, tile columns) of size x size tiles over a tensor seen as (rows, last dim): leading dims
    flatten into rows, and edge tiles are partial (ceil-divided), as DeepSeek-V3's and vLLM's FP8 blocks."""
    cols = shape[-1] if len(shape) else 1
    rows = math.prod(shape[:-1])
    return math.ceil(rows / size), math.ceil(cols / size)


def check_shape(scheme, shape: tuple[int, ...] | torch.Size) -> None:
    """Raise ValueError when a tensor of `shape` cannot be quantized with `scheme` (a QuantScheme)."""
    if len(shape) == 0:
        raise ValueError("cannot quantize a single number (a 0-d tensor); give it at least one dimension")
    if math.prod(shape) == 0:
        raise ValueError(f"cannot quantize an empty tensor of shape {tuple(shape)}")
    if scheme.granularity == "group":
        in_features = shape[-1]
        if in_features % scheme.group_size:
            raise ValueError(
                f"group size {scheme.group_size} does not divide the rows of {in_features} values; pick a "
                f"group size of {or_list(group_sizes_dividing([in_features]))}"
            )
