"""What each tensor costs in each candidate format: the model's KL divergence to its float self when that
one tensor alone is quantized, measured cheaply and kept in a `CostTable` the solver re-reads.

How (one pass over the model, layer by layer):
1. The reference's inputs to every decoder layer on a small calibration batch (a few windows of 128
   tokens) are kept, with the Gram matrix H = X^T X of every linear's inputs and the reference's
   next-token log-probabilities.
2. For each tensor W and candidate format c, the proxy ||(W - Q_c(W)) X||^2 = sum((E H) * E) with
   E = W - Q_c(W): the layer's output error on those tokens. Cheap: one fake-quantization and one matmul.
3. For each tensor, the real KL with that tensor alone quantized, in the candidate with the largest proxy
   (its coarsest): a copy of its decoder layer with the tensor swapped runs on the kept inputs, then the
   later layers, the final norm and the head. Half a forward on average, and the shared model is never
   written to.
4. The other candidates' KL is estimated from the proxies: KL_c = KL_anchor * proxy_c / proxy_anchor
   (both are quadratic in the weight error for small errors, so their ratio holds per tensor; the
   measured check is in docs/benchmarks.md). `every_candidate=True` measures them all instead.

Departs from llama.cpp's target-bpw allocator, which ranks tensors by importance-weighted weight error
alone: the proxy is scaled per tensor by one measured KL, so tensors whose error the later layers damp
(or amplify) are priced as the model sees them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from engine._types import Progress
from engine.analysis.stats import decoder_layers
from engine.hooks import pre_hooks
from engine.methods.calibration import LayerInputs, capture_layer_inputs, forward_layer, one_thread
from engine.planner.candidates import TensorInfo, check_candidates, exact_bits, fitting, planned_tensors
from engine.quant.weight_formats import Format, fake_quantize_any

ROWS_PER_CHUNK = 128  # log-softmax over 128 positions x vocabulary at a time


@dataclass
class CostTable:
    """Per tensor and fitting candidate: the predicted KL (nats per token) and the exact bits."""

    tensors: list[TensorInfo]
    candidates: tuple[Format, ...]
    cost: dict[str, dict[Format, float]]  # predicted KL when this tensor alone takes that format
    bits: dict[str, dict[Format, float]]  # exact storage in bits (numel x bits per weight)
    proxy: dict[str, dict[Format, float]]  # ||(W - Q(W)) X||^2 on the calibration tokens
    measured: dict[str, dict[Format, float]] = field(default_factory=dict)  # KL actually measured
    tokens: int = 0  # calibration positions the KL is averaged over
    seconds: float = 0.0
    complete: bool = True  # False: stopped before every tensor was measured

    @property
    def measured_tensors(self) -> list[TensorInfo]:
        return [t for t in self.tensors if t.name in self.cost]


class PlannerError(ValueError):
    """A model or settings the planner cannot measure; the message says why, for the user."""


def _final_norm(model: nn.Module, prefix: str) -> nn.Module:
    parent = model.get_submodule(prefix.rpartition(".")[0]) if "." in prefix else model
    norm = getattr(parent, "norm", None) or getattr(parent, "final_layernorm", None)
    if norm is None or model.get_output_embeddings() is None:
        raise PlannerError(
            f"The planner needs the final norm and the output head of this {type(model).__name__}; "
            "it found no `norm` beside the decoder layers."
        )
    return norm


@dataclass
class _Reference:
    """The reference's kept state on the calibration batch."""

    inputs: list[LayerInputs]  # inputs of every decoder layer
    log_probs: list[Tensor]  # (rows, tokens - 1, vocab) per batch
    gram: dict[str, Tensor]  # linear name -> (in, in)


def _log_probs(model, norm, hidden: Tensor) -> Tensor:
    """(rows, positions, vocab) next-token log-probabilities from the last decoder layer's output."""
    return torch.log_softmax(model.get_output_embeddings()(norm(hidden)).float(), dim=-1)


@torch.no_grad()
def _reference(model, layers, norm, ids: Tensor, tensors: list[TensorInfo]) -> _Reference:
    gram: dict[str, Tensor] = {}

    def record(name):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # (tokens, in)
            if name not in gram:
                gram[name] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
            gram[name].addmm_(x.T, x)

        return hook

    inputs = [capture_layer_inputs(model, layers, ids)]
    with pre_hooks((model.get_submodule(t.name), record(t.name)) for t in tensors):
        for layer in layers:
            inputs.append(forward_layer(layer, inputs[-1]))
    final = inputs.pop()
    log_probs = [_log_probs(model, norm, h[:, :-1]) for h in final.hidden]  # (rows, tokens - 1, vocab)
    return _Reference(inputs, log_probs, gram)


def _kl(reference: Tensor, log_probs: Tensor) -> float:
    """Sum over positions of KL(P_ref || P_cand); both (positions, vocab) log-probabilities."""
    return float(torch.sum(reference.exp() * (reference - log_probs), dtype=torch.float64))


@torch.no_grad()
def _suffix_kls(model, layers, norm, ref: _Reference, index: int, copies: list[nn.Module]) -> list[float]:
    """Per copy of decoder layer `index`: the KL to the reference per position with that copy in its
    place. The copies' outputs are stacked along the batch, so the later layers and the head run once
    on all of them (fewer, larger matmuls: faster than one suffix per copy on a CPU)."""
    totals, count = [0.0] * len(copies), 0
    for hidden, kwargs, reference in zip(ref.inputs[index].hidden, ref.inputs[index].kwargs, ref.log_probs, strict=True):  # fmt: skip
        outputs = [forward_layer(copy_, LayerInputs([hidden], [kwargs])).hidden[0] for copy_ in copies]
        stacked = LayerInputs([torch.cat(outputs)], [kwargs])  # (copies * rows, tokens, hidden)
        for layer in layers[index + 1 :]:
            stacked = forward_layer(layer, stacked)
        rows, scored = hidden.shape[0], hidden.shape[1] - 1  # the last position has no next token
        step = max(1, ROWS_PER_CHUNK // rows)  # positions per chunk: ROWS_PER_CHUNK rows of logits at a time
        for number in range(len(copies)):
            part = stacked.hidden[0][number * rows : (number + 1) * rows]  # (rows, tokens, hidden)
            for begin in range(0, scored, step):
                end = min(begin + step, scored)
                log_probs = _log_probs(model, norm, part[:, begin:end])  # (rows, end - begin, vocab)
                totals[number] += _kl(reference[:, begin:end].flatten(0, 1), log_probs.flatten(0, 1))
        count += rows * scored
    return [max(total / count, 0.0) for total in totals]


def output_error(weight: Tensor, quantized: Tensor, gram: Tensor) -> float:
    """||(W - Q) X||^2 summed over the tokens whose Gram matrix is gram = X^T X."""
    error = weight.detach().float() - quantized.float()  # (out, in)
    return max(float(((error @ gram) * error).sum(dtype=torch.float64)), 0.0)


def measure_costs(
    model: nn.Module,
    ids: Tensor,
    candidates: tuple[Format, ...],
    *,
    every_candidate: bool = False,
    layers: Collection[int] | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CostTable:
    """Each tensor's cost in each fitting candidate on the calibration windows `ids` (windows, tokens).

    `every_candidate`: measure the KL of every candidate instead of estimating all but the coarsest.
    `layers`: price only the linears of these decoder layers (a quick look; the rest stay float and the
    table, and so the plan and its budget, covers only these).
    `should_stop()` is asked after each tensor; a stopped table has `complete=False` and the tensors
    measured so far. The model is only read. Runs on one CPU thread: its many small layer forwards ran
    up to 20x slower with two threads on a busy two-core machine (OpenMP barrier waits).
    """
    with one_thread(next(model.parameters()).device):
        return _measure_costs(model, ids, candidates, every_candidate, layers, progress, should_stop)


def _measure_costs(model, ids, candidates, every_candidate, layers, progress, should_stop) -> CostTable:
    start = time.perf_counter()
    tensors = planned_tensors(model)
    if layers is not None:
        tensors = [t for t in tensors if t.layer in set(layers)]
        if not tensors:
            raise PlannerError(f"No linear lies in decoder layers {sorted(layers)}.")
    check_candidates(candidates, tensors)
    prefix, layers = decoder_layers(model)
    norm = _final_norm(model, prefix)
    ids = ids if ids.dim() == 2 else ids.unsqueeze(0)
    if progress:
        progress(0.0, "Running the reference on the calibration text")
    ref = _reference(model, layers, norm, ids, tensors)
    table = CostTable(tensors, tuple(candidates), {}, {}, {}, {}, ids.shape[0] * (ids.shape[1] - 1))
    by_layer: dict[int, list[TensorInfo]] = {}
    for tensor in tensors:
        if tensor.layer is None or not tensor.name.startswith(f"{prefix}.{tensor.layer}."):
            raise PlannerError(f"{tensor.name} is not inside a decoder layer; the planner cannot price it.")
        by_layer.setdefault(tensor.layer, []).append(tensor)
    done = 0
    for index, group in by_layer.items():
        if should_stop and should_stop():
            table.complete = False
            break
        if progress:
            progress(
                done / len(tensors),
                f"Measuring layer {index} ({done + 1}-{done + len(group)} of {len(tensors)} tensors)",
            )
        _measure_layer(model, layers, norm, ref, index, group, candidates, every_candidate, prefix, table)
        done += len(group)
    table.seconds = time.perf_counter() - start
    if progress:
        progress(1.0, "Measured" if table.complete else "Stopped")
    return table


def _measure_layer(
    model, layers, norm, ref, index, group, candidates, every_candidate, prefix, table
) -> None:
    """Proxies of every tensor of decoder layer `index` in every fitting candidate, then the KL of one
    copy of the layer per measurement (the anchor, or every candidate), all suffixes in one batch."""
    todo: list[tuple[TensorInfo, Format]] = []
    quantized: dict[str, dict[Format, Tensor]] = {}
    for tensor in group:
        weight = model.get_submodule(tensor.name).weight.detach()
        formats = fitting(candidates, tensor)
        quantized[tensor.name] = {fmt: fake_quantize_any(weight, fmt) for fmt in formats}
        proxy = {
            fmt: output_error(weight, q, ref.gram[tensor.name]) for fmt, q in quantized[tensor.name].items()
        }
        table.proxy[tensor.name] = proxy
        table.bits[tensor.name] = {fmt: exact_bits(fmt, tensor) for fmt in formats}
        anchor = max(formats, key=lambda fmt: proxy[fmt])
        todo += [(tensor, fmt) for fmt in (formats if every_candidate else [anchor])]
    copies = []
    for tensor, fmt in todo:
        layer_copy = copy.deepcopy(layers[index])
        with torch.no_grad():
            layer_copy.get_submodule(tensor.name[len(f"{prefix}.{index}.") :]).weight.copy_(
                quantized[tensor.name][fmt]
            )
        copies.append(layer_copy)
    kls = _suffix_kls(model, layers, norm, ref, index, copies)
    for (tensor, fmt), kl in zip(todo, kls, strict=True):
        table.measured.setdefault(tensor.name, {})[fmt] = kl
    for tensor in group:
        proxy, measured = table.proxy[tensor.name], table.measured[tensor.name]
        anchor = max(proxy, key=lambda fmt: proxy[fmt])
        scale = measured[anchor] / proxy[anchor] if proxy[anchor] > 0 else 0.0
        table.cost[tensor.name] = {fmt: measured.get(fmt, scale * proxy[fmt]) for fmt in proxy}


__all__ = ["CostTable", "PlannerError", "measure_costs", "output_error"]
