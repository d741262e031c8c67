"""The recipe catalog: one meaning per name, group sizes resolved per model, typed fields checked."""

from __future__ import annotations

import pytest
import torch

from engine import recipes
from engine.methods import BnbConfig, RTNConfig
from engine.recipes import Recipe
from tests.conftest import build_tiny_llama


def test_the_study_axes_are_in_grid_order():
    names = [r.name for r in recipes.on_axis("weights", "weight-activation", "kv")]
    assert names == ["W8", "W4", "W3", "W2", "W8A8", "W4A8", "W4A4", "KV8", "KV4", "KV3", "KV2"]


def test_w8_is_int8_per_channel_and_lower_bits_are_grouped():
    w8 = recipes.get("W8")
    assert w8.weights.bits == 8 and w8.weights.granularity == "channel" and w8.weights.symmetric
    assert not w8.grouped and w8.for_model(576) is w8
    for name in ("W4", "W3", "W2"):
        recipe = recipes.get(name)
        assert recipe.grouped and recipe.weights.symmetric and recipe.method.activations is None
    # W8A8 is W8 plus int8 per-token activations, the same quantization its packed kernel runs
    w8a8 = recipes.get("W8A8")
    assert w8a8.weights == w8.weights and w8a8.method.activations.granularity == "channel"
    assert recipes.get("W8A8 packed").method == w8a8.method
    assert recipes.get("W8A16 packed").method == w8.method


def test_group_size_follows_the_model():
    w4 = recipes.get("W4")
    assert w4.for_model(576, 1536).weights.group_size == 64  # SmolLM2: 576 wide
    assert w4.for_model(4096, 11008).weights.group_size == 128
    assert w4.for_model(4096, group_size=32).weights.group_size == 32
    assert w4.for_module(build_tiny_llama()).weights.group_size == 64  # widths 64 and 128
    odd = w4.for_model(48, 80)  # nothing divides: one scale per output channel
    assert odd.weights.granularity == "channel" and odd.weights.group_size is None and odd.weights.bits == 4
    assert w4.weights.group_size == 128  # the catalog entry itself is unchanged (frozen)
    with pytest.raises(ValueError, match=r"W4A16 packed: no group size .* \[48, 80\]"):
        recipes.get("W4A16 packed").for_model(48, 80)


def test_kv_recipes_quantize_only_the_cache():
    for bits in (8, 4, 3, 2):
        recipe = recipes.get(f"KV{bits}")
        assert recipe.method is None and recipe.kv.scheme.bits == bits and not recipe.kv.scheme.symmetric
        assert recipe.kv.scheme.granularity == "channel"


def test_packed_bnb_and_float_recipes_are_typed():
    head = recipes.get("W4A16 packed + int8 head")
    assert head.packed and head.packed_head and not head.weights.symmetric
    assert recipes.get("W4A16 tinygemm").kernel == "tinygemm"
    assert isinstance(recipes.get("NF4 (bnb)").method, BnbConfig)
    assert recipes.get("LLM.int8 (bnb)").method.mode == "int8"
    assert recipes.get("bf16").dtype is torch.bfloat16 and recipes.get("bf16").method is None
    assert (
        recipes.get("NF4").weights.format == "nf4"
        and recipes.get("NF4").for_model(576).weights.group_size == 64
    )
    assert all(r.description for r in recipes.RECIPES.values())
    assert hash(recipes.get("W4")) == hash(recipes.get("W4"))  # frozen: usable as a cache key


def test_unknown_names_and_inconsistent_recipes_are_refused():
    with pytest.raises(ValueError, match="unknown recipe 'W5'; choose from W8, W4"):
        recipes.get("W5")
    with pytest.raises(ValueError, match="packed recipe needs an RTNConfig"):
        Recipe("x", "packed", "", BnbConfig("nf4"), packed=True)
    with pytest.raises(ValueError, match="only a packed recipe"):
        Recipe("x", "weights", "", RTNConfig(None), packed_head=True)
    with pytest.raises(ValueError, match="axis must be one of"):
        Recipe("x", "vibes", "")
