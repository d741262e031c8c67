"""Costs on a tiny random Llama, recipes from them: heuristics' bits, apply, JSON round trip and refusal,
llama.cpp --tensor-type lines."""

from __future__ import annotations

import pytest
import torch

from engine.evaluation.perplexity import kl_to_reference
from engine.planner import DEFAULT_CANDIDATES, apply, measure_costs, plan, planned_tensors, tensor_type_lines
from engine.planner.candidates import fitting
from engine.planner.heuristics import first_last_8bit, llama_cpp_mix, uniform
from engine.planner.recipe import recipe_from_json, recipe_to_json
from engine.quant.gguf import Q4_0, Q4_K, Q5_0, Q8_0
from engine.quant.schemes import parse_label
from engine.quant.weight_formats import fake_quantize_any
from tests.conftest import build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama(seed=1, num_hidden_layers=3, initializer_range=0.1)  # peaked enough to measure


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 96, (2, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def table(tiny, ids):
    return measure_costs(tiny, ids, DEFAULT_CANDIDATES, every_candidate=True)


def test_every_tensor_is_priced_in_every_fitting_candidate(tiny, table):
    tensors = planned_tensors(tiny)
    assert len(tensors) == 3 * 7 and table.complete
    for tensor in tensors:
        assert set(table.cost[tensor.name]) == set(DEFAULT_CANDIDATES)
        costs = table.cost[tensor.name]
        assert all(value >= 0 for value in costs.values())
        assert costs[Q8_0] < costs[parse_label("int3 g32")]  # 8 bits cost less KL than 3


def test_a_candidate_that_does_not_fit_is_skipped_for_that_tensor_only(tiny, ids):
    wide = build_tiny_llama(seed=1, num_hidden_layers=1, intermediate_size=256, initializer_range=0.1)
    table = measure_costs(wide, ids, (Q4_K, Q8_0))
    down = next(t for t in table.tensors if t.module == "down_proj")  # rows of 256: Q4_K fits
    up = next(t for t in table.tensors if t.module == "up_proj")  # rows of 64: it does not
    assert set(table.cost[down.name]) == {Q4_K, Q8_0}
    assert set(table.cost[up.name]) == {Q8_0}
    assert fitting((Q4_K, Q8_0), up) == [Q8_0]


@pytest.mark.parametrize("index", [0, 4, 20])
def test_measured_cost_is_the_kl_of_the_model_with_that_tensor_quantized(tiny, ids, table, index):
    tensor = table.tensors[index]
    copied = apply(tiny, uniform([tensor], Q4_0))  # only that tensor quantized
    measured = kl_to_reference(tiny, copied, ids).mean_kl
    assert measured > 1e-5
    assert table.measured[tensor.name][Q4_0] == pytest.approx(measured, rel=1e-3)


def test_estimated_costs_follow_the_measured_ones(tiny, ids, table):
    estimated = measure_costs(tiny, ids, DEFAULT_CANDIDATES)
    for tensor in table.tensors:
        anchor = max(table.proxy[tensor.name], key=table.proxy[tensor.name].get)
        assert list(estimated.measured[tensor.name]) == [anchor]  # one KL measured per tensor
        for fmt, cost in estimated.cost[tensor.name].items():
            assert cost == pytest.approx(table.cost[tensor.name][fmt], rel=0.6, abs=1e-6)


def test_stop_keeps_what_was_measured(tiny, ids):
    asked = []
    table = measure_costs(tiny, ids, (Q8_0,), should_stop=lambda: asked.append(1) or len(asked) > 2)
    assert not table.complete and len(table.cost) == 2 * 7  # asked before each layer: two layers done
    with pytest.raises(ValueError, match="stopped"):
        plan(table, 8.5)


def test_plan_hits_the_budget_and_heuristics_count_bits_exactly(tiny, table):
    tensors = table.tensors
    recipe = plan(table, 5.0)
    assert 4.99 <= recipe.bits_per_weight <= 5.0 + 1e-9 and recipe.optimal
    assert recipe.predicted_kl == pytest.approx(sum(table.cost[n][f] for n, f in recipe.formats.items()))
    assert uniform(tensors, Q4_0).bits_per_weight == 4.5
    assert uniform(tensors, parse_label("int3 g32")).bits_per_weight == 3.5
    ends = first_last_8bit(tensors, Q4_0)
    share = sum(t.numel for t in tensors if t.layer in (0, 2)) / sum(t.numel for t in tensors)
    assert ends.bits_per_weight == pytest.approx(8.5 * share + 4.5 * (1 - share))
    mix = llama_cpp_mix(tensors)  # rows of 64 / 128: every k-quant falls back to a legacy type
    assert set(mix.formats.values()) <= {Q5_0, Q8_0}
    # at Q5_0's own size the planner's predicted KL is at most Q5_0 everywhere (it is one of its choices)
    assert plan(table, 5.5).predicted_kl <= uniform(tensors, Q5_0, table).predicted_kl + 1e-12


def test_apply_quantizes_a_copy(tiny, table):
    before = tiny.model.layers[0].self_attn.q_proj.weight.clone()
    recipe = plan(table, 4.0)
    copied = apply(tiny, recipe)
    assert torch.equal(tiny.model.layers[0].self_attn.q_proj.weight, before)
    name, fmt = next(iter(recipe.formats.items()))
    assert torch.equal(
        copied.get_submodule(name).weight, fake_quantize_any(tiny.get_submodule(name).weight, fmt)
    )


def test_json_round_trip_and_refusal_of_another_model(tiny, table):
    recipe = plan(table, 4.5)
    loaded = recipe_from_json(recipe_to_json(recipe, "tiny"), planned_tensors(tiny), table)
    assert loaded.formats == recipe.formats and loaded.bits_per_weight == recipe.bits_per_weight
    assert loaded.predicted_kl == pytest.approx(recipe.predicted_kl)
    other = planned_tensors(build_tiny_llama(num_hidden_layers=2))
    with pytest.raises(
        ValueError, match=r"another model.*not in this model: model\.layers\.2\.self_attn\.q_proj"
    ):
        recipe_from_json(recipe_to_json(recipe), other)
    with pytest.raises(ValueError, match="not a planner recipe"):
        recipe_from_json("{}", other)


def test_tensor_type_lines_need_llama_cpp_types(table):
    gguf_only = uniform(table.tensors, Q4_0)
    gguf_only.formats[table.tensors[2].name] = Q8_0
    lines = tensor_type_lines(gguf_only).splitlines()
    assert lines[0] == r"--tensor-type blk\.0\.attn_q\.weight=q4_0"
    assert lines[2] == r"--tensor-type blk\.0\.attn_v\.weight=q8_0"
    assert len(lines) == len(table.tensors)
    with pytest.raises(ValueError, match="no type for int3 g32"):
        tensor_type_lines(uniform(table.tensors, parse_label("int3 g32")))
