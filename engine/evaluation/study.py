"""A Qllm-Eval-style grid: weight bits, weight-activation pairs and KV-cache bits, scored on one text.

Each cell quantizes a copy of the reference (through the method registry) or only its KV cache, then
`engine.evaluation.perplexity.evaluate_against_reference` scores it on the same windows: perplexity, mean / max KL
to the reference's next-token distribution, top-1 agreement. One `ReferenceCache` serves every cell, so
the reference runs once per window. `findings()` turns the numbers into the study's sentences (weights
and KV tolerate 8 and 4 bits; W4A4 and 2-bit collapse) and says whether ours agree, from our numbers.

Where we depart from Qllm-Eval (Li et al., 2024): they evaluate many models on many tasks; we score one
model's perplexity and KL on the offline text. Weights are symmetric per-group RTN (group 128, or the
largest of 128/64/32 dividing every layer), activations symmetric per-token, KV asymmetric per token and
head, all round-to-nearest unless the caller passes another method config.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from engine.evaluation.perplexity import ReferenceCache, evaluate_against_reference
from engine.methods import RTNConfig, quantize_model
from engine.quant.linear import linear_names
from engine.quant.schemes import QuantScheme
from engine.runtime.kv_cache import KVCacheConfig

Progress = Callable[[float, str], None]
AXES = ("weights", "weight-activation", "kv")
TOLERATED = 0.05  # relative perplexity increase still called "tolerated"
COLLAPSED = 1.0  # relative perplexity increase (x2) called "collapsed"


@dataclass(frozen=True)
class GridCell:
    name: str  # W8, W4A8, KV4, ...
    axis: str  # weights | weight-activation | kv
    weight_bits: int  # 16 when weights stay as they are
    act_bits: int = 16
    kv_bits: int = 16

    def method(self, group_size: int) -> RTNConfig | None:
        if self.weight_bits >= 16 and self.act_bits >= 16:
            return None
        weights = (
            None
            if self.weight_bits >= 16
            else QuantScheme(self.weight_bits, "int", True, "group", group_size)
        )
        activations = None if self.act_bits >= 16 else QuantScheme(self.act_bits, "int", True, "channel")
        return RTNConfig(weights, activations)

    def kv(self) -> KVCacheConfig | None:
        """Asymmetric, one scale and zero per token and head (granularity "channel" runs along head_dim)."""
        if self.kv_bits >= 16:
            return None
        return KVCacheConfig(QuantScheme(self.kv_bits, "int", False, "channel"))


FULL_GRID = (
    GridCell("W8", "weights", 8),
    GridCell("W4", "weights", 4),
    GridCell("W3", "weights", 3),
    GridCell("W2", "weights", 2),
    GridCell("W8A8", "weight-activation", 8, act_bits=8),
    GridCell("W4A8", "weight-activation", 4, act_bits=8),
    GridCell("W4A4", "weight-activation", 4, act_bits=4),
    GridCell("KV8", "kv", 16, kv_bits=8),
    GridCell("KV4", "kv", 16, kv_bits=4),
    GridCell("KV3", "kv", 16, kv_bits=3),
    GridCell("KV2", "kv", 16, kv_bits=2),
)
QUICK_GRID = tuple(cell for cell in FULL_GRID if cell.name in ("W8", "W4", "W2", "W4A4", "KV4", "KV2"))
REFERENCE_ROWS = ("W16", "KV16")  # the reference itself, shown on the weight and KV axes


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

    @property
    def relative_change(self) -> float:
        return self.perplexity / self.reference_perplexity - 1


def pick_group_size(model, preferred: Sequence[int] = (128, 64, 32)) -> int:
    """Largest preferred group size dividing every quantized layer's in_features (576 -> 64 for SmolLM2)."""
    widths = {model.get_submodule(name).in_features for name in linear_names(model)}
    for size in preferred:
        if all(width % size == 0 for width in widths):
            return size
    raise ValueError(f"no group size in {tuple(preferred)} divides every layer width {sorted(widths)}")


def evaluate_cell(
    reference,
    windows: Tensor | Sequence[Tensor],
    cell: GridCell,
    reference_cache: ReferenceCache,
    group_size: int,
    progress: Progress | None = None,
) -> CellResult:
    """Quantize (a copy of) the reference as `cell` says and score it against the reference."""
    start = time.perf_counter()
    method = cell.method(group_size)
    candidate = reference if method is None else quantize_model(reference, method).model
    try:
        result = evaluate_against_reference(
            reference, candidate, windows, reference_cache, kv_scheme=cell.kv(), progress=progress
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
    )


def run_grid(
    reference,
    windows: Tensor | Sequence[Tensor],
    cells: Sequence[GridCell] = FULL_GRID,
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


def _change(results: dict[str, CellResult], name: str) -> float | None:
    return results[name].relative_change if name in results else None


def _describe(change: float) -> str:
    if not math.isfinite(change):
        return "diverges"
    if change >= COLLAPSED:
        return f"perplexity ×{change + 1:,.1f}"
    return f"{change:+.1%} perplexity"


def findings(results: dict[str, CellResult]) -> list[Finding]:
    """The published pattern, checked against our cells (only for the cells that were run)."""
    out = []
    for axis, names in (("Weights", ("W8", "W4")), ("The KV cache", ("KV8", "KV4"))):
        present = [n for n in names if n in results]
        if present:
            changes = {n: _change(results, n) for n in present}
            out.append(
                Finding(
                    f"{axis} tolerate 8 and 4 bits (small perplexity change).",
                    "; ".join(f"{n}: {_describe(c)}" for n, c in changes.items()),
                    all(c < 4 * TOLERATED for c in changes.values()),
                )
            )
    for name, claim in (
        ("W4A4", "W4A4 collapses: 4-bit activations break the model."),
        ("W2", "2-bit weights collapse."),
        ("KV2", "A 2-bit KV cache degrades badly."),
    ):
        if name in results:
            change = results[name].relative_change
            threshold = COLLAPSED if name != "KV2" else 4 * TOLERATED
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
