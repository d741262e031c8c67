"""llama.cpp's GGUF block types as a method: a whole model quantized the way `llama-quantize --pure` would.

Every linear weight (and, with `include_embeddings`, the token embedding and an untied output head) is
fake-quantized with one block type of engine.quant.gguf (`fake_quantize`: ggml's reference quantizers,
k-quants' scale searches included; an importance matrix if asked), rows along the input dimension as llama.cpp
stores them. Norms and biases stay as they are (llama.cpp keeps 1-D tensors in F32). The layers stay
plain `nn.Linear`s holding the dequantized values, so the model runs anywhere.

Per-tensor fallback (llama.cpp's src/llama-quant.cpp, `tensor_type_fallback`): a k-quant packs rows in
super-blocks of 256, so a tensor whose rows are not a multiple of 256 gets a type with blocks of 32
instead (`FALLBACK`, kept with the mixes in engine.quant.gguf.mixes); if even blocks of 32 do not fit,
it is stored F16 (here: rounded to float16). Q2_K and Q3_K fall back to Q4_0, as current llama.cpp does
(some versions used IQ4_NL, same 4.5 bits, not implemented here).
The legacy types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) have no fallback: llama.cpp refuses such a tensor, and
so do we, before touching anything. On SmolLM2 (hidden size 576, 576 = 2.25 x 256) this means a "Q4_K"
model is mostly Q5_0: only the down projections (rows of 1536) are Q4_K. Each LayerReport says which
type its tensor really got and its exact bits per weight; `QuantizedModel.bits_per_weight` weighs them by size.

Importance matrix (`imatrix=True`, `llama-quantize --imatrix`): llama.cpp's importance matrix is first
collected on the calibration windows (engine.methods.imatrix: mean x_j^2 per input channel of every
linear), then each linear's scale searches are weighted by it (ggml-quants.c's `quantize_row_*_impl`);
embeddings, the head and Q8_0 tensors are quantized as without it, as llama.cpp does.

Embeddings are left as the model holds them unless `include_embeddings` is set. A tied head shares the
embedding's storage: it is quantized (and reported) once, as token_embd.

File-level mixes (`GGUFConfig(Q4_K_M)`, engine.quant.gguf.mixes): the type of each tensor comes from
llama.cpp's per-tensor rules for that file type (attn_v and ffn_down raised on some layers, the head or
a tied embedding Q6_K or Q8_0, ...), then the same fallback; routers stay as they are. With
`include_embeddings` the model is the one `llama-quantize model.gguf Q4_K_M` writes, tensor by tensor,
and its bits per weight come out of those types.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import singledispatch

import torch
from torch import Tensor, nn

from engine.methods.calibration import check_calibration, scaled
from engine.methods.imatrix import collect_importance
from engine.methods.registry import Calibration, LayerReport, register
from engine.quant.gguf import GGUFType, fake_quantize
from engine.quant.gguf.mixes import FALLBACK, GGUFMix, expert_count, tensor_type  # noqa: F401 (re-exported)
from engine.quant.linear import linear_names
from engine.quant.metrics import sqnr_db

F16_BITS = 16.0  # what llama.cpp stores when not even the fallback's blocks fit


@dataclass(frozen=True)
class GGUFConfig:
    # the block type asked for (engine.quant.gguf: Q4_K, ...; gguf_type("q4_k") from text), or a file-level
    # mix whose rules pick a type per tensor (engine.quant.gguf.mixes: GGUF_MIXES["Q4_K_M"], gguf_mix(...))
    type: GGUFType | GGUFMix
    include_embeddings: bool = False  # also the token embedding and an untied output head
    # weight the scale searches by llama.cpp's importance matrix, collected on `calib` first
    # (engine.methods.imatrix; `llama-quantize --imatrix`): the calibration windows become required
    imatrix: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.type, GGUFType | GGUFMix):
            raise ValueError(
                f"type must be a GGUF block type such as Q4_K or a mix such as Q4_K_M (got {self.type!r})"
            )
        for knob in ("include_embeddings", "imatrix"):
            if not isinstance(getattr(self, knob), bool):
                raise ValueError(f"{knob} must be True or False (got {getattr(self, knob)!r})")

    @property
    def label(self) -> str:
        extras = (" + imatrix" if self.imatrix else "") + (" + embeddings" if self.include_embeddings else "")
        return f"GGUF {self.type.name}{extras}"


@dataclass(frozen=True)
class GGUFDetail:
    """What a tensor got (LayerReport.detail): the type asked for (a mix: its rule's type for this tensor)
    and the one used (None: stored F16)."""

    requested: GGUFType
    used: GGUFType | None

    @property
    def used_name(self) -> str:
        return self.used.name if self.used is not None else "F16"

    @property
    def fell_back(self) -> bool:
        return self.used != self.requested


def _targets(model: nn.Module, include_embeddings: bool) -> list[tuple[str, nn.Module]]:
    """(name, module) of every tensor to quantize: the linears but the head, then the embeddings."""
    targets = [(name, model.get_submodule(name)) for name in linear_names(model)]
    if include_embeddings:
        embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
        modules = {id(module): name for name, module in model.named_modules()}
        targets.append((modules[id(embedding)], embedding))
        if head is not None and head.weight is not embedding.weight:
            targets.append((modules[id(head)], head))
    return targets


@singledispatch
def _plan(requested, model: nn.Module, targets) -> dict[str, tuple[GGUFType, GGUFType | None]]:
    """{name: (type asked for, type used)} for the targets (a mix may leave some out: routers)."""
    raise TypeError(f"not a GGUF type or mix: {requested!r}")


@_plan.register
def _(requested: GGUFType, model, targets):
    plans = {}
    for name, module in targets:  # every tensor's type first: refuse before touching anything
        try:
            plans[name] = (requested, tensor_type(requested, module.weight.shape[-1]))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
    return plans


@_plan.register
def _(requested: GGUFMix, model, targets):
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    rows = [(name, module.weight.shape[-1]) for name, module in targets]
    return requested.plan(rows, int(config.num_hidden_layers), n_expert=expert_count(config), tied=tied)


def _quantized(weight: Tensor, t: GGUFType | None, importance: Tensor | None = None) -> Tensor:
    if t is None:
        return weight.to(torch.float16).to(weight.dtype)
    return fake_quantize(weight, t, importance)


# Calibration: used only with `imatrix=True`, to collect the importance matrix.
@register(
    GGUFConfig, name="GGUF (llama.cpp)", calibration=Calibration.OPTIONAL_IMPORTANCE, detail_type=GGUFDetail
)
def gguf(model, config: GGUFConfig, calib, progress) -> list[LayerReport]:
    targets = _targets(model, config.include_embeddings)
    types = _plan(config.type, model, targets)  # every tensor's type first: refuse before touching anything
    plans = [(name, module, *types[name]) for name, module in targets if name in types]
    importance = None
    if config.imatrix:  # on the float model, before any weight changes (llama-imatrix's order)
        check_calibration(calib, "GGUF with an importance matrix")
        importance = collect_importance(model, calib, scaled(progress, 0.0, 0.5))
        progress = scaled(progress, 0.5, 1.0)
    reports: list[LayerReport] = []
    for index, (name, module, requested, used) in enumerate(plans):
        start = time.perf_counter()
        with torch.no_grad():
            original = module.weight.detach().clone()
            weights = importance.get(name) if importance is not None else None  # None: embeddings, head
            module.weight.copy_(_quantized(original, used, weights))  # in place: a tied head follows it
            sqnr = sqnr_db(original.float(), module.weight.float())
        bits = used.bits_per_weight if used is not None else F16_BITS
        detail = GGUFDetail(requested, used)
        reports.append(LayerReport(name, bits, sqnr, seconds=time.perf_counter() - start, detail=detail))
        if progress:
            progress((index + 1) / len(plans), f"{name}: {detail.used_name} ({index + 1}/{len(plans)})")
    return reports
