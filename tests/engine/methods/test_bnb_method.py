"""bitsandbytes through the registry on CPU: our NF4 within rounding, honest bits, LLM.int8() outliers, saving."""

from __future__ import annotations

import math

import pytest
import torch

from engine.methods.bnb import BnbConfig, bnb_linear, dequantized_weight, stored_bytes
from engine.methods.registry import quantize_model
from engine.methods.rtn import RTNConfig
from engine.quant.primitives import fake_quantize
from engine.quant.schemes import QuantScheme, bits_per_weight
from tests.engine.methods.test_llm_int8 import logits, planted_llama, relative

pytestmark = pytest.mark.usefixtures("single_thread")

NF4 = QuantScheme(4, "nf4", granularity="group", group_size=64, scale_dtype="float32")  # bnb's layout


@pytest.fixture(scope="module")
def planted():
    return planted_llama()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 96, (4, 32), generator=torch.Generator().manual_seed(1))


def linear_576(out_features: int = 192) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(576, out_features, bias=False)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_layer_matches_our_fake_quant(quant_type):
    linear = linear_576()
    layer = bnb_linear(linear, BnbConfig(quant_type).transformers_config())
    ours = fake_quantize(
        linear.weight.detach(),
        QuantScheme(4, quant_type, granularity="group", group_size=64, scale_dtype="float32"),
    )
    assert torch.equal(dequantized_weight(layer), ours)  # same codes, same fp32 absmax
    x = torch.randn(3, 17, 576, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, ours), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            layer(x[:, :1]), torch.nn.functional.linear(x[:, :1], ours), rtol=1e-5, atol=1e-5
        )


def test_nf4_model_matches_rtn_nf4_within_rounding(planted, ids):
    reference = logits(planted, ids)
    bnb_model = quantize_model(planted, BnbConfig("nf4")).model
    ours = quantize_model(planted, RTNConfig(NF4)).model
    theirs_logits, ours_logits = logits(bnb_model, ids), logits(ours, ids)
    assert relative(theirs_logits, ours_logits) < 1e-4 < 0.05 < relative(ours_logits, reference)
    assert type(bnb_model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    assert isinstance(bnb_model.lm_head, torch.nn.Linear)  # the head stays unquantized
    settings = bnb_model.config.quantization_config
    assert settings.bnb_4bit_quant_type == "nf4" and settings.load_in_4bit
    assert getattr(planted.config, "quantization_config", None) is None  # only the copy carries it


def test_bits_per_weight_come_from_the_stored_tensors():
    linear = linear_576(576)
    numel, blocks = 576 * 576, 576 * 576 // 64
    nf4 = stored_bytes(bnb_linear(linear, BnbConfig("nf4").transformers_config()))
    assert nf4["codes"] == numel // 2 and nf4["statistics"] == 4 * blocks  # fp32 absmax per 64
    assert 0 < nf4["other"] < 256  # the 16-entry codebook and a packed description
    dq = stored_bytes(bnb_linear(linear, BnbConfig("nf4", double_quant=True).transformers_config()))
    # 8-bit absmax codes plus an fp32 absmax per 256 of them (the mean offset sits in the packed description)
    assert dq["statistics"] == blocks + 4 * math.ceil(blocks / 256)
    assert dq["other"] > 1024  # the 256-entry fp32 table of the second quantization is stored too
    int8 = stored_bytes(bnb_linear(linear, BnbConfig("int8").transformers_config()))
    assert int8 == {"codes": numel, "statistics": 4 * 576, "other": 1}  # CB, SCB, weight_format byte
    bits = {
        name: 8 * sum(parts.values()) / numel for name, parts in (("nf4", nf4), ("dq", dq), ("int8", int8))
    }
    assert bits["nf4"] == pytest.approx(bits_per_weight(NF4, 576, 576), abs=0.005)  # 4.5 + the codebook
    assert 4.12 < bits["dq"] < 4.16 < bits["nf4"]
    assert bits["int8"] == pytest.approx(8 + 32 / 576, abs=1e-4)


def test_report_carries_bits_sqnr_and_calibrated_errors(planted, ids):
    result = quantize_model(planted, BnbConfig("fp4", double_quant=True), calib=ids)
    assert len(result.layers) == 14
    for report in result.layers:
        assert report.detail.mode == "fp4" and report.detail.codes_bytes > 0
        assert report.bits_per_weight > 4.5  # tiny layers: the stored tables weigh in
        assert 12 < report.weight_sqnr_db < 25 and 0 < report.output_error < 0.5
    assert BnbConfig("fp4", double_quant=True).label == "bnb fp4 dq"


def test_int8_mode_keeps_outliers_on_cpu(planted, ids):
    reference = logits(planted, ids)
    decomposed = quantize_model(planted, BnbConfig("int8")).model
    plain = quantize_model(planted, BnbConfig("int8", int8_threshold=0.0)).model
    assert relative(logits(decomposed, ids), reference) < 0.5 * relative(logits(plain, ids), reference)
    layer = decomposed.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == "Linear8bitLt" and not layer.training
    assert 7 in layer.state.idx.tolist()  # the planted channel ran in 16-bit


def test_saving_after_inference_writes_what_was_quantized(planted, ids, tmp_path):
    """CPU repacking is off: a forward changes nothing, and save_pretrained round-trips the logits."""
    from transformers import AutoModelForCausalLM

    model = quantize_model(planted, BnbConfig("nf4", double_quant=True)).model
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    first = logits(model, ids)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu")
    for module in reloaded.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False  # the same generic CPU path as ours
    torch.testing.assert_close(logits(reloaded, ids), first, rtol=1e-5, atol=1e-6)


def test_configs_are_validated():
    with pytest.raises(ValueError, match="mode must be one of int8, nf4, fp4"):
        BnbConfig("int4")
    with pytest.raises(ValueError, match="double quantization compresses 4-bit block statistics"):
        BnbConfig("int8", double_quant=True)
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        BnbConfig("nf4", compute_dtype="float64")
    assert BnbConfig("int8").transformers_config().llm_int8_threshold == 6.0
    assert (
        BnbConfig("nf4", compute_dtype="bfloat16").transformers_config().bnb_4bit_compute_dtype
        == torch.bfloat16
    )


@pytest.mark.slow
def test_default_model_nf4_perplexity_matches_ours(default_loaded):
    """The issue's cross-check on the real model: bitsandbytes NF4 vs our NF4 fake-quant, same perplexity."""
    from engine.evaluation.perplexity import perplexity
    from engine.models.data import WindowSpec, load_text, token_windows

    windows = token_windows(
        default_loaded.tokenizer, load_text("britannica"), WindowSpec(256, 2, split="evaluation")
    )
    theirs = quantize_model(default_loaded.model, BnbConfig("nf4"))
    theirs_ppl = perplexity(theirs.model, windows).perplexity
    del theirs.model
    ours_ppl = perplexity(quantize_model(default_loaded.model, RTNConfig(NF4)).model, windows).perplexity
    print(
        f"\nNF4 perplexity: bitsandbytes {theirs_ppl:.4f} vs ours {ours_ppl:.4f} ({theirs.bits_per_weight:.3f} bits)"
    )
    assert theirs_ppl == pytest.approx(ours_ppl, rel=1e-3)
    assert 4.5 < theirs.bits_per_weight < 4.51  # fp32 absmax per 64, plus each layer's codebook
