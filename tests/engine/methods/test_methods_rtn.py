"""RTN through the method registry: a new model every time, errors that fall with bits, clear refusals."""

from __future__ import annotations

import pytest
import torch

from engine.methods import RTNConfig, quantize_model
from engine.quant.linear import FakeQuantLinear
from engine.quant.schemes import QuantScheme
from tests.conftest import build_tiny_llama, checksum


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(0))


def test_the_reference_model_is_never_mutated(tiny, ids):
    before = checksum(tiny)
    result = quantize_model(tiny, RTNConfig(QuantScheme(4, "int", True, "group", 32)))
    assert checksum(tiny) == before
    assert result.model is not tiny
    assert isinstance(result.model.model.layers[0].self_attn.q_proj, FakeQuantLinear)
    assert isinstance(result.model.lm_head, torch.nn.Linear)  # the head stays 16-bit
    assert len(result.layers) == 2 * 7  # q, k, v, o, gate, up, down per layer


def test_error_falls_as_bits_rise(tiny, ids):
    reference = logits(tiny, ids)
    errors = {}
    for bits in (2, 4, 8):
        model = quantize_model(tiny, RTNConfig(QuantScheme(bits, "int", True, "group", 32))).model
        errors[bits] = (logits(model, ids) - reference).norm() / reference.norm()
    assert errors[8] < 0.01 < errors[4] < errors[2]


def test_activation_quantization_is_per_token_and_costs_accuracy(tiny, ids):
    reference = logits(tiny, ids)
    w8 = quantize_model(tiny, RTNConfig(QuantScheme(8))).model
    w8a4 = quantize_model(tiny, RTNConfig(QuantScheme(8), QuantScheme(4))).model
    assert (logits(w8a4, ids) - reference).norm() > 3 * (logits(w8, ids) - reference).norm()
    assert RTNConfig(QuantScheme(8), QuantScheme(8)).label == "W8A8"


def test_report_prices_scales_and_measures_weight_error(tiny):
    report = quantize_model(tiny, RTNConfig(QuantScheme(4, "int", True, "group", 32))).layers
    assert all(r.bits_per_weight == pytest.approx(4.5) for r in report)
    assert all(10 < r.weight_sqnr_db < 30 for r in report)


def test_impossible_schemes_name_the_layer(tiny):
    with pytest.raises(ValueError, match=r"q_proj.*group size 48 does not divide the rows of 64 values"):
        quantize_model(tiny, RTNConfig(QuantScheme(4, "int", True, "group", 48)))
    # activations per block of the input dim (MX / NVFP4 style) must fit each layer's width too
    with pytest.raises(ValueError, match=r"q_proj.*group size 48 does not divide the rows of 64 values"):
        quantize_model(tiny, RTNConfig(QuantScheme(8), QuantScheme(8, "int", True, "group", 48)))
    with pytest.raises(ValueError, match="no quantization method registered"):
        quantize_model(tiny, object())


def test_quantizing_refuses_without_room_for_the_copy(tiny, monkeypatch):
    import engine._types
    from engine.methods.registry import NotEnoughMemoryError

    monkeypatch.setattr(engine._types, "free_memory_bytes", lambda device: 1024)
    with pytest.raises(NotEnoughMemoryError, match=r"only 0.0 GiB is free on cpu"):
        quantize_model(tiny, RTNConfig(QuantScheme(8)))


def test_the_registry_carries_each_methods_facts():
    from engine.methods import Calibration, GPTQConfig, LLMInt8Config, QATConfig, method_info, methods
    from engine.methods.gptq import GPTQDetail

    gptq = method_info(GPTQConfig(QuantScheme(4, "int", True, "group", 32)))
    assert (gptq.name, gptq.calibration, gptq.detail_type) == ("GPTQ", Calibration.REQUIRED, GPTQDetail)
    assert method_info(RTNConfig).calibration is Calibration.OPTIONAL_IMPORTANCE  # only with imatrix=True
    assert method_info(RTNConfig).detail_type is None
    assert method_info(LLMInt8Config).calibration is Calibration.OPTIONAL_REPORT
    assert method_info(QATConfig).calibration is Calibration.TRAIN_AND_HELD_OUT
    names = {info.name for info in methods()}
    assert {"RTN", "LLM.int8()", "SmoothQuant", "GPTQ", "AWQ", "bitsandbytes", "QAT"} <= names


# -- importance matrix (imatrix=True) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calib():
    return torch.randint(3, 96, (4, 64), generator=torch.Generator().manual_seed(1))


def kl_to(reference, model, ids) -> float:
    with torch.no_grad():
        p = reference(ids).logits.float().log_softmax(-1)
        q = model(ids).logits.float().log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_imatrix_is_in_the_label_only_when_asked():
    w4 = QuantScheme(4, "int", True, "group", 32)
    nvfp4 = QuantScheme.from_label("nvfp4")
    assert RTNConfig(w4).label == "W4"
    assert RTNConfig(w4, imatrix=True).label == "W4 + imatrix"
    assert RTNConfig(nvfp4, nvfp4, imatrix=True).label == "W4A4 nvfp4 + imatrix"


@pytest.mark.parametrize("bits", [3, 4])
def test_imatrix_lowers_the_kl_to_the_reference(tiny, calib, bits):
    held_out = torch.randint(3, 96, (2, 64), generator=torch.Generator().manual_seed(2))
    scheme = QuantScheme(bits, "int", True, "group", 32)
    plain = kl_to(tiny, quantize_model(tiny, RTNConfig(scheme)).model, held_out)
    weighted = kl_to(tiny, quantize_model(tiny, RTNConfig(scheme, imatrix=True), calib=calib).model, held_out)
    assert weighted < 0.9 * plain, (plain, weighted)


def test_imatrix_weights_are_what_the_model_computes_with(tiny, calib):
    """Each linear holds its weight rounded with its own importance row (collected on the float model), the
    scales kept for export, and the report's SQNR is of those values."""
    from engine.methods.imatrix import collect_importance
    from engine.quant.metrics import sqnr_db
    from engine.quant.weighted import weighted_fake_quantize, weighted_quantize

    scheme = QuantScheme(4, "int", False, "group", 32)
    result = quantize_model(tiny, RTNConfig(scheme, imatrix=True), calib=calib)
    row = collect_importance(tiny, calib)["model.layers.1.mlp.down_proj"]
    original = tiny.model.layers[1].mlp.down_proj.weight.detach()
    layer = result.model.model.layers[1].mlp.down_proj
    assert torch.equal(layer.weight, weighted_fake_quantize(original, scheme, row))
    assert torch.equal(layer.scale, weighted_quantize(original, scheme, row).scale.float())
    report = next(r for r in result.layers if r.name == "model.layers.1.mlp.down_proj")
    assert report.weight_sqnr_db == pytest.approx(sqnr_db(original.float(), layer.weight.float()))
    assert report.bits_per_weight == pytest.approx(5.0)  # int4 g32 asym: fp16 scale and zero per 32


def test_imatrix_needs_calibration_and_a_weight_format(tiny):
    w4 = QuantScheme(4, "int", True, "group", 32)
    with pytest.raises(ValueError, match="RTN with an importance matrix needs calibration data"):
        quantize_model(tiny, RTNConfig(w4, imatrix=True))
    with pytest.raises(ValueError, match="pick a weight format"):
        RTNConfig(None, QuantScheme(8), imatrix=True)
    with pytest.raises(ValueError, match="double quantization"):
        RTNConfig(QuantScheme.from_label("nf4 g64 dq"), imatrix=True)
