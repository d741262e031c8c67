"""Reverse queries: for a GPU (or n of them, tensor parallel), a context and a batch, which weight format
is the best that fits, and how long a context or how large a batch fits?

`best_format` walks the formats from 16-bit down, ordered by their bits per weight on this config (a
llama.cpp mix quantizes the embeddings and head too, so its place depends on the model), and reports for
each the bytes one GPU holds (`gpus.per_gpu_bytes`) and what is left over; the best is the first that
fits, the one with the most bits. Fitting is `gpus.fits` less an optional safety margin. Per-GPU bytes
only shrink as bits go down or GPUs are added (weights, activations and, up to the KV heads, the KV cache
are split; overhead is per GPU), so the walk's fitting rows are a tail, and more GPUs never pick a worse
format. `largest_context` and `largest_batch` search with `gpus.largest_fitting`.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.sizing.estimate import ConfigError, MemoryBreakdown, _text_config, estimate
from engine.sizing.gpus import (
    GPU,
    MAX_SEARCH_CONTEXT,
    TENSOR_PARALLEL_SIZES,
    decode_estimate,
    largest_fitting,
    per_gpu_bytes,
)
from engine.sizing.presets import PRESETS, WeightPreset

GIB = 1024**3
MAX_BATCH = 65536  # sequences at once; beyond this a request is a typo, not a workload
# From 16-bit down; the walk sorts them by bits per weight on the config it sizes.
DEFAULT_CANDIDATES = (
    "bf16",
    "fp8",
    "int8",
    "Q8_0",
    "Q6_K",
    "Q5_K_M",
    "Q4_K_M",
    "int4-g128",
    "nf4",
    "mxfp4",
    "nvfp4",
    "Q3_K_M",
    "int3-g128",
    "Q2_K",
    "int2-g64",
)


def _whole(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a whole number (got {value!r})")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be from {low:,} to {high:,} (got {value:,})")
    return value


def check_request(config, device: GPU, count: int = 1, context: int = 1, batch: int = 1) -> None:
    """ConfigError, in words, for a GPU count, context or batch that cannot be sized."""
    _whole(context, "context", 1, MAX_SEARCH_CONTEXT)
    _whole(batch, "batch", 1, MAX_BATCH)
    _whole(count, "GPU count", 1, TENSOR_PARALLEL_SIZES[-1])
    if count not in TENSOR_PARALLEL_SIZES:
        raise ConfigError(f"GPU count must be a power of two for tensor parallelism (got {count})")
    if count > 1 and device.vendor != "NVIDIA":
        raise ConfigError(f"tensor parallelism across several {device.name} is not modelled: use one")
    heads = getattr(_text_config(config), "num_attention_heads", None) or 1
    if heads % count:
        raise ConfigError(
            f"{count} GPUs cannot split {heads} attention heads evenly: pick a count that divides {heads}"
        )


@dataclass(frozen=True)
class FitRow:
    name: str  # preset key
    label: str  # what the page shows
    bits_per_weight: float  # over all parameters, on this config
    per_gpu_bytes: float
    headroom_bytes: float  # usable bytes left on each GPU; negative when it does not fit
    fits: bool
    tokens_per_s: float  # decode roofline on `count` GPUs, batch 1 per sequence
    best: bool = False  # the most bits that fit


def _preset(candidate: str | WeightPreset) -> WeightPreset:
    return candidate if isinstance(candidate, WeightPreset) else PRESETS[candidate]


def best_format(
    config,
    device: GPU,
    count: int = 1,
    context: int = 4096,
    batch: int = 1,
    kv="fp16",
    candidates=DEFAULT_CANDIDATES,
    margin: float = 0.0,
    **options,
) -> list[FitRow]:
    """The format walk, most bits first; the best (first that fits) has `best=True`, none when nothing fits.
    `margin`: bytes each GPU must keep free; `options` go to `estimate` (attention, prefill_chunk, ...)."""
    check_request(config, device, count, context, batch)
    if margin < 0:
        raise ConfigError(f"the safety margin must be zero or more bytes (got {margin})")
    sized: list[tuple[WeightPreset, MemoryBreakdown]] = []
    for candidate in candidates:
        preset = _preset(candidate)
        sized.append((preset, estimate(config, preset, kv, context, batch, **options)))
    sized.sort(key=lambda pair: -pair[1].weights.bits_per_weight)  # stable: ties keep the given order
    rows, found = [], False
    for preset, breakdown in sized:
        held = per_gpu_bytes(breakdown, config, count)
        headroom = device.usable_bytes - held
        fits = headroom >= margin
        rows.append(
            FitRow(
                name=preset.name,
                label=preset.label,
                bits_per_weight=breakdown.weights.bits_per_weight,
                per_gpu_bytes=held,
                headroom_bytes=headroom,
                fits=fits,
                tokens_per_s=decode_estimate(breakdown, device, count).tokens_per_s,
                best=fits and not found,
            )
        )
        found = found or fits
    return rows


def best_of(rows: list[FitRow]) -> FitRow | None:
    """The walk's best row, or None when no format fits."""
    return next((row for row in rows if row.best), None)


def verdict(rows: list[FitRow], device: GPU, count: int = 1) -> str:
    """One sentence on the walk's outcome: the best format, or why nothing fits."""
    where = f"one {device.name}" if count == 1 else f"{count} × {device.name}"
    best = best_of(rows)
    if best is not None:
        return (
            f"Best fit on {where}: {best.label} ({best.bits_per_weight:.2f} bits/weight), "
            f"{best.headroom_bytes / GIB:,.1f} GiB to spare per GPU."
        )
    if not rows:
        return "No formats to try."
    smallest = min(rows, key=lambda row: row.per_gpu_bytes)
    return (
        f"Nothing fits on {where}: even {smallest.label} needs {smallest.per_gpu_bytes / GIB:,.1f} GiB per "
        f"GPU, {-smallest.headroom_bytes / GIB:,.1f} GiB more than it has. Try more GPUs, a shorter context "
        "or a smaller batch."
    )


def largest_context(
    config, device: GPU, count: int = 1, weights="bf16", kv="fp16", batch: int = 1, **options
) -> int:
    """Longest context (tokens per sequence) that fits `batch` sequences; 0 if one token does not fit, the
    search cap (16M tokens) if everything does."""
    check_request(config, device, count, 1, batch)
    return largest_fitting(
        lambda n: estimate(config, weights, kv, n, batch, **options), config, device, count
    )


def largest_batch(
    config, device: GPU, count: int = 1, weights="bf16", kv="fp16", context: int = 4096, **options
) -> int:
    """Most sequences of `context` tokens that fit at once; 0 if one does not."""
    check_request(config, device, count, context, 1)
    return largest_fitting(
        lambda n: estimate(config, weights, kv, context, n, **options), config, device, count
    )
