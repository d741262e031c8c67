"""QAT building blocks: the STE's forward is fake_quantize and its backward the (clipped) identity;
prepare_qat copies. The spiral demo's tests are in tests/engine/lessons/test_qat_spiral.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.lessons.qat_spiral import SpiralTask, spiral_mlp
from engine.quant.primitives import fake_quantize
from engine.quant.schemes import QuantScheme
from engine.quant.ste import QATLinear, fake_quant_ste, prepare_qat

SCHEMES = [
    QuantScheme(4, "int", True, "channel"),
    QuantScheme(3, "int", False, "group", 16),
    QuantScheme(4, "nf4", True, "group", 32),
    QuantScheme(2, "int", True, "tensor"),
]


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label)
def test_ste_forward_is_fake_quantize(scheme):
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fake_quant_ste(x, scheme), fake_quantize(x, scheme))


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label)
def test_ste_backward_is_identity_with_dynamic_scales(scheme):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8, 64, generator=generator, requires_grad=True)
    upstream = torch.randn(8, 64, generator=generator)
    (fake_quant_ste(x, scheme) * upstream).sum().backward()
    assert torch.equal(x.grad, upstream)  # absmax / min-max scales clip nothing


def test_ste_backward_is_zero_where_clipped():
    scheme = QuantScheme(3, "int", True, "tensor", scale_dtype="float32")
    scale = torch.tensor(0.25)  # codes -4..3: the grid covers [-1.125, 0.875] after rounding
    x = torch.linspace(-2, 2, 401, requires_grad=True)
    fake_quant_ste(x, scheme, scale=scale).sum().backward()
    inside = (torch.round(x.detach() / scale) >= -4) & (torch.round(x.detach() / scale) <= 3)
    assert torch.equal(x.grad, inside.float())
    assert 0 < inside.float().mean() < 1
    x.grad = None
    fake_quant_ste(x, scheme, scale=scale, clip_gradient=False).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_ste_clipping_with_a_zero_point():
    scheme = QuantScheme(2, "int", False, "tensor", scale_dtype="float32")
    scale, zero = torch.tensor(0.5), torch.tensor(1.0)  # codes 0..3 stand for -0.5, 0, 0.5, 1.0
    x = torch.tensor([-2.0, -0.5, 0.2, 1.0, 1.3, 3.0], requires_grad=True)
    y = fake_quant_ste(x, scheme, scale=scale, zero_point=zero)
    assert torch.equal(y, fake_quantize(x.detach(), scheme, scale=scale, zero_point=zero))
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_qat_linear_forward_is_rtn_of_the_weights():
    torch.manual_seed(0)
    linear = nn.Linear(64, 16)
    weights, acts = QuantScheme(4, "int", True, "group", 32), QuantScheme(8, "int", True, "channel")
    x = torch.randn(5, 64)
    qat = QATLinear.from_linear(linear, weights)
    expected = nn.functional.linear(x, fake_quantize(linear.weight.detach(), weights), linear.bias)
    assert torch.allclose(qat(x), expected)
    with_acts = QATLinear.from_linear(linear, weights, acts)
    expected = nn.functional.linear(
        fake_quantize(x, acts), fake_quantize(linear.weight.detach(), weights), linear.bias
    )
    assert torch.allclose(with_acts(x), expected)
    assert "weights=int4 g32" in repr(with_acts)


def test_prepare_qat_copies_and_leaves_the_original_alone():
    model = spiral_mlp(SpiralTask(), seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    prepared = prepare_qat(model, QuantScheme(3, "int", True, "channel"))
    assert all(type(m) is nn.Linear for m in model if isinstance(m, nn.Linear))
    assert sum(isinstance(m, QATLinear) for m in prepared.modules()) == 3
    optimizer = torch.optim.SGD(prepared.parameters(), lr=1.0)
    prepared(torch.randn(4, 2)).sum().backward()
    optimizer.step()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), f"{name} changed"


def test_prepare_qat_filter_and_clear_errors():
    model = spiral_mlp(SpiralTask(), seed=0)
    only_hidden = prepare_qat(model, QuantScheme(4), filter_fn=lambda module, name: module.in_features == 64)
    assert [type(m).__name__ for m in only_hidden if not isinstance(m, nn.ReLU)] == [
        "Linear",
        "QATLinear",
        "QATLinear",
    ]
    with pytest.raises(ValueError, match=r"cannot quantize 0 with int4 g32: group size 32 does not divide"):
        prepare_qat(model, QuantScheme(4, "int", True, "group", 32))
    with pytest.raises(ValueError, match="found no nn.Linear"):
        prepare_qat(nn.Sequential(nn.ReLU()), QuantScheme(4))
