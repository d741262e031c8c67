"""The Quantization grid page's cached calls that take any format, a QuantScheme or a GGUF block type:
the block view (picture, staircase, errors, summary), a GGUF block's bytes, and a microscaling scheme's
second level (engine.analysis.blocks)."""

from __future__ import annotations

import streamlit as st
import torch

from engine.analysis import blocks as grid_engine
from engine.quant.gguf import GGUFType
from engine.quant.metrics import error_summary
from engine.quant.schemes import QuantScheme
from engine.quant.weight_formats import bits_per_weight_of, fake_quantize_any
from ui.cache.tensors import ERROR_SAMPLE, ActivationKey, SyntheticKey, WeightKey, _row_sample, tensor

TensorKey = WeightKey | SyntheticKey | ActivationKey
HASH = {GGUFType: lambda t: t.name}  # its codec functions need not be hashed: the name is the type


@st.cache_data(show_spinner="Quantizing", max_entries=32, hash_funcs=HASH)
def format_grid_view(key: TensorKey, scheme: QuantScheme | GGUFType, row: int, block: int):
    """(block picture, staircase curve, sampled errors, block errors, summary) for the grid page."""
    x = tensor(key)
    picture = grid_engine.block_picture(x, scheme, row, block)
    curve = grid_engine.mapping_curve(picture, scheme)
    sample, _ = _row_sample(x)
    quantized = fake_quantize_any(sample, scheme)
    summary = error_summary(sample, quantized)
    summary["bits/weight"] = bits_per_weight_of(scheme, tuple(x.reshape(-1, x.shape[-1]).shape))
    errors = (sample - quantized).reshape(-1)
    if errors.numel() > ERROR_SAMPLE:
        errors = errors[
            torch.randperm(errors.numel(), generator=torch.Generator().manual_seed(0))[:ERROR_SAMPLE]
        ]
    return picture, curve, errors.numpy(), (picture.values - picture.dequantized).numpy(), summary


@st.cache_data(show_spinner="Packing the block", max_entries=32, hash_funcs=HASH)
def gguf_view(key: TensorKey, t: GGUFType, row: int, block: int) -> grid_engine.GGUFView:
    return grid_engine.gguf_view(tensor(key), t, row, block)


@st.cache_data(show_spinner="Reading the block scales", max_entries=32)
def microscaling_view(
    key: TensorKey, scheme: QuantScheme, row: int, block: int
) -> grid_engine.MicroscalingView:
    return grid_engine.microscaling_view(tensor(key), scheme, row, block)
