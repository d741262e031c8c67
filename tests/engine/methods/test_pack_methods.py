"""Methods' quantized models packed onto the real kernels (`pack_quantized_model`): the packed layers hold
exactly the codes each method chose, and the packed model computes what the fake-quantized one does
(within the CPU kernels' bfloat16 arithmetic). Layers no kernel runs are refused with the reason."""

from __future__ import annotations

import pytest
import torch

from engine.kernels import QuantLinear
from engine.methods import (
    AWQConfig,
    GPTQConfig,
    LLMInt8Config,
    QATConfig,
    RTNConfig,
    SmoothQuantConfig,
    pack_quantized_model,
    quantize_model,
)
from engine.models.export import int_codes
from engine.quant.linear import FakeQuantLinear
from engine.quant.schemes import QuantScheme
from tests.conftest import build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")

INT4_ASYM_G32 = QuantScheme(4, "int", False, "group", 32)
INT4_SYM_G32 = QuantScheme(4, "int", True, "group", 32)
INT8 = QuantScheme(8, "int", True, "channel")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama()


@pytest.fixture(scope="module")
def calib():
    return torch.randint(3, 96, (4, 32), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(0))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


CONFIGS = {
    "RTN int4 asym g32": lambda: RTNConfig(INT4_ASYM_G32),
    "RTN int4 sym g32": lambda: RTNConfig(INT4_SYM_G32),
    "RTN W8A8": lambda: RTNConfig(INT8, INT8),
    "GPTQ int4 g32": lambda: GPTQConfig(weights=INT4_ASYM_G32),
    "GPTQ act-order static groups": lambda: GPTQConfig(
        weights=INT4_ASYM_G32, act_order=True, static_groups=True
    ),
    "GPTQ int8": lambda: GPTQConfig(weights=INT8),
    "AWQ int4 g32": lambda: AWQConfig(INT4_ASYM_G32, grid=4),
    "QAT int4 g32": lambda: QATConfig(INT4_ASYM_G32, steps=2),
    "SmoothQuant W8A8": lambda: SmoothQuantConfig(alpha=0.5),
}
EXPECTED_FORMAT = {"RTN W8A8": "W8A8", "SmoothQuant W8A8": "W8A8", "GPTQ int8": "W8A16"}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_packed_method_model_keeps_its_codes_and_outputs(tiny, calib, ids, name):
    config = CONFIGS[name]()
    data = (calib, calib) if isinstance(config, QATConfig) else calib
    quantized = quantize_model(tiny, config, data).model
    packed = pack_quantized_model(quantized)
    fake = {n: m for n, m in quantized.named_modules() if isinstance(m, FakeQuantLinear)}
    assert fake and all(isinstance(m, FakeQuantLinear) for m in fake.values())  # the original is untouched
    for layer_name, module in fake.items():
        layer = packed.get_submodule(layer_name)
        assert isinstance(layer, QuantLinear) and layer.fmt == EXPECTED_FORMAT.get(name, "W4A16")
        stored = layer.codes_and_qparams()
        c = int_codes(module)
        if layer.fmt == "W4A16":
            assert torch.equal(stored["codes"].long(), c.codes), layer_name  # the method's codes, exactly
        else:
            assert torch.equal(stored["codes"].long(), c.codes - c.zeros), layer_name
        # the scales are held in bfloat16 by the CPU kernels: the weights agree to that rounding
        assert relative_error(layer.dequantized_weight(), module.weight) < 4e-3, layer_name
    assert packed.lm_head.weight.data_ptr() != tiny.lm_head.weight.data_ptr()  # a copy, not a view
    with torch.inference_mode():
        error = relative_error(packed(ids).logits, quantized(ids).logits)
    assert error < 1.5e-2, error


def test_act_order_without_static_groups_is_refused(tiny, calib):
    quantized = quantize_model(tiny, GPTQConfig(weights=INT4_ASYM_G32, act_order=True), calib).model
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj: act-order GPTQ .* static"):
        pack_quantized_model(quantized)


@pytest.mark.parametrize(
    "config, message",
    [
        (RTNConfig(QuantScheme(3, "int", False, "group", 32)), "packed kernels run int4 group-wise"),
        (RTNConfig(QuantScheme(4, "nf4", True, "group", 32)), "packed kernels run int4 group-wise"),
        (LLMInt8Config(), "no fake-quantized layers to pack .*LLMInt8Linear"),
    ],
    ids=["int3", "nf4", "llm.int8"],
)
def test_what_no_kernel_runs_is_refused_with_the_reason(tiny, calib, config, message):
    quantized = quantize_model(tiny, config, calib).model
    with pytest.raises(ValueError, match=message):
        pack_quantized_model(quantized)


def test_refusals_are_known_before_building(tiny, calib):
    from engine import speed
    from engine.methods.packed import pack_refusal

    assert pack_refusal(quantize_model(tiny, RTNConfig(INT4_ASYM_G32)).model) is None
    act_order = quantize_model(tiny, GPTQConfig(weights=INT4_ASYM_G32, act_order=True), calib).model
    assert "act-order" in pack_refusal(act_order)
    assert "int4 group-wise" in pack_refusal(quantize_model(tiny, RTNConfig(QuantScheme(3))).model)
    assert "no fake-quantized layers" in pack_refusal(tiny)
    from engine.methods import BnbConfig

    nf4 = quantize_model(tiny, BnbConfig("nf4")).model
    assert speed.runnable_refusal(nf4) is None and "no fake-quantized" in speed.runnable_refusal(tiny)
    runnable = speed.runnable_copy(nf4)
    assert runnable is not nf4 and speed._is_bnb(runnable.model.layers[0].mlp.up_proj)
    assert not nf4.model.layers[0].mlp.up_proj.support_avx512bf16_for_cpu  # the lab's model is untouched
