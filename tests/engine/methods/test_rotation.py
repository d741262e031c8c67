"""Rotation (QuaRot): folding + rotating computes the same function, spreads the outliers, and makes W4A4 work.

Tiny random Llamas check the logic; the default model (SmolLM2-135M) checks the claims.
"""

from __future__ import annotations

import pytest
import torch

from engine.analysis.rotation_stats import rotation_stats
from engine.methods.registry import method_info, quantize_model
from engine.methods.rotation import OnlineHadamardMLP, RotationConfig, RotationDetail
from engine.methods.rtn import RTNConfig
from engine.models.data import WindowSpec, load_text, token_windows
from engine.quant.linear import FakeQuantLinear
from engine.quant.metrics import relative_error
from engine.quant.schemes import QuantScheme
from engine.recipes import get
from tests.conftest import build_tiny_llama, checksum

W4A4_TINY = RTNConfig(QuantScheme(4, "int", True, "group", 32), QuantScheme(4))
IDS = torch.randint(3, 96, (2, 24), generator=torch.Generator().manual_seed(0))


def tiny(**overrides):
    """A tiny random Llama whose norms scale their channels (they start at 1: nothing to fold)."""
    model = build_tiny_llama(**overrides)
    generator = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.data = torch.rand(param.shape, generator=generator) + 0.5
    return model


@torch.no_grad()
def logits(model, ids=IDS):
    return model(input_ids=ids, use_cache=False).logits.float()


@pytest.mark.parametrize("rotate_values", [False, True])
@pytest.mark.parametrize("online_down", [False, True])
def test_tiny_model_computes_the_same_function(rotate_values, online_down):
    model = tiny(tie_word_embeddings=True, attention_bias=True, mlp_bias=True)  # biases everywhere
    before = checksum(model)
    result = quantize_model(model, RotationConfig(rotate_values=rotate_values, online_down=online_down))
    assert checksum(model) == before  # the registry's copy was rotated, never the model given
    assert relative_error(logits(model), logits(result.model)) < 1e-3
    rotated = result.model
    assert rotated.lm_head.weight.data_ptr() != rotated.model.embed_tokens.weight.data_ptr()  # untied
    assert not rotated.config.tie_word_embeddings
    assert torch.equal(rotated.model.layers[0].input_layernorm.weight, torch.ones(64))  # γ folded
    assert not torch.allclose(rotated.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert isinstance(rotated.model.layers[1].mlp, OnlineHadamardMLP) == online_down
    assert len(result.layers) == 14 and all(isinstance(r.detail, RotationDetail) for r in result.layers)
    out = rotated.generate(IDS[:1, :5], max_new_tokens=4, do_sample=False)
    assert torch.equal(out, model.generate(IDS[:1, :5], max_new_tokens=4, do_sample=False))


def test_rotated_model_survives_save_and_reload(tmp_path):
    from transformers import LlamaForCausalLM

    model = tiny(tie_word_embeddings=True)
    rotated = quantize_model(model, RotationConfig(rotate_values=True)).model
    rotated.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert not torch.equal(reloaded.lm_head.weight, reloaded.model.embed_tokens.weight)  # stays untied
    assert relative_error(logits(model), logits(reloaded)) < 1e-3


def test_a_width_without_hadamard_falls_back_and_says_so():
    model = tiny(hidden_size=52, num_attention_heads=2, num_key_value_heads=2)  # 52: no Hadamard
    result = quantize_model(model, RotationConfig(rotate_values=True))
    note = result.layers[0].detail.note
    assert "no Hadamard construction of order 52: a random orthogonal matrix instead" in note
    assert "order 26" in note  # the head_dim of the V/O rotation, too
    assert relative_error(logits(model), logits(result.model)) < 1e-3


def test_layernorm_model_is_refused_with_the_reason():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=96, n_embd=32, n_layer=1, n_head=2, n_positions=64, bos_token_id=1, eos_token_id=2
        )
    ).eval()
    with pytest.raises(ValueError, match="uses LayerNorm with a bias; folding needs RMSNorm"):
        quantize_model(gpt2, RotationConfig())


def test_config_refuses_what_it_cannot_compose():
    with pytest.raises(ValueError, match="cannot be another rotation"):
        RotationConfig(then=RotationConfig())
    with pytest.raises(ValueError, match="no quantization method registered for dict"):
        RotationConfig(then={"bits": 4})
    with pytest.raises(ValueError, match="RotationKind"):
        RotationConfig(kind="hadamard")
    assert method_info(RotationConfig).detail_type is RotationDetail
    assert RotationConfig(online_down=True, then=W4A4_TINY).label == "Rotation (online down) + W4A4"


def test_then_quantizes_the_rotated_copy():
    model = tiny()
    result = quantize_model(model, RotationConfig(online_down=True, then=W4A4_TINY))
    plain = quantize_model(model, W4A4_TINY)
    assert [r.name for r in result.layers] == [r.name for r in plain.layers]
    assert result.bits_per_weight == pytest.approx(plain.bits_per_weight)  # the then method's bits
    mlp = result.model.model.layers[0].mlp
    assert isinstance(mlp, OnlineHadamardMLP) and isinstance(mlp.down_proj, FakeQuantLinear)  # kept its H
    detail = result.layers[0].detail
    assert isinstance(detail, RotationDetail) and detail.max_over_rms_after > 0
    assert relative_error(logits(model), logits(result.model)) < 0.5  # quantized, but the same model


# -- the default model -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def windows(default_loaded):
    text = load_text("britannica")
    return token_windows(default_loaded.tokenizer, text, WindowSpec(128, 2, split="evaluation"))


@pytest.fixture(scope="module")
def rotated_default(default_loaded):
    before = checksum(default_loaded.model)
    rotated = quantize_model(default_loaded.model, RotationConfig(rotate_values=True, online_down=True)).model
    assert checksum(default_loaded.model) == before
    return rotated


def test_default_model_computes_the_same_function(default_loaded, rotated_default, windows):
    assert relative_error(logits(default_loaded.model, windows[:1, :64]), logits(rotated_default, windows[:1, :64])) < 1e-3  # fmt: skip


def test_rotation_spreads_the_massive_activations(default_loaded, rotated_default, windows):
    stats = rotation_stats(default_loaded.model, rotated_default, windows[:, :64])
    assert stats.before.layers[12].top_channel == 507
    # measured on 2 x 64 tokens: max / RMS 23.8 -> 4.3 (5.6x; a rotation keeps each token's norm, so on a
    # 576-wide residual it cannot exceed √576 / ~3), channel spread 522 -> 2.7 (190x)
    assert stats.ratio_drop > 4
    assert stats.spread_drop > 30
    kurtosis = [(b.input_kurtosis["attention input"], a.input_kurtosis["attention input"])
                for b, a in zip(stats.before.layers, stats.after.layers, strict=True)]  # fmt: skip
    assert all(after < 4 < 20 < before for before, after in kurtosis)  # ~Gaussian (3) after, 58-435 before


def test_rotation_makes_w4a4_work(default_loaded, windows):
    from engine.evaluation.perplexity import perplexity

    w4a4 = get("W4A4").for_module(default_loaded.model).method
    plain = perplexity(quantize_model(default_loaded.model, w4a4).model, windows).perplexity
    config = RotationConfig(online_down=True, then=w4a4)
    rotated = perplexity(quantize_model(default_loaded.model, config).model, windows).perplexity
    # measured on these 2 x 128 tokens: plain W4A4 12,217, rotated + online down 439 (float: 66.5)
    assert rotated * 8 < plain
