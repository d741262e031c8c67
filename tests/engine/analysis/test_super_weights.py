"""Super weights: found, zeroed and protected on the default model; the logic and refusals on tiny Llamas."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from engine.analysis.super_weights import (
    WeightCoordinate,
    ablate,
    compare_ablations,
    find_super_weights,
    protect,
    random_equal_magnitude,
)
from engine.evaluation.perplexity import ReferenceCache
from engine.models.data import WindowSpec, load_text, token_windows
from engine.quant.schemes import QuantScheme
from tests.conftest import build_char_tokenizer, build_tiny_llama, checksum

COARSE = QuantScheme(4, "int", granularity="tensor")  # one scale per tensor: the super weights stretch it


@dataclass
class Measured:
    candidates: list
    ablation: object
    protection: object
    before: str
    after: str


@pytest.fixture(scope="module")
def measured(default_loaded):
    """Scan, ablation and protection on the default model, run once; checksums before and after."""
    model, tokenizer = default_loaded.model, default_loaded.tokenizer
    text = load_text("britannica")
    calib = token_windows(tokenizer, text, WindowSpec(32, 1, split="calibration"))
    held_out = token_windows(tokenizer, text, WindowSpec(64, 1, split="evaluation"))
    before = checksum(model)
    candidates = find_super_weights(model, calib)
    makers = [c.coordinate for c in candidates[:2]]
    cache = ReferenceCache()  # the unchanged model's forward runs once for both
    ablation = compare_ablations(model, makers, held_out, top_k=7000, reference_cache=cache)
    protection = protect(model, COARSE, makers, held_out, reference_cache=cache)
    return Measured(candidates, ablation, protection, before, checksum(model))


def test_the_top_candidates_sit_in_an_early_down_proj(measured):
    first, second = measured.candidates[:2]
    for c in (first, second):  # measured: layer 11 of 30, (507, 1229) and (507, 1487)
        assert c.layer < 15 and c.coordinate.name.endswith("mlp.down_proj")
        assert c.coordinate.row == 507 and c.creates and c.position == 0
        assert c.rank <= 2 and c.weight_to_rms > 20  # the two largest weights of the tensor, ~30x its RMS
        assert abs(c.input_value) > 500 and abs(c.residual_after) > 10_000
    assert {first.coordinate.column, second.coordinate.column} == {1229, 1487}
    assert abs(first.contribution) >= abs(second.contribution)


def test_zeroing_super_weights_breaks_the_model_random_ones_do_not(measured):
    table = measured.ablation
    zeroed, random, largest = table.rows
    assert zeroed.weights == random.weights == 2 and largest.weights == 7000
    assert zeroed.perplexity > 10 * table.reference_perplexity  # measured: 105 -> 2.3 million
    assert random.perplexity == pytest.approx(table.reference_perplexity, rel=0.01)
    assert random.mean_kl < 0.01 < zeroed.mean_kl
    assert zeroed.perplexity > 10 * largest.perplexity  # 7,000 other large weights hurt far less
    assert zeroed.generation is None  # no tokenizer given


def test_keeping_super_weights_lowers_coarse_rounding_kl(measured):
    plain, kept = measured.protection.rows
    assert kept.weights == 2 and "kept" in kept.label
    assert kept.mean_kl < 0.8 * plain.mean_kl  # measured 0.20 -> 0.10 on 64 tokens


def test_the_cached_model_is_untouched(measured):
    assert measured.after == measured.before


def _planted(seed: int = 0) -> nn.Module:
    """A tiny Llama whose layer-0 down_proj weight (5, 7) turns a boosted input channel 7 into a spike."""
    model = build_tiny_llama(seed)
    with torch.no_grad():
        mlp = model.model.layers[0].mlp
        mlp.gate_proj.weight[7] *= 30
        mlp.up_proj.weight[7] *= 30
        mlp.down_proj.weight[5, 7] = 3.0
    return model


IDS = torch.randint(3, 96, (2, 24), generator=torch.Generator().manual_seed(0))
PLANTED = WeightCoordinate("model.layers.0.mlp.down_proj", 5, 7)


def test_a_planted_super_weight_is_found():
    model = _planted()
    candidates = find_super_weights(model, IDS, absolute=20, ratio=100)
    top = candidates[0]
    assert top.coordinate == PLANTED and top.rank == 1 and top.weight == 3.0
    assert top.contribution == pytest.approx(top.weight * top.input_value, rel=1e-4)
    assert top.residual_after - top.residual_before == pytest.approx(top.output_value, rel=1e-4)
    assert top.token_id == int(IDS[top.window, top.position])
    assert find_super_weights(build_tiny_llama(), IDS, absolute=20, ratio=100) == []  # nothing planted


def test_ablate_zeroes_a_copy_and_random_picks_match_in_size():
    model = _planted()
    copied = ablate(model, [PLANTED])
    assert copied.model.layers[0].mlp.down_proj.weight[5, 7].item() == 0
    assert model.model.layers[0].mlp.down_proj.weight[5, 7].item() == 3.0
    other = WeightCoordinate(PLANTED.name, 0, 0)
    picks = random_equal_magnitude(model, [PLANTED, other], seed=1, pool=4)
    assert picks == random_equal_magnitude(model, [PLANTED, other], seed=1, pool=4)  # seeded
    assert PLANTED not in picks and other not in picks and len(set(picks)) == 2
    weight = model.model.layers[0].mlp.down_proj.weight.detach().abs()
    nearest = (weight - float(weight[0, 0])).abs().flatten().sort().values[5]
    assert abs(float(weight[picks[1].row, picks[1].column]) - float(weight[0, 0])) <= float(nearest)


def test_comparison_on_a_tiny_model_generates_text():
    model = _planted()
    table = compare_ablations(
        model, [PLANTED], IDS, tokenizer=build_char_tokenizer(), top_k=3, max_new_tokens=4
    )
    assert [row.weights for row in table.rows] == [1, 1, 3]
    assert all(isinstance(row.generation, str) for row in table.rows)
    assert isinstance(table.reference_generation, str)


@pytest.mark.parametrize(
    "coordinate, reason",
    [
        (WeightCoordinate("model.layers.0.mlp.down_proj", 64, 0), "lies outside"),
        (WeightCoordinate("model.layers.0.mlp.down_proj", 0, -1), "lies outside"),
        (WeightCoordinate("model.layers.0.mlp", 0, 0), "not a linear layer"),
    ],
)
def test_bad_coordinates_are_refused(coordinate, reason):
    model = build_tiny_llama()
    with pytest.raises(ValueError, match=reason):
        ablate(model, [coordinate])
    with pytest.raises(ValueError, match=reason):
        protect(model, COARSE, [coordinate], IDS)


def test_a_model_without_down_proj_is_refused():
    model = build_tiny_llama()
    for layer in model.model.layers:
        layer.mlp.down_proj = nn.Identity()
    with pytest.raises(ValueError, match="no MLP output projection"):
        find_super_weights(model, IDS)


def test_a_format_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="down_proj"):
        protect(build_tiny_llama(), QuantScheme(4, "int", granularity="group", group_size=96), [PLANTED], IDS)
