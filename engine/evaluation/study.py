"""A Qllm-Eval-style grid: weight bits, weight-activation pairs and KV-cache bits, scored on one text.

Each cell (a catalog recipe) quantizes a copy of the reference (through the method registry) or only
its KV cache, then `engine.evaluation.perplexity.evaluate_against_reference` scores it on the same
windows: perplexity, mean / max KL to the reference's next-token distribution, top-1 agreement. One
`ReferenceCache` serves every cell, so the reference runs once per window. `findings()` turns the
numbers into the study's sentences (weights and KV tolerate 8 and 4 bits; W4A4 and 2-bit collapse) and
says whether ours agree, from our numbers.

The cells are recipes from the one catalog (`engine.recipes`), so "W8" here is the W8 of every other
page: int8 symmetric per output channel; W4 and below symmetric per group (128, or the largest of
128/64/32 dividing every layer); activations symmetric per token; KV asymmetric per token and head; all
round-to-nearest. (Before the catalog, this grid's W8 and W8A8 weights were int8 per group.) Beside W4
sits `W4 Q4_1` (llama.cpp's Q4_1: int4 asymmetric, groups of 32, a float minimum): the offline default
model was distributed in it, so it is that model's best 4-bit cell (it reproduces the weights) while W4
is a second rounding. The study's "weights tolerate 4 bits" is judged on the best 4-bit weight cell run,
and the finding names every 4-bit cell.

How far from the reference a number is lies on one absolute scale (`band`): close, noticeable, bad,
broken, with fixed thresholds per metric (`BANDS`), the same on every run, so a cell far from the
reference never looks fine because a worse cell shares its row. The perplexity thresholds are the ones
the findings use: "tolerated" below +20%, "collapsed" from ×2.

Where we depart from Qllm-Eval (Li et al., 2024): they evaluate many models on many tasks; we score one
model's perplexity and KL on the offline text.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from engine import recipes
from engine._types import Progress
from engine.evaluation.drift import DriftStats
from engine.evaluation.perplexity import ReferenceCache, evaluate_against_reference
from engine.methods import quantize_model
from engine.recipes import Recipe

AXES = ("weights", "weight-activation", "kv")
MODEL_GRID = "W4 Q4_1"  # the catalog recipe on the grid the offline default model was distributed on
TOLERATED = 0.20  # relative perplexity increase below which the study's "tolerates" holds (+20%)
COLLAPSED = 1.0  # relative perplexity increase (x2) called "collapsed"

# Fixed bands for "how far from the reference": (name, upper limit per metric). Δ perplexity: within +2%
# is about what int8 weights cost (W8: +0.4% on the default model); up to +20% is still "tolerated" in the
# findings below; up to ×2 is bad; from ×2 the study calls a setting collapsed. Mean KL (nats per token)
# takes the same limits in log space (ln 1.02, ln 1.2, ln 2): a KL of k nats costs about as much as
# multiplying perplexity by e^k. Top-1 disagreement has no such identity; its limits (5%, 25%, 50%) are
# where this grid's cells on the default model (4 x 256 Britannica windows) land in the band their
# perplexity gives: W8 3% / +0.4%, W8A8 12% / +5%, W4 46% / +49%, W3 72% / x7.
BANDS = ("close", "noticeable", "bad", "broken")
PPL_LIMITS = (0.02, TOLERATED, COLLAPSED)
BAND_LIMITS = {  # metric -> upper limits of close, noticeable, bad (beyond the last: broken)
    "relative_change": PPL_LIMITS,
    "mean_kl": tuple(math.log1p(limit) for limit in PPL_LIMITS),
    "disagreement": (0.05, 0.25, 0.50),
}


def band(metric: str, value: float) -> int:
    """0 (close) .. 3 (broken) on the fixed scale of `metric` (a key of BAND_LIMITS); NaN or inf: broken.

    Absolute: the band depends on this value alone, never on the other cells shown beside it."""
    if not math.isfinite(value):
        return len(BANDS) - 1
    return next((i for i, limit in enumerate(BAND_LIMITS[metric]) if value <= limit), len(BANDS) - 1)


FULL_GRID: tuple[Recipe, ...] = (
    *recipes.on_axis("weights")[:2],  # W8, W4, then the model's own 4-bit grid beside W4
    recipes.get(MODEL_GRID),
    *recipes.on_axis("weights")[2:],
    *recipes.on_axis("weight-activation", "kv"),
)  # W8 W4 "W4 Q4_1" W3 W2 W8A8 W4A8 W4A4 KV8 KV4 KV3 KV2
QUICK_GRID: tuple[Recipe, ...] = tuple(
    recipes.get(name) for name in ("W8", "W4", MODEL_GRID, "W2", "W4A4", "KV4", "KV2")
)
# "Formats at 4 bits": today's 4-bit weight formats side by side (the W4 cells and llama.cpp's), the same
# formats on activations too (W4A4), 8-bit microscaling and FP8 blocks (W8A8 MXFP8, W8A8 FP8 block128), then
# the KV cache in int4, FP8, MXFP4, NVFP4 and FP8 keys with MXFP4 values; quality against bits per weight in
# one chart
FORMATS_GRID: tuple[Recipe, ...] = tuple(
    recipes.get(name)
    for name in ("W4", "W4 g32", "NF4", MODEL_GRID, "Q4_0", "Q4_K", "W4 MXFP4", "W4 NVFP4", "W4A4", "W4A4 MXFP4", "W4A4 NVFP4",
                 "W8A8", "W8A8 MXFP8", "W8A8 FP8 block128", "KV4", "KV8 FP8", "KV4 MXFP4", "KV4 NVFP4", "K FP8 / V MXFP4")
)  # fmt: skip
REFERENCE_ROWS = ("W16", "KV16")  # the reference itself, shown on the weight and KV axes
FOUR_BIT_WEIGHTS = ("W4", MODEL_GRID)  # the 4-bit weight cells the "tolerates 4 bits" finding weighs


@dataclass(frozen=True)
class CellResult:
    cell: str
    axis: str
    perplexity: float
    reference_perplexity: float
    mean_kl: float  # nats per token
    max_kl: float
    top1_agreement: float  # share of positions with the same argmax
    tokens: int
    seconds: float
    bits_per_weight: float | None = None  # of the quantized linears, scales included; None: weights kept
    drift: DriftStats | None = None  # llama.cpp's --kl-divergence statistics, per-token values included

    @property
    def relative_change(self) -> float:
        return self.perplexity / self.reference_perplexity - 1


def pick_group_size(model, preferred: Sequence[int] = recipes.GROUP_SIZES) -> int:
    """Largest preferred group size dividing every quantized layer's in_features (576 -> 64 for SmolLM2).

    Unlike `Recipe.for_module`, which falls back to one scale per output channel, this refuses: a grid
    whose grouped cells silently became per-channel would not measure what its names say.
    """
    widths = set(recipes.in_features_of(model))
    for size in preferred:
        if all(width % size == 0 for width in widths):
            return size
    raise ValueError(f"no group size in {tuple(preferred)} divides every layer width {sorted(widths)}")


def evaluate_cell(
    reference,
    windows: Tensor | Sequence[Tensor],
    cell: Recipe,
    reference_cache: ReferenceCache,
    group_size: int,
    progress: Progress | None = None,
) -> CellResult:
    """Quantize (a copy of) the reference as the recipe `cell` says and score it against the reference."""
    start = time.perf_counter()
    if group_size in cell.group_sizes:  # grouped weights take the model's group size ...
        cell = cell.for_model(group_size=group_size)
    else:  # ... unless the recipe fixes its own (W4 Q4_1: 32)
        cell = cell.for_module(reference)
    quantized = None if cell.method is None else quantize_model(reference, cell.method)
    candidate = reference if quantized is None else quantized.model
    bits = None if quantized is None else quantized.bits_per_weight
    del quantized
    try:
        result = evaluate_against_reference(
            reference, candidate, windows, reference_cache, kv_scheme=cell.kv, progress=progress
        )
    finally:
        del candidate  # the copy can be hundreds of MB: drop it before the next cell builds its own
    return CellResult(
        cell.name,
        cell.axis,
        result.candidate.perplexity,
        result.reference.perplexity,
        result.agreement.mean_kl,
        result.agreement.max_kl,
        result.agreement.top1_agreement,
        result.agreement.token_count,
        time.perf_counter() - start,
        bits,
        result.agreement.drift,
    )


def run_grid(
    reference,
    windows: Tensor | Sequence[Tensor],
    cells: Sequence[Recipe] = FULL_GRID,
    done: dict[str, CellResult] | None = None,
    group_size: int | None = None,
    progress: Progress | None = None,
) -> dict[str, CellResult]:
    """Every cell's result by name; cells already in `done` are not recomputed (and `done` is filled)."""
    done = {} if done is None else done
    group_size = group_size or pick_group_size(reference)
    cache = ReferenceCache()
    todo = [cell for cell in cells if cell.name not in done]
    for index, cell in enumerate(todo):

        def inner(fraction: float, message: str, index=index, cell=cell) -> None:
            if progress:
                progress((index + fraction) / len(todo), f"{cell.name} ({index + 1}/{len(todo)}): {message}")

        done[cell.name] = evaluate_cell(reference, windows, cell, cache, group_size, inner)
    if progress:
        progress(1.0, "Grid done")
    return {cell.name: done[cell.name] for cell in cells}


@dataclass(frozen=True)
class Finding:
    claim: str  # what the study reports
    ours: str  # what our numbers say
    agrees: bool


def _describe(change: float) -> str:
    if not math.isfinite(change):
        return "diverges"
    if change >= COLLAPSED:
        return f"perplexity ×{change + 1:,.1f}"
    return f"{change:+.1%} perplexity"


def best_four_bit(results: dict[str, CellResult]) -> str | None:
    """The 4-bit weight cell (W4 or W4 Q4_1) closest to the reference among those run."""
    present = [n for n in FOUR_BIT_WEIGHTS if n in results]
    return min(present, key=lambda n: results[n].relative_change, default=None)


def findings(results: dict[str, CellResult]) -> list[Finding]:
    """The published pattern, checked against our cells (only for the cells that were run).

    "Weights tolerate 4 bits" is judged on the best 4-bit weight cell run (a model distributed on one
    4-bit grid should be judged on that grid, not on a second rounding), and names every 4-bit cell."""
    out = []
    best = best_four_bit(results)
    for axis, judged, shown in (
        ("Weights", ("W8", best), ("W8", *FOUR_BIT_WEIGHTS)),
        ("The KV cache", ("KV8", "KV4"), ("KV8", "KV4")),
    ):
        judged = [n for n in judged if n in results]
        if judged:
            several = sum(n in results for n in FOUR_BIT_WEIGHTS) > 1
            ours = [
                f"{n}{' (best 4-bit, judged)' if several and n == best else ''}: "
                + _describe(results[n].relative_change)
                for n in shown
                if n in results
            ]
            out.append(
                Finding(
                    f"{axis} tolerate 8 and 4 bits (small perplexity change).",
                    "; ".join(ours),
                    all(results[n].relative_change < TOLERATED for n in judged),
                )
            )
    for name, claim in (
        ("W4A4", "W4A4 collapses: 4-bit activations break the model."),
        ("W2", "2-bit weights collapse."),
        ("KV2", "A 2-bit KV cache degrades badly."),
    ):
        if name in results:
            change = results[name].relative_change
            threshold = COLLAPSED if name != "KV2" else TOLERATED
            out.append(Finding(claim, f"{name}: {_describe(change)}", change >= threshold))
    if "W8A8" in results and "W4A4" in results:
        ok = results["W8A8"].relative_change < results["W4A4"].relative_change
        out.append(
            Finding(
                "W8A8 is far safer than W4A4.",
                f"W8A8: {_describe(results['W8A8'].relative_change)} vs W4A4: "
                f"{_describe(results['W4A4'].relative_change)}",
                ok,
            )
        )
    return out
