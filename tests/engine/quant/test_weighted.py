"""Importance-weighted rounding for our schemes (engine.quant.weighted) on a seeded weight with heavy-tailed
columns and a skewed importance: never worse than plain rounding in the weighted error (clearly better at 4
bits and below), stored exactly as the scheme stores values, plain rounding itself where the importance is
all zero, and bad importance refused in words."""

from __future__ import annotations

import pytest
import torch

from engine.quant.elements import int_range
from engine.quant.primitives import fake_quantize, quantize
from engine.quant.schemes import parse_label
from engine.quant.weight_formats import fake_quantize_any
from engine.quant.weighted import weighted_fake_quantize, weighted_quantize

pytestmark = pytest.mark.usefixtures("single_thread")

FAMILIES = [
    "int4 g32",
    "int4 g32 asym",
    "int4 g32 asym_min",
    "int3 g64",
    "nf4 g64",
    "mxfp4",
    "nvfp4",
    "fp8_e4m3 block128",
]
LOW_BITS = [label for label in FAMILIES if not label.startswith("fp8")]  # <= 4 bits: a clear gain


@pytest.fixture(scope="module")
def weight() -> torch.Tensor:
    """(200, 576): rows and columns that 128 x 128 tiles do not divide, columns of very different sizes."""
    g = torch.Generator().manual_seed(0)
    columns = (torch.randn(576, generator=g) * 1.2).exp()  # heavy-tailed column scales
    return torch.randn(200, 576, generator=g) * columns * 0.02


@pytest.fixture(scope="module")
def importance() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    imp = torch.rand(576, generator=g).pow(4) * 50 + 0.01  # a few channels matter much more
    imp[::50] = 0.0  # and some not at all
    return imp


def weighted_error(x: torch.Tensor, y: torch.Tensor, imp: torch.Tensor) -> float:
    return float(((x.double() - y.double()) ** 2 * imp.double()).sum())


@pytest.mark.parametrize("label", FAMILIES)
def test_weighting_never_raises_the_weighted_error(label, weight, importance):
    scheme = parse_label(label)
    plain = weighted_error(weight, fake_quantize(weight, scheme), importance)
    weighted = weighted_error(weight, fake_quantize_any(weight, scheme, importance), importance)
    assert weighted <= plain
    if label in LOW_BITS:
        assert weighted < 0.95 * plain, (label, weighted / plain)


@pytest.mark.parametrize("label", FAMILIES)
def test_the_values_are_what_the_scheme_stores(label, weight, importance):
    """Codes and scales as the scheme stores them read back to exactly the weighted values, for a skewed and
    for a uniform importance; the scales are values of the scheme's scale dtype."""
    scheme = parse_label(label)
    for imp in (importance, torch.ones(576)):
        qt = weighted_quantize(weight, scheme, imp)
        assert torch.equal(qt.dequantize(), weighted_fake_quantize(weight, scheme, imp))
        assert qt.codes.dtype == quantize(weight, scheme).codes.dtype
        expected_dtype = quantize(weight, scheme).scale.dtype
        assert qt.scale.dtype == expected_dtype
        if scheme.is_int:
            low, high = int_range(scheme.bits, scheme.symmetric)
            assert low <= int(qt.codes.min()) and int(qt.codes.max()) <= high
        if scheme.two_level:  # the tensor scale is plain rounding's; only block scales are searched
            assert torch.equal(qt.tensor_scale, quantize(weight, scheme).tensor_scale)


def test_int_groups_are_scale_times_integer_codes(weight, importance):
    """Spelled out for int4 g32: each group of 32 is an fp16 scale times integers in [-8, 7]."""
    scheme = parse_label("int4 g32")
    groups = weighted_fake_quantize(weight, scheme, importance).view(-1, 32).double()
    scale = weighted_quantize(weight, scheme, importance).scale.reshape(-1, 1)
    assert scale.dtype == torch.float16
    codes = groups / scale.double()
    assert torch.equal(codes, codes.round()) and codes.min() >= -8 and codes.max() <= 7


@pytest.mark.parametrize("label", ["int4 g32", "int4 g32 asym_min", "mxfp4", "nvfp4", "fp8_e4m3 block128"])
def test_zero_importance_is_plain_rounding(label, weight):
    """Nothing to weigh: every candidate ties and plain rounding's own scale (ratio 1) is kept, bit for bit."""
    scheme = parse_label(label)
    assert torch.equal(
        weighted_fake_quantize(weight, scheme, torch.zeros(576)), fake_quantize(weight, scheme)
    )


@pytest.mark.parametrize(
    ("importance", "label", "match"),
    [
        (torch.ones(575), "int4 g32", "one value per input column"),
        (torch.ones(2, 576), "int4 g32", "one value per input column"),
        (torch.full((576,), -1.0), "int4 g32", "finite and not negative"),
        (torch.full((576,), float("nan")), "mxfp4", "finite and not negative"),
        (torch.ones(576), "nf4 g64 dq", "double quantization"),
    ],
)
def test_bad_input_is_refused_in_words(importance, label, match, weight):
    with pytest.raises(ValueError, match=match):
        weighted_fake_quantize(weight, parse_label(label), importance)
