"""The whole estimate: presets' bits per weight, activations, GPUs, fitting, the CLI, measured bytes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.sizing.estimate import activations, estimate, kv_format
from engine.sizing.gpus import (
    decode_estimate,
    fits,
    gpu,
    gpu_catalog,
    largest_fitting,
    min_tensor_parallel,
    per_gpu_bytes,
    serving_what_if,
)
from engine.sizing.measure import weights_vs_real_bytes
from engine.sizing.presets import PRESETS, weight_preset
from tests.engine.sizing.test_measure import LLAMA_31_8B, llama

GIB = 1024**3


def llama_31_8b():
    return llama(**LLAMA_31_8B, max_position_embeddings=131072)


@pytest.mark.parametrize(
    ("name", "bits"),
    [
        ("int4-g128", 4.125),
        ("gptq-int4-g128", 4.15625),
        ("nf4", 4.5),
        ("nf4-dq", 4 + 8 / 64 + 32 / (64 * 256)),
        ("Q8_0", 8.5),
        ("int8", 8 + 16 / 4096),
        ("fp8", 8 + 32 / 4096),
        ("bf16", 16),
        ("mxfp4", 4.25),
        ("mxfp8", 8.25),
        ("nvfp4", 4.5),
        ("Q2_K", 2.625),
        ("Q3_K", 3.4375),
        ("Q4_K", 4.5),
        ("Q5_K", 5.5),
    ],
)
def test_linear_bits_per_weight_of_presets(name, bits):
    assert PRESETS[name].linear_bits_for(4096) == pytest.approx(bits)


def test_gguf_presets_price_the_blocks_as_packed():
    """The k-quant presets' bits are the real block sizes (engine.quant.gguf packs and measures them)."""
    from engine.quant.gguf import Q2_K, Q3_K, Q4_K, Q5_K, Q6_K

    for t in (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K):
        assert PRESETS[t.name].linear_bits_for(4096) == t.type_size * 8 / t.block_size


def test_presets_keep_embeddings_16_bit_except_gguf():
    assert PRESETS["int4-g128"].bits_for("embeddings", 4096) == 16
    assert PRESETS["Q8_0"].bits_for("head", 4096) == 8.5
    assert PRESETS["Q4_K_M"].bits_for("norms", 4096) == 32


def test_gguf_mixes_are_priced_tensor_by_tensor_on_the_default_model():
    """SmolLM2-135M as Q4_K_M, by hand (engine.quant.gguf.mixes' tests list each tensor's type): the tied
    embedding Q8_0; v_proj Q6_K -> Q8_0 on the 14 use_more_bits layers, Q4_K -> Q5_0 on 16; down_proj Q6_K
    on 14, Q4_K on 16; q, k, o, gate, up Q4_K -> Q5_0; norms F32. The published file
    (SmolLM2-135M-Instruct-Q4_K_M.gguf, bartowski / Hugging Face) is about 105 MB: these tensors plus the
    tokenizer (49,152 tokens and 48,900 merges, under 2 MB). The 4.89-bit whole-model average this replaced gave about 82 MB."""
    from engine.sizing.catalog import catalog_model

    config = catalog_model("SmolLM2-135M-Instruct").config()
    q, kv, mlp, vocab, layers = 576 * 576, 192 * 576, 1536 * 576, 49152 * 576, 30
    by_hand = (
        vocab * 8.5 / 8
        + layers * (2 * q + kv + 2 * mlp) * 5.5 / 8  # q, o, k, gate, up: Q5_0
        + 14 * kv * 8.5 / 8 + 16 * kv * 5.5 / 8  # v
        + 14 * mlp * 6.5625 / 8 + 16 * mlp * 4.5 / 8  # down
        + (2 * layers + 1) * 576 * 4  # norms, F32
    )  # fmt: skip
    q4_k_m = estimate(config, "Q4_K_M", context=1)
    assert q4_k_m.weights.total == by_hand == 103_668_480
    assert q4_k_m.weights.total == pytest.approx(105e6, rel=0.03)
    assert q4_k_m.weights_label == "GGUF Q4_K_M"
    assert q4_k_m.weights.by_kind["embeddings"] == vocab * 8.5 / 8


@pytest.mark.parametrize(("name", "published"), [("Q4_K_M", 4.92e9), ("Q5_K_M", 5.73e9), ("Q3_K_M", 4.02e9)])
def test_gguf_mixes_on_llama_31_8b_match_the_published_files(name, published):
    """bartowski's Meta-Llama-3.1-8B-Instruct GGUF files (Hugging Face): 4.92, 5.73 and 4.02 GB; ours
    counts the tensors only (the file adds a tokenizer of 128,256 tokens, a few MB)."""
    weights = estimate(llama_31_8b(), name, context=1).weights
    assert weights.total < published and weights.total == pytest.approx(published, rel=0.005)
    if name == "Q4_K_M":  # the whole-model average this replaced, now out of the rules
        assert weights.bits_per_weight == pytest.approx(4.894, abs=0.001)


def test_scheme_labels_work_as_presets_and_nonsense_is_explained():
    assert weight_preset("int4 asym g64").linear_bits_for(4096) == pytest.approx(4.5)
    with pytest.raises(ValueError, match="unknown weight format"):
        weight_preset("int5-banana")


def test_llama_31_8b_estimate_matches_published_figures():
    config = llama_31_8b()
    bf16 = estimate(config, "bf16", "fp16", context=131_072)
    assert bf16.parameters.total == 8_030_261_248
    assert bf16.weights.total == 2 * 8_030_261_248
    assert bf16.kv_cache / GIB == pytest.approx(16.0)  # 131,072 tokens x 131,072 bytes
    int4 = estimate(config, "int4-g128", "fp16", context=131_072)
    # 6.98 B linear weights at 4.125 bits + 1.05 B embedding/head parameters at 16 bits
    linear = 8_030_261_248 - 2 * 128256 * 4096 - 65 * 4096
    assert int4.weights.total == pytest.approx(linear * 4.125 / 8 + (2 * 128256 * 4096 + 65 * 4096) * 2)
    assert int4.total < bf16.total - 9 * GIB
    chunked = estimate(config, "bf16", "fp16", context=131_072, prefill_chunk=8192)
    assert chunked.activations.prefill_layer == bf16.activations.prefill_layer / 16


def test_kv_formats_price_their_scales():
    assert kv_format(16).bits_per_value(128) == 16
    assert kv_format("int8").bits_per_value(128) == 8.25
    assert kv_format("kv4").bits_per_value(128) == 4.5
    assert kv_format("fp8").bits_per_value(128) == 8
    config = llama_31_8b()
    int8 = estimate(config, "bf16", "int8", context=4096)
    fp16 = estimate(config, "bf16", "fp16", context=4096)
    assert int8.kv_cache / fp16.kv_cache == pytest.approx(8.25 / 16)
    with pytest.raises(ValueError, match="unknown KV-cache format"):
        kv_format("int7")


def test_keys_and_values_in_different_formats_cost_the_sum_of_their_halves():
    """Keys fp8 (8 bits, one scale per tensor), values int4 (4 bits + an fp16 scale and zero per 64 values:
    4.5 bits): 32 layers x 8 KV heads x 128 values per token for each half."""
    config = llama_31_8b()
    apart = estimate(config, "bf16", "fp8", context=4096, kv_values="int4")
    half = 32 * 8 * 128 * 4096  # cached values per half
    assert apart.kv_cache == half * 8 / 8 + half * 4.5 / 8
    fp8, int4 = (estimate(config, "bf16", kv, context=4096) for kv in ("fp8", "int4"))
    assert apart.kv_cache == (fp8.kv_cache + int4.kv_cache) / 2
    assert apart.total - fp8.total == apart.kv_cache - fp8.kv_cache
    assert apart.kv_bytes_per_token == 32 * 8 * 128 * (8 + 4.5) / 8
    assert apart.kv_label == "K fp8 (8 bits/value), V int4 (4.5 bits/value)"
    assert estimate(config, "bf16", "fp8", context=4096, kv_values="fp8").kv_label == fp8.kv_label


def test_eager_attention_pays_for_the_score_matrix():
    config = llama_31_8b()
    sdpa = activations(config, 8192)
    eager = activations(config, 8192, attention="eager")
    assert sdpa.attention_scores == 0
    assert eager.attention_scores == 32 * 8192 * 8192 * 6  # heads x context^2 x (bf16 + fp32 softmax)
    assert eager.peak > 10 * sdpa.peak
    assert activations(config, 512, all_logits=True).logits == 512 * 128256 * 4


def test_catalog_gpus_load_and_h100_holds_8b_in_bf16_but_not_70b():
    assert len(gpu_catalog()) >= 12
    h100 = gpu("H100 80GB SXM")
    assert h100.memory_bytes == 81559 * 1024**2
    config = llama_31_8b()
    assert fits(estimate(config, "bf16", context=8192), config, h100)
    big = llama_31_8b()
    big.hidden_size, big.intermediate_size, big.num_hidden_layers, big.num_attention_heads = (
        8192,
        28672,
        80,
        64,
    )
    breakdown = estimate(big, "bf16", context=8192)
    assert breakdown.parameters.total == 70_553_706_496  # Llama-3.1-70B
    assert not fits(breakdown, big, h100)
    assert min_tensor_parallel(breakdown, big, h100) == 2
    assert min_tensor_parallel(estimate(big, "int4-g128", context=8192), big, h100) == 1


def test_kv_heads_are_replicated_beyond_their_count():
    config = llama_31_8b()  # 8 KV heads
    breakdown = estimate(config, "bf16", context=65536, overhead=0)
    eight, sixteen = per_gpu_bytes(breakdown, config, 8), per_gpu_bytes(breakdown, config, 16)
    kv_share_8 = eight - (breakdown.weights.total + breakdown.activations.peak) / 8
    kv_share_16 = sixteen - (breakdown.weights.total + breakdown.activations.peak) / 16
    assert kv_share_8 == pytest.approx(kv_share_16)  # each GPU keeps one whole KV head either way


def test_largest_context_is_the_edge_of_fitting():
    config = llama_31_8b()
    l4 = gpu("L4")

    def make(n):
        return estimate(config, "int4-g128", context=n)

    edge = largest_fitting(make, config, l4)
    assert 1000 < edge < 131_072
    assert fits(make(edge), config, l4) and not fits(make(edge + 1), config, l4)


def test_decode_roofline_and_moe_active_bytes():
    config = llama_31_8b()
    h100 = gpu("H100 80GB SXM")
    dense = decode_estimate(estimate(config, "bf16", context=1), h100)
    # bf16 8B reads ~15 GB per token at 3.35 TB/s: ~210 tok/s, the known batch-1 ceiling
    assert 190 < dense.tokens_per_s < 230
    int4 = decode_estimate(estimate(config, "int4-g128", context=1), h100)
    assert 2.5 < int4.tokens_per_s / dense.tokens_per_s < 3.5  # embedding rows aside, the head stays 16-bit


def test_mixtral_reads_only_two_of_eight_experts():
    from transformers import MixtralConfig

    config = MixtralConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_local_experts=8,
        num_experts_per_tok=2,
        vocab_size=32000,
    )
    breakdown = estimate(config, "bf16", context=1)
    assert breakdown.parameters.total == pytest.approx(46.70e9, rel=1e-3)  # Mixtral-8x7B: 46.7 B
    assert breakdown.parameters.active == pytest.approx(12.88e9, rel=5e-3)  # published: 12.9 B active
    assert breakdown.decode_bytes_per_token() < 0.3 * breakdown.weights.total


def test_serving_what_if_fills_the_reserve_with_kv():
    config = llama_31_8b()
    h100 = gpu("H100 80GB SXM")
    breakdown = estimate(config, "bf16", context=8192)
    serving = serving_what_if(breakdown, h100, utilization=0.9)
    per_token = breakdown.kv_cache / 8192
    assert serving.kv_tokens == int(serving.kv_capacity // per_token)
    assert 50 < serving.concurrent_sequences < 60  # ~57 GiB of KV at 128 KiB per token
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        serving_what_if(breakdown, h100, utilization=1.5)


def test_estimate_rejects_bad_context_and_batch():
    config = llama_31_8b()
    for context, batch in [(0, 1), (-5, 1), (10, 0), (True, 1)]:
        with pytest.raises(ValueError, match="context|batch"):
            estimate(config, context=context, batch=batch)


def test_estimate_matches_real_bytes_of_the_default_model(default_loaded):
    comparison = weights_vs_real_bytes(default_loaded.model)
    assert abs(comparison.difference) < 0.01
    real = sum(p.numel() * p.element_size() for p in default_loaded.model.parameters())
    assert comparison.measured >= real  # buffers (rotary frequencies) on top


def test_measured_bytes_count_tied_weights_once(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from engine.sizing.estimate import measured_bytes

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    by_kind = measured_bytes(model)
    parameters = sum(p.numel() * 4 for p in model.parameters())
    assert sum(v for k, v in by_kind.items() if k != "buffers") == parameters
    model.to(torch.bfloat16)
    assert sum(measured_bytes(model).values()) < sum(by_kind.values())


def test_cli_prints_the_breakdown(capsys):
    from engine.sizing.cli import main

    code = main(
        [
            "--config",
            "llama-3.1-8b",
            "--weights",
            "bf16,int4-g128",
            "--kv",
            "8",
            "--context",
            "32768",
            "--batch",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "8.030 B parameters" in out and "int4 g128" in out and "H100" in out
    code = main(["--config", "llama-3.1-8b", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["kv_bytes_per_token"] == 131_072


def test_cli_explains_unknown_models(capsys):
    from engine.sizing.cli import main

    assert main(["--config", "llama-9-800b"]) == 2
    assert "error:" in capsys.readouterr().err


def test_falcon_kv_heads_come_from_its_own_field():
    from engine.sizing.catalog import catalog_model
    from engine.sizing.estimate import kv_bytes_per_token

    falcon = catalog_model("falcon-180b").config()
    assert kv_bytes_per_token(falcon) == 2 * 80 * 8 * 64 * 2  # 8 KV heads of 64, not 232 heads: 160 KiB


@pytest.mark.parametrize(
    ("slug", "active"),
    [("deepseek-v3", 37e9), ("qwen3-30b-a3b", 3.3e9), ("mixtral-8x22b-v0.1", 39e9)],
)
def test_moe_active_parameters_match_published_figures(slug, active):
    from engine.sizing.catalog import catalog_model

    counts = estimate(catalog_model(slug).config(), "bf16", context=1).parameters
    assert counts.active == pytest.approx(active, rel=0.025)  # published figures are rounded


def test_cli_as_a_module_raises_no_runtime_warning():
    """`python -m engine.sizing` imports its package once: no "found in sys.modules" RuntimeWarning."""
    command = [
        sys.executable,
        "-W",
        "error::RuntimeWarning",
        "-m",
        "engine.sizing",
        "--config",
        "llama-3.1-8b",
    ]
    command += ["--weights", "bf16,int4-g128", "--kv", "int8"]
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "RuntimeWarning" not in result.stderr
    assert "8.030 B parameters" in result.stdout and "int4 g128" in result.stdout
