"""Weight statistics for every linear layer: per-output and per-input channel abs-max, kurtosis,
max/median ratio and the share of weights beyond k standard deviations (the Outliers page's Weights tab).

Medians are taken over at most MEDIAN_SAMPLE evenly spaced entries per channel (exact medians of every
channel cost a full sort); everything else is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from engine._types import Progress
from engine.analysis.site_stats import CHUNK_ELEMENTS
from engine.analysis.stats import decoder_layers

WEIGHT_STATISTICS = ("abs-max", "kurtosis", "max/median input channel", "beyond kσ (%)")


def layer_of(model: torch.nn.Module, name: str) -> int | None:
    """Decoder layer index of a module name ("model.layers.3.mlp.up_proj" -> 3), None outside them."""
    prefix, _ = decoder_layers(model)
    if not name.startswith(prefix + "."):
        return None
    return int(name[len(prefix) + 1 :].split(".", 1)[0])


@dataclass(frozen=True)
class WeightStats:
    """One linear weight (out_features, in_features): tensor scalars and per-channel vectors."""

    name: str  # "model.layers.3.mlp.down_proj.weight"
    layer: int | None  # None for the head
    module: str  # short name: q_proj, ..., lm_head
    shape: tuple[int, int]
    absmax: float
    kurtosis: float  # Pearson, 3 for a Gaussian
    beyond_k: float  # fraction of weights further than k standard deviations from the mean
    k: float
    out_absmax: Tensor  # (out_features,) per output channel (row)
    out_kurtosis: Tensor
    out_max_median: Tensor  # max |w| / median |w| of the row
    out_beyond_k: Tensor  # fraction of the row beyond k of its own sigma
    in_absmax: Tensor  # (in_features,) per input channel (column): SmoothQuant's max |W_j|
    in_kurtosis: Tensor
    in_max_median: Tensor
    in_beyond_k: Tensor


MEDIAN_SAMPLE = 256  # median |w| of a channel from at most this many evenly spaced entries
TINY = torch.finfo(torch.float32).tiny


def _kurtosis(m1: Tensor, m2: Tensor, m3: Tensor, m4: Tensor) -> tuple[Tensor, Tensor]:
    """(variance, Pearson kurtosis) from float64 raw moments E[x], E[x^2], E[x^3], E[x^4]."""
    variance = (m2 - m1**2).clamp_min(0)
    central4 = m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4
    return variance, torch.where(variance > 0, central4 / variance**2, torch.zeros_like(variance))


def _strided_median(magnitude: Tensor, dim: int) -> Tensor:
    """Median along `dim` of at most MEDIAN_SAMPLE evenly spaced entries (exact for short channels)."""
    step = max(1, magnitude.shape[dim] // MEDIAN_SAMPLE)
    picked = magnitude[:, ::step] if dim == 1 else magnitude[::step]
    return picked.median(dim).values


def weight_numbers(w: Tensor, k: float) -> dict:
    """Row (output channel), column (input channel) and whole-tensor statistics of w: (out, in).

    Two passes over row chunks of ~1 MB (temporaries recycled from malloc's heap, as in
    engine.quant.primitives): raw moments, abs-max and row results first, then the counts beyond k sigma,
    which need every column's mean and sigma.
    """
    out_features, in_features = w.shape
    rows_per_chunk = max(1, CHUNK_ELEMENTS // in_features)
    ones_in = torch.ones(in_features, 1)
    ones_rows = torch.ones(1, rows_per_chunk)
    col_sums = torch.zeros(4, in_features, dtype=torch.float64)  # sums of w, w^2, w^3, w^4 per column
    col_absmax = torch.zeros(in_features)
    row_parts: list[tuple[Tensor, ...]] = []
    for start in range(0, out_features, rows_per_chunk):
        chunk = w[start : start + rows_per_chunk]  # (rows, in_features)
        ones_c = ones_rows[:, : chunk.shape[0]]
        w2 = chunk * chunk
        powers = (chunk, w2, w2 * chunk, w2 * w2)
        raw = [(p @ ones_in)[:, 0].double() / in_features for p in powers]  # 4 x (rows,)
        for index, p in enumerate(powers):
            col_sums[index] += (ones_c @ p)[0]
        variance, kurtosis = _kurtosis(*raw)
        magnitude = torch.abs(chunk, out=powers[2])  # reuse w^3's memory for |w|
        torch.maximum(col_absmax, magnitude.amax(0), out=col_absmax)
        absmax = magnitude.amax(1)
        ratio = absmax / _strided_median(magnitude, 1).clamp_min(TINY)
        limit = (k * variance.sqrt()).float()[:, None]
        beyond = (torch.sub(chunk, raw[0].float()[:, None], out=w2).abs_() > limit).sum(1).float()
        row_parts.append((absmax, kurtosis.float(), ratio, beyond / in_features, *raw))
    rows = [torch.cat(column) for column in zip(*row_parts, strict=True)]
    col_raw = [col_sums[index] / out_features for index in range(4)]
    flat_raw = [r.mean() for r in rows[4:]]
    col_var, col_kurt = _kurtosis(*col_raw)
    flat_var, flat_kurt = _kurtosis(*flat_raw)
    col_mean, col_limit = col_raw[0].float(), (k * col_var.sqrt()).float()
    flat_mean, flat_limit = float(flat_raw[0]), float(k * flat_var.sqrt())
    col_beyond = torch.zeros(in_features)
    flat_beyond = 0
    for start in range(0, out_features, rows_per_chunk):
        centred = w[start : start + rows_per_chunk] - col_mean  # (rows, in_features)
        col_beyond += (centred.abs() > col_limit).sum(0)
        flat_beyond += int(((centred.add_(col_mean - flat_mean)).abs_() > flat_limit).sum())
    col_median = _strided_median(w[:: max(1, out_features // MEDIAN_SAMPLE)].abs(), 0)
    return {
        "absmax": float(rows[0].max()),
        "kurtosis": float(flat_kurt),
        "beyond_k": flat_beyond / w.numel(),
        "out_absmax": rows[0],
        "out_kurtosis": rows[1],
        "out_max_median": rows[2],
        "out_beyond_k": rows[3],
        "in_absmax": col_absmax,
        "in_kurtosis": col_kurt.float(),
        "in_max_median": col_absmax / col_median.clamp_min(TINY),
        "in_beyond_k": col_beyond / out_features,
    }


@torch.no_grad()
def weight_stats(
    model: torch.nn.Module, k: float = 3.0, progress: Progress | None = None
) -> list[WeightStats]:
    """Statistics of every linear weight inside the decoder layers, plus the output head."""
    if k <= 0:
        raise ValueError(f"k must be positive (got {k}); 3 flags values beyond three standard deviations")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and (layer_of(model, name) is not None or module is head)
    ]
    found = []
    for position, (name, module) in enumerate(linears):
        w = module.weight.detach().to(device="cpu", dtype=torch.float32)  # (out_features, in_features)
        found.append(
            WeightStats(
                name=f"{name}.weight",
                layer=layer_of(model, name),
                module=name.rsplit(".", 1)[-1],
                shape=(w.shape[0], w.shape[1]),
                k=k,
                **weight_numbers(w, k),
            )
        )
        if progress:
            progress((position + 1) / len(linears), f"Weight statistics: {name}")
    return found


def weight_matrix(weights: list[WeightStats], statistic: str) -> tuple[list[str], list[int], Tensor]:
    """(module rows, layer columns, (modules, layers) values) of one WEIGHT_STATISTICS entry."""
    if statistic not in WEIGHT_STATISTICS:
        raise ValueError(f"unknown weight statistic {statistic!r}; use one of {WEIGHT_STATISTICS}")
    in_layers = [w for w in weights if w.layer is not None]
    modules = list(dict.fromkeys(w.module for w in in_layers))
    layers = sorted({w.layer for w in in_layers})
    values = torch.full((len(modules), len(layers)), math.nan)
    for w in in_layers:
        value = {
            "abs-max": w.absmax,
            "kurtosis": w.kurtosis,
            "max/median input channel": float(w.in_absmax.max() / w.in_absmax.median()),
            "beyond kσ (%)": 100 * w.beyond_k,
        }[statistic]
        values[modules.index(w.module), layers.index(w.layer)] = value
    return modules, layers, values
