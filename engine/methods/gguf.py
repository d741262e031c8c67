"""llama.cpp's GGUF block types as a method: a whole model quantized the way `llama-quantize --pure` would.

Every linear weight (and, with `include_embeddings`, the token embedding and an untied output head) is
fake-quantized with one block type of engine.quant.gguf (`fake_quantize`: ggml's reference quantizers,
k-quants' scale searches included, no importance matrix), rows along the input dimension as llama.cpp
stores them. Norms and biases stay as they are (llama.cpp keeps 1-D tensors in F32). The layers stay
plain `nn.Linear`s holding the dequantized values, so the model runs anywhere.

Per-tensor fallback (llama.cpp's src/llama-quant.cpp, `convert_incompatible_tensor`): a k-quant packs
rows in super-blocks of 256, so a tensor whose rows are not a multiple of 256 gets a type with blocks of
32 instead (`FALLBACK` below); if even blocks of 32 do not fit, it is stored F16 (here: rounded to
float16). Current llama.cpp sends Q2_K and Q3_K to IQ4_NL, a 4.5-bit non-linear type not implemented
here; we use Q4_0 (same 4.5 bits, blocks of 32), which is what llama.cpp used before IQ4_NL existed.
The legacy types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) have no fallback: llama.cpp refuses such a tensor, and
so do we, before touching anything. On SmolLM2 (hidden size 576, 576 = 2.25 x 256) this means a "Q4_K"
model is mostly Q5_0: only the down projections (rows of 1536) are Q4_K. Each LayerReport says which
type its tensor really got and its exact bits per weight; `QuantizedModel.bits_per_weight` weighs them by size.

Embeddings are left as the model holds them unless `include_embeddings` is set: llama.cpp quantizes
token_embd and output too, but with its own type rules (Q6_K output, for instance), which `--pure` and
this method do not reproduce. A tied head shares the embedding's storage: it is quantized (and
reported) once, as token_embd.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.methods.registry import Calibration, LayerReport, register
from engine.quant.gguf import Q2_K, Q3_K, Q4_0, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, GGUFType, fake_quantize
from engine.quant.linear import linear_names
from engine.quant.metrics import sqnr_db

# llama.cpp's per-tensor fallback when a row is not a multiple of the type's block (llama-quant.cpp).
FALLBACK: dict[GGUFType, GGUFType] = {Q2_K: Q4_0, Q3_K: Q4_0, Q4_K: Q5_0, Q5_K: Q5_1, Q6_K: Q8_0}
F16_BITS = 16.0  # what llama.cpp stores when not even the fallback's blocks fit


@dataclass(frozen=True)
class GGUFConfig:
    type: GGUFType  # the block type asked for (engine.quant.gguf: Q4_K, ...; gguf_type("q4_k") from text)
    include_embeddings: bool = False  # also the token embedding and an untied output head

    def __post_init__(self) -> None:
        if not isinstance(self.type, GGUFType):
            raise ValueError(f"type must be a GGUF block type such as Q4_K (got {self.type!r})")
        if not isinstance(self.include_embeddings, bool):
            raise ValueError(f"include_embeddings must be True or False (got {self.include_embeddings!r})")

    @property
    def label(self) -> str:
        return f"GGUF {self.type.name}{' + embeddings' if self.include_embeddings else ''}"


@dataclass(frozen=True)
class GGUFDetail:
    """What a tensor got (LayerReport.detail): the type asked for and the one used (None: stored F16)."""

    requested: GGUFType
    used: GGUFType | None

    @property
    def used_name(self) -> str:
        return self.used.name if self.used is not None else "F16"

    @property
    def fell_back(self) -> bool:
        return self.used != self.requested


def tensor_type(requested: GGUFType, row_length: int) -> GGUFType | None:
    """The type llama.cpp stores a tensor with rows of `row_length` in when asked for `requested`:
    requested if its blocks fit, else its fallback, else None (F16). ValueError for a legacy type that
    does not fit (llama.cpp has no fallback for those)."""
    if row_length % requested.block_size == 0:
        return requested
    fallback = FALLBACK.get(requested)
    if fallback is None:
        raise ValueError(
            f"{requested.name} packs rows in blocks of {requested.block_size} values and llama.cpp has no "
            f"fallback for it; rows of {row_length} values do not fit. Choose another type."
        )
    return fallback if row_length % fallback.block_size == 0 else None


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


def _quantized(weight: Tensor, t: GGUFType | None) -> Tensor:
    if t is None:
        return weight.to(torch.float16).to(weight.dtype)
    return fake_quantize(weight, t)


@register(GGUFConfig, name="GGUF (llama.cpp)", calibration=Calibration.NONE, detail_type=GGUFDetail)
def gguf(model, config: GGUFConfig, calib, progress) -> list[LayerReport]:
    targets = _targets(model, config.include_embeddings)
    plans = []
    for name, module in targets:  # every tensor's type first: refuse before touching anything
        try:
            plans.append((name, module, tensor_type(config.type, module.weight.shape[-1])))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
    reports: list[LayerReport] = []
    for index, (name, module, used) in enumerate(plans):
        start = time.perf_counter()
        with torch.no_grad():
            original = module.weight.detach().clone()
            module.weight.copy_(_quantized(original, used))  # in place: a tied head follows its embedding
            sqnr = sqnr_db(original.float(), module.weight.float())
        bits = used.bits_per_weight if used is not None else F16_BITS
        detail = GGUFDetail(config.type, used)
        reports.append(LayerReport(name, bits, sqnr, seconds=time.perf_counter() - start, detail=detail))
        if progress:
            progress((index + 1) / len(plans), f"{name}: {detail.used_name} ({index + 1}/{len(plans)})")
    return reports
