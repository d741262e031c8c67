"""What llama.cpp's importance matrix buys: KL to the reference with and without it, format by format.

For each format, every linear the importance matrix has a row for (all but the head, which stays float as
in llama.cpp) is fake-quantized twice, plain round-to-nearest (the format's own scale choice) and with
the matrix weighting the rounding (`engine.quant.weight_formats.fake_quantize_any(w, fmt, importance=row)`:
llama.cpp's weighted quantizers for GGUF types, `engine.quant.weighted` for our schemes), and each variant
is scored against the reference on the same windows (`evaluate_against_reference`; the `ReferenceCache`
runs the reference once per window). `gain` is 1 - KL_with / KL_without: the share of the KL the matrix
removes.

    matrix = collect_importance(model, calib)            # engine.methods.imatrix
    rows = measure_gain(model, [Q4_0, parse_format("mxfp4")], matrix, windows, ReferenceCache())

Memory: one deep copy of the model serves every variant; each variant overwrites the planned weights from
the reference's, so nothing needs restoring and the reference is never touched. A format that cannot take
some planned tensor (k-quants pack rows in super-blocks of 256; SmolLM2's rows of 576 do not fit) is
refused before any work with a ValueError naming the format and the tensor (`check_gain`); where
llama.cpp would fall back to another type for such a tensor (engine.methods.gguf), this comparison does
not, so every number is the named format's.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine._types import Progress, require_free
from engine.evaluation.perplexity import ReferenceCache, evaluate_against_reference
from engine.methods.imatrix import ImportanceMatrix
from engine.quant.weight_formats import Format, bits_per_weight_of, check_fits, fake_quantize_any

COPY_HEADROOM = 1.3  # the copy, plus the transients of quantizing one tensor and of a forward


@dataclass(frozen=True)
class Scored:
    """One variant (without or with the matrix) scored against the reference."""

    mean_kl: float  # nats per position
    kl_p99: float  # 99th percentile of the per-position KL
    perplexity: float
    top1_agreement: float  # share of positions with the reference's top token
    quantize_seconds: float  # fake-quantizing every planned linear


@dataclass(frozen=True)
class GainRow:
    format: str  # the format's label ("Q4_0", "mxfp4", "int4 g32")
    bits_per_weight: float  # exact, scales included, weighted by tensor size over the planned linears
    without: Scored  # plain round-to-nearest
    with_importance: Scored  # rounding weighted by the importance matrix
    reference_perplexity: float

    @property
    def gain(self) -> float:
        """1 - KL_with / KL_without: the share of the KL the matrix removes (negative: it made it worse)."""
        if self.without.mean_kl <= 0:
            return 0.0
        return 1.0 - self.with_importance.mean_kl / self.without.mean_kl


def planned(model: nn.Module, importance: ImportanceMatrix) -> dict[str, nn.Module]:
    """{name: module} of the model's modules with a weight that the matrix has a row for, in model order."""
    modules = {
        name: module
        for name, module in model.named_modules()
        if name in importance and isinstance(getattr(module, "weight", None), Tensor)
    }
    if not modules:
        raise ValueError(
            "the importance matrix has no row for any layer of this model; collect it on this model"
        )
    return modules


def check_gain(model: nn.Module, fmt: Format, importance: ImportanceMatrix) -> None:
    """ValueError, naming the format, when it cannot take every planned tensor or cannot weight its rounding."""
    modules = planned(model, importance)
    for name, module in modules.items():
        shape = tuple(module.weight.shape)
        try:
            check_fits(fmt, shape)
        except ValueError as exc:
            raise ValueError(f"{fmt.label} does not fit {name} {shape}: {exc}") from exc
        if importance[name].numel() != shape[-1]:
            raise ValueError(
                f"the importance matrix's row for {name} has {importance[name].numel()} channels but the "
                f"weight has {shape[-1]} inputs; was it collected on another model?"
            )
    name, module = next(iter(modules.items()))
    probe = module.weight.detach()[:1]  # (1, in): does the format weight its rounding at all?
    try:
        fake_quantize_any(probe, fmt, importance=importance[name].to(probe.device))
    except NotImplementedError as exc:
        raise ValueError(f"{fmt.label} cannot weight its rounding by importance yet.") from exc
    except ValueError as exc:  # e.g. double quantization: no block can pick its own scale
        raise ValueError(f"{fmt.label} with importance: {exc}") from exc


def bits_per_weight_over(model: nn.Module, fmt: Format, names: Sequence[str]) -> float:
    """Exact bits per weight of `fmt` over the named tensors, weighted by their sizes."""
    shapes = [tuple(model.get_submodule(name).weight.shape) for name in names]
    total = sum(math.prod(shape) for shape in shapes)
    return sum(bits_per_weight_of(fmt, shape) * math.prod(shape) for shape in shapes) / total


@torch.no_grad()
def _quantize_into(work: nn.Module, reference: dict[str, nn.Module], fmt: Format, importance) -> float:
    """Overwrite every planned weight of `work` with the reference's, fake-quantized; returns the seconds."""
    start = time.perf_counter()
    for name, module in reference.items():
        weight = module.weight.detach()
        row = None if importance is None else importance[name].to(weight.device)
        work.get_submodule(name).weight.copy_(fake_quantize_any(weight, fmt, importance=row))
    return time.perf_counter() - start


def measure_gain(
    model: nn.Module,
    formats: Sequence[Format],
    importance: ImportanceMatrix,
    windows: Tensor | Sequence[Tensor],
    reference_cache: ReferenceCache,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    done: dict[str, GainRow] | None = None,
) -> list[GainRow]:
    """One row per format, in order: KL, KL p99, perplexity and top-1 agreement without and with the
    matrix. Every format is checked first (`check_gain`: ValueError naming it, before any work). Formats
    already in `done` (by label) are not measured again; each finished row is put there at once, so an
    interrupted run keeps them. `should_stop()` is asked before each variant: when true, the rows finished
    so far are returned."""
    done = {} if done is None else done
    for fmt in formats:
        check_gain(model, fmt, importance)
    modules = planned(model, importance)
    todo = [fmt for fmt in formats if fmt.label not in done]
    if todo:
        nbytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        require_free(
            int(nbytes * COPY_HEADROOM),
            next(model.parameters()).device,
            "Comparing the rounding makes one copy of the model",
            "Close other quantized variants or use a smaller model.",
        )
        work = copy.deepcopy(model)
        steps = 2 * len(todo)
        try:
            for index, fmt in enumerate(todo):
                scored = []
                for weighted in (False, True):
                    if should_stop and should_stop():
                        return [done[f.label] for f in formats if f.label in done]
                    step = 2 * index + weighted
                    what = f"{fmt.label} {'with' if weighted else 'without'} importance ({step + 1}/{steps})"

                    def inner(fraction: float, message: str, step=step, what=what) -> None:
                        if progress:
                            progress((step + 0.2 + 0.8 * fraction) / steps, f"{what}: {message}")

                    if progress:
                        progress(step / steps, f"{what}: quantizing")
                    seconds = _quantize_into(work, modules, fmt, importance if weighted else None)
                    result = evaluate_against_reference(model, work, windows, reference_cache, progress=inner)
                    scored.append((result, seconds))
                done[fmt.label] = _row(fmt, model, modules, scored)
        finally:
            del work
    if progress:
        progress(1.0, "Done")
    return [done[fmt.label] for fmt in formats]


def _row(fmt: Format, model: nn.Module, modules: dict, scored: list) -> GainRow:
    def variant(result, seconds: float) -> Scored:
        agreement = result.agreement
        p99 = agreement.drift.kl_p99 if agreement.drift is not None else math.nan
        return Scored(agreement.mean_kl, p99, result.candidate.perplexity, agreement.top1_agreement, seconds)

    (plain, plain_seconds), (weighted, weighted_seconds) = scored
    return GainRow(
        fmt.label,
        bits_per_weight_over(model, fmt, list(modules)),
        variant(plain, plain_seconds),
        variant(weighted, weighted_seconds),
        plain.reference.perplexity,
    )


__all__ = ["GainRow", "Scored", "bits_per_weight_over", "check_gain", "measure_gain", "planned"]
