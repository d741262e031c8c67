"""On the default model at 4.5 bits per weight, the planner's recipe has lower measured KL on held-out
text than the uniform format of the same size (Q4_0) and than the first/last-layers-at-8-bit heuristic,
which is larger (4.77 bpw)."""

from __future__ import annotations

import pytest

from engine.evaluation.evalset import DEFAULT_EVAL_SET
from engine.evaluation.perplexity import ReferenceCache, evaluate_against_reference
from engine.models.data import WindowSpec, load_text, token_windows
from engine.planner import DEFAULT_CANDIDATES, apply, measure_costs, plan
from engine.planner.heuristics import first_last_8bit, uniform
from engine.quant.gguf import Q4_0

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]  # busy 2 cores: see conftest


def test_planner_beats_uniform_and_first_last_heuristic_at_4_5_bits(default_loaded):
    model, tokenizer = default_loaded.model, default_loaded.tokenizer
    text = load_text(DEFAULT_EVAL_SET.corpus)
    calibration = token_windows(tokenizer, text, WindowSpec(32, 1, split="calibration"))
    held_out = token_windows(tokenizer, text, WindowSpec(DEFAULT_EVAL_SET.window, 2, split="evaluation"))
    table = measure_costs(model, calibration, DEFAULT_CANDIDATES)
    planned = plan(table, 4.5)
    flat = uniform(table.tensors, Q4_0, table)
    ends = first_last_8bit(table.tensors, Q4_0, table)
    assert abs(planned.bits_per_weight - 4.5) < 0.01 and flat.bits_per_weight == 4.5
    assert ends.bits_per_weight >= planned.bits_per_weight
    cache = ReferenceCache()
    kl = {
        recipe.label: evaluate_against_reference(
            model, apply(model, recipe), held_out, cache
        ).agreement.mean_kl
        for recipe in (planned, flat, ends)
    }
    assert kl[planned.label] < kl[flat.label]
    assert kl[planned.label] < kl[ends.label]
