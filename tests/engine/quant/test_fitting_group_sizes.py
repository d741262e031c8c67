"""Group sizes that fit a model (issue 22): a group must divide the input width of every quantized linear."""

from __future__ import annotations

import math

import pytest
from torch import nn

from engine.quant.group_sizes import fitting_group_sizes, group_size_fit, linear_widths
from engine.quant.schemes import QuantScheme, check_shape
from engine.quant.shapes import CANDIDATE_GROUP_SIZES, group_sizes_dividing
from tests.conftest import build_tiny_llama


def _every_linear_fits(model, size: int) -> bool:
    """Quantizing each linear's weight with groups of `size` works (check_shape is what quantize runs)."""
    scheme = QuantScheme(4, "int", True, "group", size)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith("lm_head"):
            try:
                check_shape(scheme, module.weight.shape)
            except ValueError:
                return False
    return True


def test_default_model_offers_exactly_the_candidates_that_fit_every_linear(default_loaded):
    model = default_loaded.model
    sizes = fitting_group_sizes(model)
    assert sizes == [size for size in CANDIDATE_GROUP_SIZES if _every_linear_fits(model, size)]
    widths = {
        m.in_features for n, m in model.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in n
    }
    assert set(linear_widths(model)) == widths == {576, 1536}  # SmolLM2-135M: hidden and MLP widths
    assert 128 not in sizes and 256 not in sizes and {16, 32, 64, 96, 192} <= set(sizes)


def test_the_note_names_the_width_that_rules_a_size_out(default_loaded):
    fit = group_size_fit(default_loaded.model)
    assert fit.absent == {128: 576, 256: 576}
    note = fit.note()
    assert note.startswith(
        "128 and 256 are left out: they do not divide 576, the input width of this model's q_proj"
    )
    assert "down_proj" not in note  # down_proj reads 1536, which 128 and 256 do divide


def test_tiny_model_and_widths_without_a_usual_size():
    tiny = build_tiny_llama()  # hidden 64, MLP 128
    assert fitting_group_sizes(tiny) == [16, 32, 64]
    assert "48, 96, 128, 192 and 256 are left out: they do not divide 64" in group_size_fit(tiny).note()
    odd = nn.Sequential(nn.Linear(100, 8), nn.Linear(8, 400))  # widths 100 and 8: gcd 4
    fit = group_size_fit(odd)
    assert fit.sizes == (1, 2, 4)  # nothing usual fits: what divides every width
    assert all(math.gcd(100, 8) % size == 0 for size in fit.sizes)
    assert fit.note().startswith("None of the usual group sizes")
    assert group_sizes_dividing([100]) == [10, 20, 25, 50, 100]


def test_a_model_without_linears_gets_every_candidate():
    model = nn.Sequential(nn.Embedding(10, 576), nn.LayerNorm(576))
    assert fitting_group_sizes(model) == list(CANDIDATE_GROUP_SIZES)
    assert group_size_fit(model).note() == ""
    assert group_sizes_dividing([]) == list(CANDIDATE_GROUP_SIZES)


@pytest.mark.parametrize("width", [576, 512, 1536, 192])
def test_shape_errors_suggest_only_sizes_that_work(width):
    with pytest.raises(ValueError) as err:
        check_shape(QuantScheme(4, "int", True, "group", 40), (4, width))
    message = str(err.value)
    assert message.startswith(
        f"group size 40 does not divide the rows of {width} values; pick a group size of"
    )
    for size in group_sizes_dividing([width]):
        check_shape(QuantScheme(4, "int", True, "group", size), (4, width))
        assert f"{size}" in message
    assert "_" not in message and "=" not in message
