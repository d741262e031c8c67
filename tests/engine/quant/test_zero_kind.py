"""The float-minimum asymmetric variant (llama.cpp Q4_1): labels, validation, exactness."""

from __future__ import annotations

import pytest
import torch

from engine.analysis.blocks import block_picture
from engine.quant.primitives import fake_quantize, quantize
from engine.quant.schemes import QuantScheme, bits_per_weight

Q4_1 = QuantScheme(4, "int", False, "group", 32, zero_kind="float")


def test_label_round_trip_and_cost():
    assert Q4_1.label == "int4 asym_min g32"
    assert QuantScheme.from_label("int4-asym_min-g32") == Q4_1
    assert bits_per_weight(Q4_1, 576) == 5.0  # llama.cpp Q4_1: fp16 scale + fp16 min per 32 weights


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(bits=4, symmetric=True, zero_kind="float"),
        dict(bits=8, format="fp8_e4m3", symmetric=True, zero_kind="float"),
        dict(bits=4, symmetric=False, zero_kind="half"),
    ],
)
def test_float_zero_needs_asymmetric_int(kwargs):
    with pytest.raises(ValueError, match="float minimum"):
        QuantScheme(granularity="channel", **kwargs)


def test_block_min_and_max_are_exact():
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(0)) + 3.0  # one-sided: 0 not in range
    xq = fake_quantize(x, Q4_1)
    blocks, blocks_q = x.view(-1, 32), xq.view(-1, 32)
    assert torch.allclose(blocks.amin(1), blocks_q.amin(1), atol=2e-3)  # fp16-stored minimum
    assert torch.allclose(blocks.amax(1), blocks_q.amax(1), atol=2e-3)
    codes = quantize(x, Q4_1).codes
    assert int(codes.min()) == 0 and int(codes.max()) == 15


def test_float_minimum_beats_integer_zero_on_one_sided_data():
    x = torch.rand(64, 256, generator=torch.Generator().manual_seed(1)) * 0.5 + 2.0  # values in [2, 2.5]
    float_zero = ((x - fake_quantize(x, Q4_1)) ** 2).mean()
    int_zero = ((x - fake_quantize(x, QuantScheme(4, "int", False, "group", 32))) ** 2).mean()
    assert float_zero < int_zero / 10  # the integer grid must stretch down to 0 and wastes most codes


def test_requantizing_a_q4_1_tensor_is_exact():
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    once = fake_quantize(x, Q4_1)
    assert torch.equal(fake_quantize(once, Q4_1), once)


def test_grid_levels_for_float_zero():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
    picture = block_picture(x, Q4_1, row=1, block=1)
    block = x[1, 32:64]
    assert picture.levels.numel() == 16
    assert float(picture.levels[0]) == pytest.approx(float(block.min()), abs=2e-3)
    assert float(picture.levels[-1]) == pytest.approx(float(block.max()), abs=5e-3)


@pytest.mark.slow
def test_default_model_linears_are_reproduced_exactly(default_loaded):
    """The offline default model was distributed as Q4_1: int4 asym_min g32 gives zero error on every linear."""
    from engine.analysis.tensors import get_weight, weight_tensors

    for info in weight_tensors(default_loaded.model):
        if info.module == "embed_tokens":
            continue  # Q8_0, not Q4_1
        weight = get_weight(default_loaded.model, info.name)
        assert torch.equal(fake_quantize(weight, Q4_1), weight), info.name
    integer_zero = QuantScheme(4, "int", False, "group", 32)
    weight = get_weight(default_loaded.model, "model.layers.0.mlp.up_proj.weight")
    assert not torch.equal(fake_quantize(weight, integer_zero), weight)
