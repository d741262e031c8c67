"""Simple recipes to compare the planner with: one format everywhere; the first and last decoder layers
at 8 bits with the rest at a base format; and llama.cpp's Q4_K_M rule (engine.quant.gguf.mixes), with
its per-tensor fallback for rows its k-quants do not fit (SmolLM2's 576-wide rows get Q5_0 and Q8_0).
"""

from __future__ import annotations

from engine.planner.candidates import TensorInfo
from engine.planner.costs import CostTable
from engine.planner.recipe import PlannedRecipe, recipe_from_formats
from engine.quant.gguf import Q8_0
from engine.quant.gguf.mixes import GGUF_MIXES
from engine.quant.weight_formats import Format


def uniform(tensors: list[TensorInfo], fmt: Format, table: CostTable | None = None) -> PlannedRecipe:
    """`fmt` for every tensor (ValueError naming a tensor it does not fit)."""
    return recipe_from_formats(
        f"uniform {fmt.label}", tensors, dict.fromkeys((t.name for t in tensors), fmt), table
    )


def first_last_8bit(
    tensors: list[TensorInfo], base: Format, table: CostTable | None = None, high: Format = Q8_0
) -> PlannedRecipe:
    """`high` (Q8_0) for every tensor of the first and last decoder layers, `base` elsewhere."""
    layers = [t.layer for t in tensors if t.layer is not None]
    ends = {min(layers), max(layers)} if layers else set()
    formats = {t.name: high if t.layer in ends else base for t in tensors}
    return recipe_from_formats(f"first/last layers {high.label}, rest {base.label}", tensors, formats, table)


def llama_cpp_mix(tensors: list[TensorInfo], mix: str = "Q4_K_M", table: CostTable | None = None) -> PlannedRecipe:  # fmt: skip
    """llama.cpp's file type `mix` as its rules assign it to these tensors (after the row fallback).
    ValueError for a tensor that would stay 16-bit (no type fits its rows)."""
    n_layers = 1 + max((t.layer for t in tensors if t.layer is not None), default=-1)
    planned = GGUF_MIXES[mix].plan([(t.name, t.shape[-1]) for t in tensors], n_layers)
    formats = {}
    for tensor in tensors:
        stored = planned.get(tensor.name, (None, None))[1]
        if stored is None:
            raise ValueError(
                f"{mix} keeps {tensor.name} in 16 bits; the planner compares quantized recipes only"
            )
        formats[tensor.name] = stored
    return recipe_from_formats(f"llama.cpp {mix}", tensors, formats, table)


__all__ = ["first_last_8bit", "llama_cpp_mix", "uniform"]
