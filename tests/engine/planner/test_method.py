"""A planned recipe as a registered method (engine.planner.method): the same weights as `apply`, the
recipe's exact bits, a report per tensor with its format, refusals that name the tensor, a hashable config."""

from __future__ import annotations

import pytest
import torch

from engine.methods import Calibration, method_info, quantize_model
from engine.planner import PlannedConfig, PlannedDetail, apply, planned_tensors
from engine.planner.candidates import TensorInfo
from engine.planner.recipe import recipe_from_formats
from engine.quant.gguf import Q4_0, Q5_0, Q8_0
from engine.quant.schemes import parse_label
from tests.conftest import build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")
MIX = (parse_label("int3 g32"), Q4_0, Q5_0, Q8_0)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama(seed=1, num_hidden_layers=2, initializer_range=0.1)


@pytest.fixture(scope="module")
def recipe(tiny):
    tensors = planned_tensors(tiny)
    formats = {t.name: MIX[i % len(MIX)] for i, t in enumerate(tensors)}
    return recipe_from_formats("planner at 5.00 bpw", tensors, formats)


@pytest.fixture(scope="module")
def planned(tiny, recipe):
    return quantize_model(tiny, PlannedConfig.from_recipe(recipe))


def test_the_method_gives_applys_weights_and_the_recipes_bits(tiny, recipe, planned):
    applied = apply(tiny, recipe)
    for tensor in recipe.tensors:
        ours = planned.model.get_submodule(tensor.name).weight
        assert torch.equal(ours, applied.get_submodule(tensor.name).weight), tensor.name
        assert not torch.equal(ours, tiny.get_submodule(tensor.name).weight), tensor.name  # it was quantized
    assert torch.equal(planned.model.lm_head.weight, tiny.lm_head.weight)  # the head is not planned
    assert planned.bits_per_weight == pytest.approx(recipe.bits_per_weight, rel=1e-12)
    bits = recipe.bits
    for report, tensor in zip(planned.layers, recipe.tensors, strict=True):
        assert report.name == tensor.name
        assert report.bits_per_weight == pytest.approx(bits[tensor.name] / tensor.numel)
        assert report.detail == PlannedDetail(recipe.formats[tensor.name])
        assert 5 < report.weight_sqnr_db < 60
    info = method_info(planned.config)
    assert (info.name, info.calibration, info.detail_type) == (
        "Planned recipe",
        Calibration.NONE,
        PlannedDetail,
    )


def test_the_config_is_a_cache_key_with_the_recipes_label(recipe):
    first, second = PlannedConfig.from_recipe(recipe), PlannedConfig.from_recipe(recipe)
    assert first == second and hash(first) == hash(second) and len({first: 1, second: 2}) == 1
    assert first.label == f"Planned {recipe.bits_per_weight:.2f} bpw"
    assert dict(first.formats) == recipe.formats


def test_a_recipe_for_another_model_is_refused_naming_the_tensors(tiny, recipe):
    missing = TensorInfo("model.layers.7.mlp.up_proj", (128, 64), 7)
    other = recipe_from_formats("loaded", [*recipe.tensors, missing], {**recipe.formats, missing.name: Q8_0})
    config = PlannedConfig.from_recipe(other)
    assert config.label.endswith("(loaded)")
    with pytest.raises(ValueError, match=r"not in this model: model\.layers\.7\.mlp\.up_proj"):
        quantize_model(tiny, config)
    first = recipe.tensors[0]
    reshaped = dict(PlannedConfig.from_recipe(recipe).shapes) | {first.name: (32, 64)}
    config = PlannedConfig("reshaped", PlannedConfig.from_recipe(recipe).formats, tuple(reshaped.items()))
    with pytest.raises(ValueError, match=rf"of another shape here: {first.name}"):
        quantize_model(tiny, config)
    unfit = PlannedConfig("unfit", ((first.name, parse_label("int4 g128")),))  # rows of 64
    with pytest.raises(ValueError, match=first.name):
        quantize_model(tiny, unfit)
