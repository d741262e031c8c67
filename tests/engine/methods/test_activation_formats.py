"""W4A4 in MXFP4 / NVFP4 and W8A8 in MXFP8 through RTN's dynamic activation path (FakeQuantLinear)."""

from __future__ import annotations

import pytest
import torch

from engine.methods import quantize_model
from engine.methods.rtn import RTNConfig
from engine.quant.linear import FakeQuantLinear
from engine.quant.primitives import fake_quantize
from engine.quant.schemes import parse_label
from tests.conftest import build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")

MXFP4, NVFP4, MXFP8 = parse_label("mxfp4"), parse_label("nvfp4"), parse_label("mxfp8")


@pytest.fixture(scope="module")
def model():
    return build_tiny_llama()  # hidden 64, intermediate 128: blocks of 16 and 32 fit every input


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 96, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "config",
    [RTNConfig(MXFP4, MXFP4), RTNConfig(NVFP4, NVFP4), RTNConfig(MXFP8, MXFP8), RTNConfig(None, NVFP4)],
    ids=["W4A4 MXFP4", "W4A4 NVFP4", "W8A8 MXFP8", "A4 NVFP4 only"],
)
def test_activation_formats_run_and_change_the_logits(model, ids, config):
    quantized = quantize_model(model, config).model
    linears = [m for m in quantized.modules() if isinstance(m, FakeQuantLinear)]
    assert linears and all(m.act_scheme == config.activations for m in linears)
    with torch.inference_mode():
        plain, logits = model(input_ids=ids).logits, quantized(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits, plain, atol=1e-4)
    if config.weights is None:  # weights untouched: what changed is the activations alone
        assert all(torch.equal(m.weight, model.get_submodule(n).weight) for n, m in _named(quantized))


def _named(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, FakeQuantLinear)]


def test_formats_differ_and_finer_scales_lose_less(model, ids):
    """Activations only (weights 16-bit): MXFP8 < NVFP4 < MXFP4 in logit error on this model."""
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        error = {
            scheme.label: (quantize_model(model, RTNConfig(None, scheme)).model(input_ids=ids).logits - plain)
            .pow(2)
            .mean()
            .item()
            for scheme in (MXFP4, NVFP4, MXFP8)
        }
    assert error["mxfp8_e4m3"] < error["nvfp4"] < error["mxfp4"], error


def test_activations_quantized_per_block_of_the_input_dim_per_call():
    """Each token's input is split in blocks along the hidden dim (16 for NVFP4), and NVFP4's float32
    tensor scale comes from the current call's amax: the layer equals linear(fake_quantize(rows))."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 8, bias=False)
    layer = FakeQuantLinear(linear.weight.detach().clone(), None, None, NVFP4)
    x = torch.randn(3, 5, 64)
    expected = torch.nn.functional.linear(
        fake_quantize(x.reshape(15, 64), NVFP4).view(3, 5, 64), linear.weight
    )
    with torch.inference_mode():
        assert torch.equal(layer(x), expected)
        # a call with one outlier token rescales the whole call (per-call tensor scale), so the other
        # tokens' codes change: dynamic, not a scale fixed at the first call
        spiked = x.clone()
        spiked[0, 0] *= 1e4
        assert not torch.equal(layer(spiked)[1:], layer(x)[1:])
