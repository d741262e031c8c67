"""GGUF block types as a method (engine.methods.gguf): llama.cpp's per-tensor fallback, honest bits, real weights.

- The default model (SmolLM2: rows of 576 and 1536): a Q4_0 model is exactly `fake_quantize(w, Q4_0)` on every
  linear; a Q4_K model keeps Q4_K only on the down projections (rows of 1536) and falls back to Q5_0 on the
  576-long rows, as llama.cpp does, and says so in its reports, bits and packed bytes; the model was shipped as
  Q4_1, so a Q4_1 model is the reference itself (weights and perplexity).
- Tiny random Llamas for the rules: fallback to F16 when not even blocks of 32 fit, a legacy type refused with
  the tensor's name, embeddings (tied and untied).
- File-level mixes (Q4_K_M): each tensor at its rule's type (engine.quant.gguf.mixes, whose own tests check
  the rules by hand), the model's bits per weight the sum over its tensors, and its packed bytes the Memory
  page's Q4_K_M estimate for the same config, to the byte.
"""

from __future__ import annotations

import pytest
import torch

from engine.methods import GGUFConfig, method_info, quantize_model
from engine.methods.gguf import FALLBACK, GGUFDetail, tensor_type
from engine.quant.gguf import (
    Q2_K,
    Q3_K,
    Q4_0,
    Q4_1,
    Q4_K,
    Q5_0,
    Q5_1,
    Q5_K,
    Q6_K,
    Q8_0,
    fake_quantize,
    gguf_type,
)
from engine.quant.gguf.mixes import Q4_K_M, gguf_mix
from engine.quant.linear import linear_names
from engine.sizing.packed import packed_weight_bytes
from tests.conftest import build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")


def used(quantized) -> dict[str, str]:
    return {r.name: r.detail.used_name for r in quantized.layers}


def weights(model) -> dict[str, torch.Tensor]:
    return {name: model.get_submodule(name).weight for name in linear_names(model)}


# --- the rules -------------------------------------------------------------------------------------------


def test_the_fallback_table_is_llama_cpps():
    assert FALLBACK == {Q2_K: Q4_0, Q3_K: Q4_0, Q4_K: Q5_0, Q5_K: Q5_1, Q6_K: Q8_0}
    assert tensor_type(Q4_K, 1536) is Q4_K and tensor_type(Q4_K, 576) is Q5_0
    assert tensor_type(Q6_K, 576) is Q8_0 and tensor_type(Q2_K, 576) is Q4_0
    assert tensor_type(Q4_K, 48) is None  # not even blocks of 32: stored F16
    assert tensor_type(Q4_0, 576) is Q4_0
    with pytest.raises(ValueError, match="Q4_0 packs rows in blocks of 32 .* rows of 48"):
        tensor_type(Q4_0, 48)


def test_config_label_validation_and_registry():
    assert GGUFConfig(Q4_K).label == "GGUF Q4_K"
    assert GGUFConfig(gguf_type("q6_k"), include_embeddings=True).label == "GGUF Q6_K + embeddings"
    with pytest.raises(ValueError, match="GGUF block type"):
        GGUFConfig("Q4_K")
    with pytest.raises(ValueError, match="True or False"):
        GGUFConfig(Q4_K, include_embeddings=1)
    info = method_info(GGUFConfig(Q4_K))
    assert (info.name, info.detail_type) == ("GGUF (llama.cpp)", GGUFDetail)
    assert hash(GGUFConfig(Q4_K)) == hash(GGUFConfig(gguf_type("Q4_K")))  # a cache key


def test_mix_config_label_and_validation():
    assert GGUFConfig(Q4_K_M).label == "GGUF Q4_K_M"
    assert GGUFConfig(gguf_mix("q5_k_m"), include_embeddings=True).label == "GGUF Q5_K_M + embeddings"
    assert hash(GGUFConfig(Q4_K_M)) == hash(GGUFConfig(gguf_mix("Q4_K_M")))  # a cache key
    with pytest.raises(ValueError, match="or a mix such as Q4_K_M"):
        GGUFConfig("Q4_K_M")


def test_tiny_model_q4_k_m_types_bits_and_bytes_match_the_memory_estimate():
    """4 layers of 256 (every row fits 256, so no fallback): use_more_bits(i, 4) picks layers 2 and 3
    (4 // 8 = 0, 7 * 4 // 8 = 3, (i - 0) % 3 == 2), so v and down are Q6_K there and Q4_K on 0-1; the
    untied head is Q6_K and the embedding Q4_K. Each weight is that type's fake quantization."""
    from engine.sizing.estimate import estimate

    model = build_tiny_llama(
        hidden_size=256, intermediate_size=256, num_hidden_layers=4, num_key_value_heads=1
    )
    quantized = quantize_model(model, GGUFConfig(Q4_K_M, include_embeddings=True))
    types = used(quantized)
    expected = {"model.embed_tokens": Q4_K, "lm_head": Q6_K}
    for i in range(4):
        for name in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
        ):
            expected[f"model.layers.{i}.{name}"] = Q4_K
        for name in ("self_attn.v_proj", "mlp.down_proj"):
            expected[f"model.layers.{i}.{name}"] = Q6_K if i >= 2 else Q4_K
    assert types == {name: t.name for name, t in expected.items()}
    for name in ("model.layers.2.self_attn.v_proj", "model.layers.0.mlp.down_proj", "lm_head"):
        original, t = model.get_submodule(name).weight, expected[name]  # one of each kind of rule
        assert torch.equal(quantized.model.get_submodule(name).weight, fake_quantize(original, t)), name
    # Bits per weight come out of the model: the size-weighted sum over its tensors, by hand.
    counts = {name: model.get_submodule(name).weight.numel() for name in expected}
    by_hand = sum(expected[n].bits_per_weight * c for n, c in counts.items()) / sum(counts.values())
    assert quantized.bits_per_weight == pytest.approx(by_hand) and 4.5 < by_hand < 6.5625
    # The Memory page's Q4_K_M preset prices the same tensors from the config alone (norms F32, as held
    # here in float32); the model also holds its rotary buffer, which is not a weight.
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert packed_weight_bytes(quantized) == estimate(model.config, "Q4_K_M").weights.total + buffers


def test_tiny_model_k_quant_types_per_tensor():
    """Rows of 256 take Q4_K, rows of 320 fall back to Q5_0; each weight is that type's fake quantization."""
    model = build_tiny_llama(hidden_size=256, intermediate_size=320)
    quantized = quantize_model(model, GGUFConfig(Q4_K))
    types = used(quantized)
    assert len(types) == 14 and "lm_head" not in types
    for name, weight in weights(model).items():
        expected = Q5_0 if name.endswith("down_proj") else Q4_K
        assert types[name] == expected.name, name
        assert torch.equal(quantized.model.get_submodule(name).weight, fake_quantize(weight, expected)), name
    report = {r.name: r for r in quantized.layers}
    assert report["model.layers.0.mlp.down_proj"].detail.fell_back
    assert report["model.layers.0.mlp.down_proj"].bits_per_weight == 5.5
    assert report["model.layers.0.mlp.up_proj"].bits_per_weight == 4.5
    assert not report["model.layers.0.mlp.up_proj"].detail.fell_back
    assert torch.equal(quantized.model.lm_head.weight, model.lm_head.weight)  # head untouched by default


def test_tiny_model_f16_when_no_block_fits_and_legacy_refused():
    """Rows of 48 fit neither 256 nor 32: llama.cpp stores them F16 for a k-quant, refuses a legacy type."""
    model = build_tiny_llama(
        hidden_size=48, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2
    )
    quantized = quantize_model(model, GGUFConfig(Q6_K))
    report = {r.name: r for r in quantized.layers}
    q = report["model.layers.0.self_attn.q_proj"]
    assert (q.detail.used, q.detail.used_name, q.bits_per_weight) == (None, "F16", 16.0)
    original = model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(quantized.model.model.layers[0].self_attn.q_proj.weight, original.half().float())
    assert report["model.layers.0.mlp.down_proj"].detail.used is Q8_0  # rows of 128: Q6_K's fallback
    with pytest.raises(
        ValueError, match=r"model\.layers\.0\.self_attn\.q_proj: Q5_1 packs rows in blocks of 32"
    ):
        quantize_model(model, GGUFConfig(Q5_1))


def test_tiny_model_embeddings_untied_and_tied():
    untied = build_tiny_llama(hidden_size=64)
    quantized = quantize_model(untied, GGUFConfig(Q8_0, include_embeddings=True))
    types = used(quantized)
    assert types["model.embed_tokens"] == types["lm_head"] == "Q8_0" and len(types) == 16
    assert torch.equal(quantized.model.lm_head.weight, fake_quantize(untied.lm_head.weight, Q8_0))

    tied = build_tiny_llama(hidden_size=64, tie_word_embeddings=True)
    quantized = quantize_model(tied, GGUFConfig(Q8_0, include_embeddings=True))
    assert "lm_head" not in used(quantized) and "model.embed_tokens" in used(quantized)
    embedding = quantized.model.model.embed_tokens.weight
    assert quantized.model.lm_head.weight is embedding  # still tied, quantized once
    assert torch.equal(embedding, fake_quantize(tied.model.embed_tokens.weight, Q8_0))
    # Packed: the shared tensor counted once, at 8.5 bits; everything else as held.
    vocab, hidden = embedding.shape
    linears = sum(w.numel() for w in weights(tied).values())
    held = packed_weight_bytes(tied)
    assert packed_weight_bytes(quantized) == held - (vocab * hidden + linears) * 4 + round(
        8.5 * vocab * hidden / 8
    ) + sum(round(8.5 * w.numel() / 8) for w in weights(tied).values())


# --- the default model (SmolLM2-135M: rows of 576 and 1536) ----------------------------------------------


@pytest.mark.slow
def test_default_model_q4_0_is_fake_quantize_of_every_linear(default_loaded):
    model = default_loaded.model
    quantized = quantize_model(model, GGUFConfig(Q4_0))
    originals = weights(model)
    assert len(quantized.layers) == len(originals) == 210
    assert set(used(quantized).values()) == {"Q4_0"}
    for name, weight in originals.items():
        assert torch.equal(quantized.model.get_submodule(name).weight, fake_quantize(weight, Q4_0)), name
    assert quantized.bits_per_weight == 4.5
    linears = sum(w.numel() for w in originals.values())
    assert packed_weight_bytes(quantized) == packed_weight_bytes(model) - linears * 4 + round(
        linears * 4.5 / 8
    )


@pytest.mark.slow
def test_default_model_q4_1_is_the_shipped_model(default_loaded):
    """SmolLM2 was distributed as Q4_1: re-quantizing gives back every weight and the same perplexity."""
    from engine.evaluation.perplexity import perplexity
    from engine.models.data import WindowSpec, load_text, token_windows

    model = default_loaded.model
    quantized = quantize_model(model, GGUFConfig(Q4_1))
    assert set(used(quantized).values()) == {"Q4_1"} and quantized.bits_per_weight == 5.0
    for name, weight in weights(model).items():
        assert torch.equal(quantized.model.get_submodule(name).weight, weight), name
    windows = token_windows(
        default_loaded.tokenizer, load_text("britannica"), WindowSpec(128, 1, split="evaluation")
    )
    assert perplexity(quantized.model, windows).perplexity == perplexity(model, windows).perplexity
