"""The measured context sweep (engine.speed.sweep) on the default model: rounds by both generators, the
measured weights and KV cache against our estimate, packed variants priced by their scheme, and Stop."""

from __future__ import annotations

import pytest

from engine.speed import sweep as sweeps

CONTEXTS = (16, 48)
NEW = 4


@pytest.fixture(scope="module")
def rounds(default_loaded) -> dict[str, sweeps.SweepRounds]:
    model = default_loaded.model
    return {gen: sweeps.sweep(model, CONTEXTS, NEW, gen) for gen in (sweeps.OUR_LOOP, sweeps.HF_GENERATE)}


@pytest.mark.parametrize("generator", [sweeps.OUR_LOOP, sweeps.HF_GENERATE])
def test_rounds_are_timed_and_decode_the_new_tokens(rounds, generator):
    done = rounds[generator]
    assert [r.context for r in done] == list(CONTEXTS) and not done.notes
    for r in done:
        assert r.generator == generator and r.variant == sweeps.REFERENCE
        assert r.new_tokens == NEW and len(r.step_seconds) == NEW
        assert len(r.token_ids) == NEW + 1  # the prefill's token, then one per decode step
        assert r.prefill_seconds > 0 and all(s > 0 for s in r.step_seconds)
        assert r.prefill_tokens_per_s > 0 and r.decode_tokens_per_s > 0
        assert r.cuda_peak_bytes is None  # a CPU: no allocator peak


def test_both_generators_decode_the_same_tokens(rounds):
    ours, hf = rounds[sweeps.OUR_LOOP], rounds[sweeps.HF_GENERATE]
    assert [r.token_ids for r in ours] == [r.token_ids for r in hf]  # greedy on the same prompt


@pytest.mark.parametrize("generator", [sweeps.OUR_LOOP, sweeps.HF_GENERATE])
def test_measured_weights_and_cache_match_the_estimate(rounds, generator):
    """The issue's check: measured CPU weights + KV bytes within 1% of the estimate's, and each part on
    its own too (fp32 weights and an fp32 cache of context + new tokens)."""
    for r in rounds[generator]:
        measured = r.weight_bytes + r.kv_bytes
        estimated = r.estimated_weight_bytes + r.estimated_kv_bytes
        assert abs(estimated - measured) / measured < 0.01
        assert abs(r.estimated_weight_bytes - r.weight_bytes) / r.weight_bytes < 0.01
        assert r.kv_bytes == r.estimated_kv_bytes  # 30 layers x 3 heads x 64 x 2 x 4 bytes per token
        assert r.weights_label == "fp32"
    assert rounds[generator][1].kv_bytes > rounds[generator][0].kv_bytes


def test_a_packed_variant_is_priced_by_its_scheme_and_a_packed_head_is_not(default_loaded):
    done = sweeps.sweep_variants(
        default_loaded.model, ["W4A16", "W4A16 + int8 head"], (16,), 2, sweeps.OUR_LOOP
    )
    w4, head = done
    assert w4.variant == "W4A16" and "int4" in w4.weights_label
    assert abs(w4.estimated_weight_bytes - w4.weight_bytes) / w4.weight_bytes < 0.01
    assert w4.weight_bytes < 0.4 * 538_060_288  # packed, well under the fp32 reference
    assert head.estimated_weight_bytes is None and head.estimated_peak_bytes is None
    assert head.estimated_kv_bytes == head.kv_bytes  # the cache is still priced


@pytest.mark.parametrize("generator", [sweeps.OUR_LOOP, sweeps.HF_GENERATE])
def test_stop_after_the_first_round_returns_it(default_loaded, generator):
    done: list = []
    result = sweeps.sweep(
        default_loaded.model, CONTEXTS, 2, generator, should_stop=lambda: bool(done), on_round=done.append
    )
    assert [r.context for r in result] == [CONTEXTS[0]] and result.notes


@pytest.mark.parametrize("generator", [sweeps.OUR_LOOP, sweeps.HF_GENERATE])
def test_stop_during_a_round_drops_that_round(default_loaded, generator):
    asked = []

    def stop() -> bool:  # asked before the round, then between its steps: stop at the second step
        asked.append(1)
        return len(asked) > 2

    result = sweeps.sweep(default_loaded.model, CONTEXTS[:1], 3, generator, should_stop=stop)
    assert list(result) == [] and "left out" in result.notes[0]


def test_contexts_beyond_the_model_are_skipped_with_a_note(default_loaded):
    limit = default_loaded.model.config.max_position_embeddings
    result = sweeps.sweep(default_loaded.model, (limit,), 2, sweeps.OUR_LOOP)
    assert list(result) == [] and "max_position_embeddings" in result.notes[0]
