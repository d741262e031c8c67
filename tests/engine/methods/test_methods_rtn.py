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
    assert (
        method_info(RTNConfig).calibration is Calibration.NONE and method_info(RTNConfig).detail_type is None
    )
    assert method_info(LLMInt8Config).calibration is Calibration.OPTIONAL_REPORT
    assert method_info(QATConfig).calibration is Calibration.TRAIN_AND_HELD_OUT
    names = {info.name for info in methods()}
    assert {"RTN", "LLM.int8()", "SmoothQuant", "GPTQ", "AWQ", "bitsandbytes", "QAT"} <= names
