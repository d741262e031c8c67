"""Which formats the planner may give each tensor: any mix of our schemes and llama.cpp's GGUF block types.

A candidate is an `engine.quant.weight_formats.Format`; a candidate that does not fit a tensor's rows
(Q4_K's super-blocks of 256 on SmolLM2's 576-wide rows) is left out for that tensor only, so a set may
mix k-quants with formats that fit everywhere.

The default set, for SmolLM2-135M (rows of 576 and 1,536 values), spans 3.5 to 8.5 bits per weight with
formats that fit every one of its linears, so every tensor has four choices:
- "int3 g32" (3.5 bpw: 3-bit codes, an fp16 scale per 32): the lowest that stays usable with plain
  rounding; 2-bit rounding (2.5 bpw) breaks the model outright (its KL is in whole nats), and the planner
  adds single-tensor costs, which only holds while each tensor's damage is small;
- llama.cpp's Q4_0 (4.5), Q5_0 (5.5) and Q8_0 (8.5), blocks of 32 that fit 576-wide rows (the k-quants
  Q3_K .. Q6_K fit only the down projections' 1,536-wide rows). `LLAMA_CPP_CANDIDATES` is a set of GGUF
  types only, so its recipes export as llama.cpp `--tensor-type` lines.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from engine.quant.gguf import Q3_K, Q4_0, Q5_0, Q6_K, Q8_0
from engine.quant.gguf.mixes import layer_of
from engine.quant.linear import linear_names
from engine.quant.schemes import parse_label
from engine.quant.weight_formats import Format, bits_per_weight_of, check_fits, parse_format

DEFAULT_CANDIDATES: tuple[Format, ...] = (parse_label("int3 g32"), Q4_0, Q5_0, Q8_0)
LLAMA_CPP_CANDIDATES: tuple[Format, ...] = (Q3_K, Q4_0, Q5_0, Q6_K, Q8_0)


@dataclass(frozen=True)
class TensorInfo:
    """One weight the planner assigns a format to."""

    name: str  # the linear's module path, "model.layers.3.self_attn.v_proj"
    shape: tuple[int, ...]  # (out_features, in_features): rows are quantized along in_features
    layer: int | None  # decoder layer index, None outside the layers

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def module(self) -> str:
        """The module's own name ("v_proj"): the map's column."""
        return self.name.rsplit(".", 1)[-1]


def planned_tensors(model: nn.Module) -> list[TensorInfo]:
    """Every linear the methods quantize (all but the output head), in model order."""
    return [
        TensorInfo(name, tuple(model.get_submodule(name).weight.shape), layer_of(name))
        for name in linear_names(model)
    ]


def fits(fmt: Format, shape: tuple[int, ...]) -> bool:
    try:
        check_fits(fmt, shape)
    except ValueError:
        return False
    return True


def fitting(candidates: Iterable[Format], tensor: TensorInfo) -> list[Format]:
    """The candidates that can store this tensor, in the order given."""
    return [fmt for fmt in candidates if fits(fmt, tensor.shape)]


def exact_bits(fmt: Format, tensor: TensorInfo) -> float:
    """The tensor's storage in `fmt`, in bits, scales and zero points included."""
    return bits_per_weight_of(fmt, tensor.shape) * tensor.numel


def parse_candidates(labels: Iterable[str]) -> tuple[Format, ...]:
    """Formats from labels ("Q4_0", "int3 g32"), without repeats; ValueError in words for an empty set."""
    formats: list[Format] = []
    for label in labels:
        fmt = parse_format(label)
        if fmt not in formats:
            formats.append(fmt)
    if not formats:
        raise ValueError("Choose at least one candidate format.")
    return tuple(formats)


def check_candidates(candidates: Iterable[Format], tensors: list[TensorInfo]) -> None:
    """ValueError naming the tensors that no candidate fits."""
    candidates = tuple(candidates)
    orphans = [t.name for t in tensors if not fitting(candidates, t)]
    if orphans:
        shown = ", ".join(orphans[:4]) + (f" and {len(orphans) - 4} more" if len(orphans) > 4 else "")
        raise ValueError(
            f"No candidate format fits {shown}; add a format with blocks that divide their rows "
            "(blocks of 32, such as Q8_0 or int4 g32)."
        )


__all__ = [
    "DEFAULT_CANDIDATES",
    "LLAMA_CPP_CANDIDATES",
    "TensorInfo",
    "check_candidates",
    "exact_bits",
    "fits",
    "fitting",
    "parse_candidates",
    "planned_tensors",
]
