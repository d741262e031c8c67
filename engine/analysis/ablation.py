"""Zeroing chosen weights, and round-to-nearest with chosen weights held out: the super-weight experiments.

Yu et al. 2024 ("The Super Weight in Large Language Models") zero one weight and watch the model collapse,
zero thousands of other large weights and watch it shrug, and restore the super weight after rounding to
recover much of coarse round-to-nearest's quality. `engine.analysis.super_weights` finds the weights; here:

- `ablate` returns a copy with some weights zeroed; `compare_ablations` scores three such variants (the
  super weights, as many random weights of the same magnitude, the top-k weights of the same tensors without
  the super weights) by perplexity and KL against the model on held-out windows, plus a short greedy
  generation. One working copy is made and restored between variants.
- `protect` scores round-to-nearest at a coarse format with and without the super weights held out: they
  are set to 0 before the scales are computed (so they no longer stretch their block's range) and written
  back unrounded after. The paper also keeps the super activation unclipped; this is weight-only rounding,
  so activations are never quantized and there is nothing to clip. A block's absmax is rounded exactly, so
  holding out changes only the rest of its block: per-channel or small-group formats barely move, per-tensor
  formats do (bench/bench_super_weights.py has the numbers).

The model passed in is never changed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine._types import Progress, require_free
from engine.evaluation.perplexity import ReferenceCache, evaluate_against_reference
from engine.quant.linear import linear_names
from engine.quant.weight_formats import Format, check_fits, fake_quantize_any

DEFAULT_PROMPT = "The capital of France is"
COPY_HEADROOM = 1.3  # a copy of the model plus the transients of a forward


@dataclass(frozen=True)
class WeightCoordinate:
    name: str  # the linear's module name: "model.layers.11.mlp.down_proj"
    row: int  # output channel i
    column: int  # input channel j


def check_coordinates(model: nn.Module, coordinates: Sequence[WeightCoordinate]) -> None:
    """ValueError with the reason when a coordinate names no linear weight or lies outside it."""
    if not coordinates:
        raise ValueError("pick at least one weight")
    modules = dict(model.named_modules())
    for c in coordinates:
        module = modules.get(c.name)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{c.name!r} is not a linear layer of this model")
        rows, columns = module.weight.shape
        if not (0 <= c.row < rows and 0 <= c.column < columns):
            raise ValueError(f"({c.row}, {c.column}) lies outside {c.name}'s weight of {rows} x {columns}")


def _copy(model: nn.Module, what: str) -> nn.Module:
    nbytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    require_free(
        int(nbytes * COPY_HEADROOM),
        next(model.parameters()).device,
        what,
        "Close other quantized variants or use a smaller model.",
    )
    return copy.deepcopy(model).eval()


@torch.no_grad()
def ablate(model: nn.Module, coordinates: Sequence[WeightCoordinate]) -> nn.Module:
    """A copy of the model with those weights set to zero (the model passed in is untouched)."""
    check_coordinates(model, coordinates)
    copied = _copy(model, "Zeroing weights makes a copy of the model")
    for c in coordinates:
        copied.get_submodule(c.name).weight[c.row, c.column] = 0
    return copied


@dataclass(frozen=True)
class ScoredVariant:
    label: str  # what was done, in the UI's words
    weights: int  # how many weights were zeroed or kept in 16-bit
    perplexity: float
    mean_kl: float  # nats per token against the unchanged model
    top1_agreement: float  # share of positions where both models pick the same next token
    generation: str | None  # greedy continuation of the prompt; None without a tokenizer
    coordinates: tuple[WeightCoordinate, ...] = ()  # the weights zeroed (empty for large sets)


@dataclass(frozen=True)
class VariantTable:
    reference_perplexity: float
    reference_generation: str | None
    rows: tuple[ScoredVariant, ...]
    prompt: str
    seconds: float


@dataclass
class _Scoring:
    reference: nn.Module
    windows: Tensor
    cache: ReferenceCache
    tokenizer: object | None
    prompt: str
    max_new_tokens: int
    reference_perplexity: float = float("nan")  # read off the first comparison

    def generation(self, model: nn.Module) -> str | None:
        if self.tokenizer is None:
            return None
        from engine.runtime.generation import GenerationSettings, generate

        settings = GenerationSettings(max_new_tokens=self.max_new_tokens, chat=False)
        return generate(model, self.tokenizer, self.prompt, settings).text

    def score(self, label: str, model: nn.Module, weights: int, coordinates=()) -> ScoredVariant:
        result = evaluate_against_reference(self.reference, model, self.windows, self.cache)
        self.reference_perplexity = result.reference.perplexity
        return ScoredVariant(
            label,
            weights,
            result.candidate.perplexity,
            result.agreement.mean_kl,
            result.agreement.top1_agreement,
            self.generation(model),
            tuple(coordinates),
        )

    def table(self, rows: list[ScoredVariant], start: float) -> VariantTable:
        generation = self.generation(self.reference)
        return VariantTable(
            self.reference_perplexity, generation, tuple(rows), self.prompt, time.perf_counter() - start
        )


def _indices(model: nn.Module, coordinates: Sequence[WeightCoordinate]) -> dict[str, Tensor]:
    """Per tensor: the flat indices of the coordinates in it."""
    out: dict[str, list[int]] = {}
    for c in coordinates:
        out.setdefault(c.name, []).append(_flat_index(model.get_submodule(c.name).weight, c))
    return {name: torch.tensor(flat, dtype=torch.long) for name, flat in out.items()}


def _flat_index(weight: Tensor, c: WeightCoordinate) -> int:
    return c.row * weight.shape[1] + c.column


def random_equal_magnitude(
    model: nn.Module, coordinates: Sequence[WeightCoordinate], seed: int = 0, pool: int = 64
) -> list[WeightCoordinate]:
    """One weight per coordinate, drawn (seeded) from the `pool` weights of the same tensor whose |w| is
    closest to it, never one of the coordinates themselves and never the same weight twice."""
    check_coordinates(model, coordinates)
    generator = torch.Generator().manual_seed(seed)
    taken = {(c.name, c.row, c.column) for c in coordinates}
    picked = []
    for c in coordinates:
        weight = model.get_submodule(c.name).weight.detach().float()
        distance = (weight.abs() - abs(float(weight[c.row, c.column]))).abs().flatten()
        for row, column in [(t[1], t[2]) for t in taken if t[0] == c.name]:
            distance[row * weight.shape[1] + column] = float("inf")
        near = distance.topk(min(pool, distance.numel() - len(taken)), largest=False).indices
        index = int(near[torch.randint(near.numel(), (1,), generator=generator)])
        choice = WeightCoordinate(c.name, *divmod(index, weight.shape[1]))
        taken.add((c.name, choice.row, choice.column))
        picked.append(choice)
    return picked


def _top_k_without(model: nn.Module, coordinates: Sequence[WeightCoordinate], k: int) -> dict[str, Tensor]:
    """Per tensor holding a coordinate: flat indices of its top-k |w|, the coordinates left out."""
    out = {}
    for name in dict.fromkeys(c.name for c in coordinates):
        weight = model.get_submodule(name).weight.detach().float()
        size = weight.abs().flatten()
        for c in coordinates:
            if c.name == name:
                size[_flat_index(weight, c)] = -1.0
        out[name] = size.topk(min(k, size.numel())).indices
    return out


@torch.no_grad()
def compare_ablations(
    model: nn.Module,
    coordinates: Sequence[WeightCoordinate],
    windows: Tensor,
    tokenizer=None,
    top_k: int = 7000,
    seed: int = 0,
    prompt: str = DEFAULT_PROMPT,
    max_new_tokens: int = 20,
    reference_cache: ReferenceCache | None = None,
    progress: Progress | None = None,
) -> VariantTable:
    """Zero the super weights vs as many random weights of the same magnitude vs the top-k weights of the
    same tensors without them; each scored against the model on `windows` (one working copy, restored)."""
    check_coordinates(model, coordinates)
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1 (got {top_k})")
    start = time.perf_counter()
    scoring = _Scoring(model, windows, reference_cache or ReferenceCache(), tokenizer, prompt, max_new_tokens)
    random = random_equal_magnitude(model, coordinates, seed)
    top = _top_k_without(model, coordinates, top_k)
    work = _copy(model, "Zeroing weights makes a copy of the model")
    sets = [
        ("super weights zeroed", _indices(model, coordinates), coordinates),
        ("random weights of the same size zeroed", _indices(model, random), random),
        (f"largest {top_k:,} other weights zeroed", top, ()),
    ]
    rows = []
    for index, (label, indices, shown) in enumerate(sets):
        if progress:
            progress(index / (len(sets) + 1), label)
        saved = {}
        for name, flat in indices.items():
            weight = work.get_submodule(name).weight.view(-1)
            saved[name] = (flat, weight[flat].clone())
            weight[flat] = 0
        rows.append(scoring.score(label, work, sum(f.numel() for f, _ in saved.values()), shown))
        for name, (flat, values) in saved.items():
            work.get_submodule(name).weight.view(-1)[flat] = values
    del work
    if progress:
        progress(len(sets) / (len(sets) + 1), "unchanged model")
    table = scoring.table(rows, start)
    if progress:
        progress(1.0, "Ablation done")
    return table


@torch.no_grad()
def protect(
    model: nn.Module,
    scheme: Format,
    coordinates: Sequence[WeightCoordinate],
    windows: Tensor,
    all_linears: bool = False,
    tokenizer=None,
    prompt: str = DEFAULT_PROMPT,
    max_new_tokens: int = 20,
    reference_cache: ReferenceCache | None = None,
    progress: Progress | None = None,
) -> VariantTable:
    """Round to nearest at `scheme` with and without the super weights held out of the scales and kept in
    16-bit (see the module doc). Rounds the tensors that hold them, or every linear but the head with
    `all_linears`. ValueError when the format does not fit a tensor."""
    check_coordinates(model, coordinates)
    names = linear_names(model) if all_linears else list(dict.fromkeys(c.name for c in coordinates))
    for name in names:
        try:
            check_fits(scheme, tuple(model.get_submodule(name).weight.shape))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
    start = time.perf_counter()
    scoring = _Scoring(model, windows, reference_cache or ReferenceCache(), tokenizer, prompt, max_new_tokens)
    work = _copy(model, "Rounding makes a copy of the model")
    label = getattr(scheme, "label", str(scheme))
    where = "every linear" if all_linears else "the tensors holding them"
    rows = []
    for step, hold in enumerate((False, True)):
        if progress:
            progress(step / 3, f"{label} {'keeping' if hold else 'without keeping'} the super weights")
        for name in names:
            source = model.get_submodule(name).weight.detach()
            held = [c for c in coordinates if hold and c.name == name]
            original = source.clone() if held else source
            for c in held:
                original[c.row, c.column] = 0  # out of the range the scales are fitted to
            target = work.get_submodule(name).weight
            target.copy_(fake_quantize_any(original, scheme))
            for c in held:
                target[c.row, c.column] = source[c.row, c.column]  # back, unrounded
        text = f"{label} on {where}" + (", super weights kept in 16-bit" if hold else "")
        rows.append(scoring.score(text, work, len(coordinates) if hold else 0, coordinates if hold else ()))
    del work
    table = scoring.table(rows, start)
    if progress:
        progress(1.0, "Protection done")
    return table
