"""LLM.int8(): outlier dims kept in 16-bit beat plain W8A8 when outliers exist, and the kept dims are reported."""

from __future__ import annotations

import math

import pytest
import torch

from engine.methods import llm_int8 as llm_int8_module
from engine.methods.llm_int8 import (
    LLMInt8Config,
    LLMInt8Detail,
    LLMInt8Linear,
    int8_matmul,
    vectorwise_quantize,
)
from engine.methods.registry import quantize_model
from engine.methods.rtn import RTNConfig
from engine.quant.primitives import fake_quantize
from engine.quant.schemes import QuantScheme
from tests.conftest import build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")

PLANTED = 7  # the input channel made an outlier in every layer
W8_FP32 = QuantScheme(8, scale_dtype="float32")  # per-row absmax / 127 with fp32 scales, as LLM.int8()


def planted_llama():
    """A tiny random Llama whose norms scale channel 7 by 50: |x_7| ~ 50 at every q/k/v and gate/up input."""
    model = build_tiny_llama()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[PLANTED] *= 50
            layer.post_attention_layernorm.weight[PLANTED] *= 50
    return model


@pytest.fixture(scope="module")
def planted():
    return planted_llama()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 96, (8, 32), generator=torch.Generator().manual_seed(1))


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def relative(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_decomposition_beats_plain_w8a8_when_outliers_are_planted(planted, ids):
    reference = logits(planted, ids)
    int8 = quantize_model(planted, LLMInt8Config(), calib=ids).model
    w8a8 = quantize_model(planted, RTNConfig(QuantScheme(8), QuantScheme(8))).model
    ours, naive = relative(logits(int8, ids), reference), relative(logits(w8a8, ids), reference)
    assert ours < 0.5 * naive, (ours, naive)


def test_kept_dims_contain_the_planted_channel_and_little_else(planted, ids):
    result = quantize_model(planted, LLMInt8Config(), calib=ids)
    by_name = {r.name: r for r in result.layers}
    for index in range(2):
        for reader in ("self_attn.q_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            detail = by_name[f"model.layers.{index}.{reader}"].detail
            assert PLANTED in detail.outlier_dims
            assert detail.fraction <= 0.1  # 64 dims: the planted one and at most a few random crossings
            assert detail.tokens == ids.numel()
            at = detail.outlier_dims.index(PLANTED)
            assert detail.max_abs[at] > 20 and detail.outlier_tokens[at] > ids.numel() // 2
    for report in result.layers:
        assert report.output_error is not None and report.output_error < 0.05
        assert report.bits_per_weight == pytest.approx(8 + 32 / (128 if "down_proj" in report.name else 64))
        assert report.weight_sqnr_db > 35
    module = result.model.model.layers[0].self_attn.q_proj
    assert isinstance(module, LLMInt8Linear) and not module.recording  # recording stops after calibration
    before = module.outlier_tokens.clone()
    logits(result.model, ids)
    assert torch.equal(module.outlier_tokens, before)


def test_threshold_inf_equals_plain_vectorwise_int8(planted, ids):
    """No decomposition: exactly per-row int8 weights x per-token int8 activations (fp32 scales)."""
    pure = quantize_model(planted, LLMInt8Config(math.inf), calib=ids)
    plain = quantize_model(planted, RTNConfig(W8_FP32, W8_FP32)).model
    assert all(r.detail.outlier_dims == [] and r.detail.tokens == ids.numel() for r in pure.layers)
    reference, ours, theirs = logits(planted, ids), logits(pure.model, ids), logits(plain, ids)
    # layer outputs agree to ~1e-7; a rare rounding tie flipping one activation code (x * 127 / absmax
    # vs x / scale) grows through the coarse outlier-dominated layers to ~0.1% of the logits
    assert relative(ours, theirs) < 0.05 * relative(theirs, reference)
    x = torch.randn(5, 3, 64, generator=torch.Generator().manual_seed(2)) * 3
    linear = torch.nn.Linear(64, 48)
    expected = torch.nn.functional.linear(
        fake_quantize(x.reshape(-1, 64), W8_FP32).view_as(x),
        fake_quantize(linear.weight.detach(), W8_FP32),
        linear.bias,
    )
    torch.testing.assert_close(LLMInt8Linear.from_linear(linear, math.inf)(x), expected, rtol=1e-5, atol=1e-5)


def test_outlier_columns_run_in_full_precision():
    """Kept columns multiply the unquantized input; the rest is per-token int8 of the remaining columns."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(16, 64, generator=generator)  # (tokens, in)
    x[3, 10] = 40.0  # one token crosses the threshold: the whole column is kept, for every token
    linear = torch.nn.Linear(64, 32, bias=False)
    module = LLMInt8Linear.from_linear(linear, 6.0)
    assert module.outlier_dims(x).tolist() == [10]
    weight = module.dequantized_weight()  # (out, in)
    regular = x.clone()
    regular[:, 10] = 0
    expected = fake_quantize(regular, W8_FP32) @ weight.t() + x[:, 10:11] @ weight[:, 10:11].t()
    torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)


def test_int8_matmul_paths_agree(monkeypatch):
    generator = torch.Generator().manual_seed(4)
    a = torch.randint(-127, 128, (33, 576), generator=generator, dtype=torch.int8)
    b = torch.randint(-127, 128, (40, 576), generator=generator, dtype=torch.int8)
    exact = a.long() @ b.long().t()
    for fast in (True, False):
        monkeypatch.setattr(llm_int8_module, "_FAST_CPU_INT_MM", fast)
        if fast and torch.backends.cpu.get_cpu_capability() != "AVX512":
            continue
        assert torch.equal(int8_matmul(a, b), exact.float())
    codes, absmax = vectorwise_quantize(torch.zeros(2, 8))  # all-zero rows stay zero, no NaN
    assert torch.equal(codes, torch.zeros(2, 8, dtype=torch.int8)) and torch.equal(absmax, torch.zeros(2))


def test_matches_bitsandbytes_linear8bitlt():
    """Same decomposition as bitsandbytes' CPU LLM.int8(): same kept columns, outputs within rounding."""
    from engine.methods.bnb import BnbConfig, bnb_linear

    generator = torch.Generator().manual_seed(5)
    linear = torch.nn.Linear(128, 96)
    x = torch.randn(2, 24, 128, generator=generator)
    x[..., 5] *= 12
    x[0, 3, 77] = -30.0
    reference = linear(x).detach()
    ours = LLMInt8Linear.from_linear(linear, 6.0)
    theirs = bnb_linear(linear, BnbConfig("int8").transformers_config())
    with torch.no_grad():
        ours_out, theirs_out = ours(x), theirs(x)
    assert theirs.state.idx.tolist() == ours.outlier_dims(x.reshape(-1, 128)).tolist() == [5, 77]
    assert relative(ours_out, theirs_out) < 0.01  # fp16 casts and the row absmax rule differ slightly
    assert relative(ours_out, reference) < 1.1 * relative(theirs_out, reference)


def test_without_calibration_the_model_still_runs(planted, ids):
    result = quantize_model(planted, LLMInt8Config())
    assert all(r.output_error is None and r.detail == LLMInt8Detail(6.0) for r in result.layers)
    assert torch.isfinite(logits(result.model, ids)).all()


def test_config_is_validated():
    for bad in (0, -1.0, True, "6"):
        with pytest.raises(ValueError, match="threshold must be a positive number"):
            LLMInt8Config(bad)
    assert LLMInt8Config(6).threshold == 6.0 and LLMInt8Config().label == "LLM.int8()"
    assert hash(LLMInt8Config()) == hash(LLMInt8Config(6.0))


@pytest.mark.slow
def test_default_model_keeps_perplexity_and_reports_feature_247(default_loaded):
    from engine.evaluation.perplexity import perplexity
    from engine.models.data import WindowSpec, load_text, token_windows

    tokenizer, model = default_loaded.tokenizer, default_loaded.model
    text = load_text("britannica")
    calib = token_windows(tokenizer, text, WindowSpec(256, 4))
    windows = token_windows(tokenizer, text, WindowSpec(256, 4, split="evaluation"))
    reference = perplexity(model, windows).perplexity
    result = quantize_model(model, LLMInt8Config(), calib=calib)
    ours = perplexity(result.model, windows).perplexity
    del result.model
    pure = perplexity(quantize_model(model, LLMInt8Config(math.inf)).model, windows).perplexity
    kept = {}
    for report in result.layers:
        for dim in report.detail.outlier_dims:
            kept[dim] = kept.get(dim, 0) + 1
    residual_readers = [r for r in result.layers if r.name.endswith(("q_proj", "gate_proj"))]
    with_247 = [r.name for r in residual_readers if 247 in r.detail.outlier_dims]
    top = sorted(kept.items(), key=lambda item: -item[1])[:5]
    print(
        f"\nLLM.int8() perplexity {ours:.3f} vs reference {reference:.3f} ({ours / reference - 1:+.2%}); "
        f"without decomposition {pure:.3f}; most kept dims {top}; 247 kept at {len(with_247)} residual readers"
    )
    assert ours < reference * 1.03  # measured +2.3% on 4 x 256 tokens (bitsandbytes' int8: +1.7%)
    assert ours < pure  # the decomposition is what keeps int8 close
    assert len(with_247) >= 5 and top[0][0] == 247  # SmolLM2's residual-stream outlier feature
