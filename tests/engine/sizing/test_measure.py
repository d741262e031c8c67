"""Memory sizing from configs: published KV-cache figures, sliding windows, MLA, weights under schemes."""

from __future__ import annotations

import pytest
import torch

from engine.quant.schemes import QuantScheme
from engine.sizing.estimate import (
    ConfigError,
    head_dim,
    kv_bytes_per_token,
    kv_cache_bytes,
    layer_windows,
    parameters_by_kind,
    weight_bytes,
)


def llama(**fields):
    from transformers import LlamaConfig

    return LlamaConfig(**fields)


LLAMA_31_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
)
LLAMA_31_70B = dict(
    hidden_size=8192,
    intermediate_size=28672,
    num_hidden_layers=80,
    num_attention_heads=64,
    num_key_value_heads=8,
    vocab_size=128256,
)
LLAMA_31_405B = dict(
    hidden_size=16384,
    intermediate_size=53248,
    num_hidden_layers=126,
    num_attention_heads=128,
    num_key_value_heads=8,
    vocab_size=128256,
)


@pytest.mark.parametrize(
    ("fields", "expected"), [(LLAMA_31_8B, 131_072), (LLAMA_31_70B, 327_680), (LLAMA_31_405B, 516_096)]
)
def test_llama_31_kv_bytes_per_token(fields, expected):
    assert kv_bytes_per_token(llama(**fields)) == expected


def test_llama_31_8b_kv_cache_at_1k_and_128k():
    config = llama(**LLAMA_31_8B)
    assert kv_cache_bytes(config, 1024) / 1024**3 == pytest.approx(0.125)
    assert kv_cache_bytes(config, 128_000) / 1024**3 == pytest.approx(15.625)  # the published 15.62 GiB
    assert kv_cache_bytes(config, 1024, batch=4, kv_bits=4) == kv_cache_bytes(
        config, 1024
    )  # 4x batch, 1/4 bits


def test_explicit_head_dim_wins():
    config = llama(
        hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64, num_hidden_layers=30
    )
    assert head_dim(config) == 64
    assert kv_bytes_per_token(config) == 2 * 30 * 3 * 64 * 2  # SmolLM2-135M: 23,040 bytes


def test_gemma2_sliding_window_is_far_below_the_naive_formula():
    from transformers import Gemma2Config

    config = Gemma2Config(
        hidden_size=3584,
        num_hidden_layers=42,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=256,
        sliding_window=4096,
        intermediate_size=14336,
        vocab_size=256000,
    )
    windows = layer_windows(config)
    assert windows.count(4096) == 21 and windows.count(None) == 21
    naive = kv_bytes_per_token(config) * 131_072
    assert kv_cache_bytes(config, 131_072) < 0.55 * naive


def test_mla_caches_the_latent():
    config = llama(**LLAMA_31_8B)
    config.kv_lora_rank, config.qk_rope_head_dim, config.num_hidden_layers = 512, 64, 61
    assert kv_bytes_per_token(config) == 61 * (512 + 64) * 2  # DeepSeek-V3: 70,272 bytes per token


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(num_attention_heads=7, hidden_size=64, num_key_value_heads=7), "not divisible"),
        (dict(num_attention_heads=8, hidden_size=64, num_key_value_heads=3), "not a multiple"),
        (dict(num_attention_heads=0, hidden_size=64), "positive integer"),
        (dict(num_attention_heads="8", hidden_size=64), "positive integer"),
    ],
)
def test_impossible_configs_are_explained(fields, message):
    from types import SimpleNamespace  # transformers' own config classes refuse these before we see them

    with pytest.raises(ConfigError, match=message):
        kv_bytes_per_token(SimpleNamespace(num_hidden_layers=2, **fields))


def test_weights_under_int4_g128_pay_for_their_scales(tiny_model_dir):
    from transformers import AutoConfig

    counts = parameters_by_kind(AutoConfig.from_pretrained(tiny_model_dir))
    scheme = QuantScheme(4, "int", True, "group", 128)
    linear = {"attention": 1_000_000, "mlp": 2_000_000}
    assert weight_bytes(linear, "int4-g128", 4096).bits_per_weight == pytest.approx(4.125)
    assert weight_bytes(linear, scheme, 4096).bits_per_weight == pytest.approx(4.125)
    assert weight_bytes(linear, None, 4096).total == 6_000_000
    mixed = weight_bytes(counts, scheme, 128)
    assert mixed.by_kind["embeddings"] == counts["embeddings"] * 2  # embeddings stay 16-bit
    assert 4.125 < mixed.bits_per_weight < 16


def test_parameter_count_matches_the_real_model(default_loaded):
    counts = parameters_by_kind(default_loaded.model.config)
    assert sum(counts.values()) == sum(p.numel() for p in default_loaded.model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("context", [512, 4096])
def test_estimate_tracks_the_measured_cuda_peak(context):
    """Random bf16 weights in Qwen2.5-0.5B's shapes: the estimate (without the CUDA context, which the
    allocator does not see) within 25% of the allocator's peak over prefill + 8 decode steps."""
    from engine import speed
    from engine.sizing.catalog import catalog_model
    from engine.sizing.measure import measure_generation_peak, peak_vs_estimate

    model = speed.synthetic_model(catalog_model("qwen2.5-0.5b").config(), torch.bfloat16, "cuda")
    measurement = measure_generation_peak(model, context)
    breakdown, comparison = peak_vs_estimate(model, measurement)
    assert measurement.peak_bytes > measurement.resident_bytes > 0.9 * 2 * 0.49e9  # bf16 weights resident
    assert abs(comparison.difference) < 0.25, (comparison, breakdown)
