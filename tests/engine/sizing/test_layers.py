"""Per-layer cache kinds and engine rules, each figure worked out by hand from the config's fields."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from engine.sizing.catalog import catalog_model
from engine.sizing.engines import LLAMA_CPP, TRANSFORMERS, VLLM, engine, vllm_report
from engine.sizing.estimate import cache_bytes_by_layer, estimate, kv_bytes_per_token
from engine.sizing.layers import CacheKind, StateCache, TokenCache, layer_counts, layer_plan
from engine.sizing.parameters import ConfigError

GIB = 1024**3


def test_gpt_oss_alternates_a_128_token_window_with_full_attention():
    config = catalog_model("gpt-oss-120b").config()
    plan = layer_plan(config)
    assert layer_counts(plan) == {CacheKind.SLIDING: 18, CacheKind.FULL: 18}
    assert plan[0].caches == (TokenCache(CacheKind.SLIDING, 2 * 8 * 64, 128),)
    per_layer_token = 2 * 8 * 64 * 2  # keys + values, 8 KV heads of 64, bf16: 2,048 bytes
    assert kv_bytes_per_token(config) == 36 * per_layer_token  # 72 KiB, no window applied
    breakdown = estimate(config, context=32_768)
    assert breakdown.kv_cache == 18 * per_layer_token * 32_768 + 18 * per_layer_token * 128
    assert breakdown.state == 0
    assert len(breakdown.kv_by_layer) == 36 and sum(breakdown.kv_by_layer) == breakdown.kv_cache


def test_gated_deltanet_state_is_fixed_per_sequence():
    config = AutoConfig.for_model(
        "qwen3_next",
        num_hidden_layers=8,
        full_attention_interval=4,
        num_key_value_heads=2,
        head_dim=256,
        linear_num_key_heads=16,
        linear_num_value_heads=32,
        linear_key_head_dim=128,
        linear_value_head_dim=128,
        linear_conv_kernel_dim=4,
    )
    plan = layer_plan(config)
    assert [layer.kind for layer in plan].count("full_attention") == 2
    state = plan[0].caches[0]
    assert state == StateCache(CacheKind.LINEAR, 32 * 128 * 128, 2 * 16 * 128 + 32 * 128, 4)
    by_layer = cache_bytes_by_layer(config, context=1000, batch=2)
    # transformers: fp32 recurrent state, conv inputs of the whole kernel in the activation dtype
    assert by_layer[0] == (0.0, 2 * (32 * 128 * 128 * 4 + 8192 * 4 * 2))
    assert by_layer[3] == (2 * 1000 * 2 * 2 * 256 * 2, 0.0)
    short, long = (cache_bytes_by_layer(config, context=n) for n in (10, 100_000))
    assert short[0] == long[0]  # the state does not grow with the context
    llama = cache_bytes_by_layer(config, context=1000, engine=LLAMA_CPP)[0][1]
    assert llama == (32 * 128 * 128 + 8192 * 3) * 4  # F32 state, d_conv - 1 inputs


def test_falcon_h1_layers_hold_attention_and_mamba2_side_by_side():
    config = AutoConfig.for_model(
        "falcon_h1",
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        mamba_d_ssm=1024,
        mamba_n_heads=16,
        mamba_d_head=64,
        mamba_d_state=128,
        mamba_n_groups=1,
        mamba_d_conv=4,
    )
    caches = layer_plan(config)[0].caches
    assert caches[0] == TokenCache(CacheKind.FULL, 2 * 2 * 64)
    assert caches[1] == StateCache(CacheKind.MAMBA, 16 * 64 * 128, 1024 + 2 * 128, 4)
    tokens, state = cache_bytes_by_layer(config, context=100, engine=VLLM)[0]
    assert tokens == 112 * 256 * 2  # 100 tokens round up to 7 blocks of 16
    assert state == (16 * 64 * 128 + 1280 * 3) * 2  # model dtype, d_conv - 1 inputs


def test_jamba_runs_mamba_between_attention_layers():
    config = AutoConfig.for_model(
        "jamba", num_hidden_layers=16, attn_layer_period=8, attn_layer_offset=4, hidden_size=512
    )
    counts = layer_counts(layer_plan(config))
    assert counts == {CacheKind.MAMBA: 14, CacheKind.FULL: 2}
    mamba = layer_plan(config)[0].caches[0]
    assert mamba == StateCache(CacheKind.MAMBA, 2 * 512 * config.mamba_d_state, 1024, config.mamba_d_conv)


def test_nemotron_h_pattern_names_each_layer():
    config = AutoConfig.for_model("nemotron_h", hybrid_override_pattern="M-M*-M-")
    kinds = [layer.kind for layer in layer_plan(config)]
    assert kinds == [
        "linear_attention",
        "mlp",
        "linear_attention",
        "full_attention",
        "mlp",
        "linear_attention",
        "mlp",
    ]
    assert layer_counts(layer_plan(config)) == {CacheKind.MAMBA: 3, CacheKind.FULL: 1}


def test_llama4_chunked_layers_cap_at_the_chunk():
    config = AutoConfig.for_model(
        "llama4_text", num_hidden_layers=4, attention_chunk_size=8192, num_key_value_heads=8, head_dim=128
    )
    assert [layer.kind for layer in layer_plan(config)] == ["chunked_attention"] * 3 + ["full_attention"]
    by_layer = cache_bytes_by_layer(config, context=100_000)
    per_token = 2 * 8 * 128 * 2
    assert [tokens for tokens, _ in by_layer] == [8192 * per_token] * 3 + [100_000 * per_token]


def test_a_layer_kind_we_cannot_size_is_named_and_refused():
    config = AutoConfig.for_model("lfm2", num_hidden_layers=2, layer_types=["conv", "full_attention"])
    with pytest.raises(ConfigError, match="'conv'"):
        layer_plan(config)
    with pytest.raises(ConfigError, match="'conv'"):
        estimate(config)


def test_engines_differ_where_their_sources_say():
    config = catalog_model("gemma-3-1b-it").config()  # 26 layers, 5 of 6 slide over 512 tokens
    window = config.sliding_window
    sliding = TokenCache(CacheKind.SLIDING, 256, window)
    assert TRANSFORMERS.tokens_held(sliding, 10_000) == window
    assert LLAMA_CPP.tokens_held(sliding, 10_000) == 1024  # window + n_ubatch 512, padded to 256
    assert VLLM.tokens_held(sliding, 5_000) == 5_008  # under window - 1 + 8192 batched tokens: all, in blocks
    assert VLLM.tokens_held(sliding, 100_000) == 8720  # ceil((511 + 8192) / 16) + 1 blocks of 16
    full = TokenCache(CacheKind.FULL, 256)
    assert LLAMA_CPP.tokens_held(full, 1000) == 1024 and VLLM.tokens_held(full, 1000) == 1008
    assert engine("vLLM") is VLLM
    with pytest.raises(ConfigError, match="unknown engine"):
        engine("tgi")


@pytest.mark.parametrize(
    ("available_gib", "max_model_len", "blocks", "tokens", "concurrency"),
    [
        # vllm-project/vllm#10517, Llama-3.1-8B-Instruct on an RTX 3090, logged "kv_cache_size=3.81GiB",
        # "# GPU blocks: 1952", "Maximum concurrency for 20000 tokens per request: 1.56x"
        (1952 * 2 / 1024, 20_000, 1952, 31_232, 1.56),
        # same issue, --max-model-len 29000: "kv_cache_size=2.89GiB", "# GPU blocks: 1478", "0.82x",
        # "the maximum number of tokens that can be stored in KV cache (23648)"
        (1478 * 2 / 1024, 29_000, 1478, 23_648, 0.82),
    ],
)
def test_vllm_report_matches_its_log(available_gib, max_model_len, blocks, tokens, concurrency):
    plan = layer_plan(catalog_model("llama-3.1-8b").config())
    report = vllm_report(plan, available_gib * GIB, max_model_len)
    assert (report.num_blocks, report.kv_tokens, report.groups) == (blocks, tokens, 1)
    assert round(report.max_concurrency, 2) == concurrency
    logged = vllm_report(plan, round(available_gib, 2) * GIB, max_model_len)  # the log's rounded GiB
    assert abs(logged.kv_tokens - tokens) <= 0.005 * tokens


def test_vllm_groups_a_hybrid_model_and_pads_the_state_page():
    plan = layer_plan(catalog_model("gpt-oss-120b").config())
    report = vllm_report(plan, 10 * GIB, 131_072)
    assert (report.groups, report.padding_layers) == (2, 0)  # 18 sliding + 18 full layers
    per_token_layer = 2 * 8 * 64 * 2
    assert report.num_blocks == 10 * GIB // (16 * per_token_layer * 18)
    assert report.kv_tokens == report.num_blocks // 2 * 16
    sliding_blocks = -(-(127 + 8192) // 16) + 1
    assert report.max_concurrency == pytest.approx(report.num_blocks / (131_072 // 16 + sliding_blocks))
