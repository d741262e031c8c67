"""Perplexity (one division, sliding windows), KL / top-1 agreement and the reference cache."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from engine.evaluation.perplexity import (
    EvaluationError,
    ReferenceCache,
    evaluate_against_reference,
    kl_to_reference,
    perplexity,
    spans,
)
from engine.quant.metrics import kl_divergence
from tests.conftest import build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model():
    return build_tiny_llama()


@pytest.fixture(scope="module")
def perturbed(model):
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05 * parameter.std() * torch.randn(parameter.shape, generator=generator))
    return other


def token_ids(shape, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 96, shape, generator=torch.Generator().manual_seed(seed))


def test_perplexity_matches_a_hand_computation(model):
    ids = token_ids((3, 40))
    result = perplexity(model, ids)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.double(), dim=-1)  # (3, 40, vocab)
    nll = -logp[:, :-1].gather(2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (3, 39)
    assert result.token_count == 3 * 39 and result.window_tokens == [39, 39, 39]
    assert result.nll_sum == pytest.approx(float(nll.sum()), rel=1e-5)
    assert result.window_nll == pytest.approx(nll.sum(dim=1).tolist(), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(float(nll.mean())), rel=1e-5)
    # one division over all tokens, not a mean of per-window perplexities
    uneven = perplexity(model, [ids[0], ids[1, :10]])
    assert uneven.token_count == 39 + 9
    assert uneven.perplexity == pytest.approx(math.exp(float(nll[0].sum() + nll[1, :9].sum()) / 48), rel=1e-5)


def test_spans_tile_a_sequence():
    assert spans(100, 40, 30) == [(0, 40, 40), (30, 70, 30), (60, 100, 30)]
    assert spans(100, 40, 40) == [(0, 40, 40), (40, 80, 40), (80, 100, 20)]
    assert spans(30, 40, 10) == [(0, 30, 30)]
    for length, max_length, stride in [(100, 40, 30), (97, 16, 5), (50, 50, 1), (81, 20, 20)]:
        tails = [range(end - new, end) for _, end, new in spans(length, max_length, stride)]
        assert sorted(i for tail in tails for i in tail) == list(range(length))


def test_sliding_window_scores_each_token_once_like_hugging_face(model):
    row = token_ids((100,), seed=2)
    result = perplexity(model, row, max_length=40, stride=30)
    assert result.token_count == 99
    # the recipe of Hugging Face's perplexity guide, with the model's own loss
    nll_sum, count, previous_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, 100, 30):
            end = min(begin + 40, 100)
            ids = row[begin:end].unsqueeze(0)
            labels = ids.clone()
            labels[:, : -(end - previous_end)] = -100
            valid = int((labels[:, 1:] != -100).sum())
            nll_sum += float(model(input_ids=ids, labels=labels).loss) * valid
            count += valid
            previous_end = end
            if end == 100:
                break
    assert count == 99
    assert result.nll_sum == pytest.approx(nll_sum, rel=1e-5)
    # without overlap, each span's first token has no context and goes unscored
    assert perplexity(model, row, max_length=40).token_count == 100 - 3


def test_perplexity_reports_progress(model):
    seen = []
    perplexity(model, token_ids((2, 20)), progress=lambda fraction, message: seen.append(fraction))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)


@pytest.mark.parametrize(
    ("windows", "kwargs", "message"),
    [
        ([], {}, "No windows"),
        (torch.zeros((0, 16), dtype=torch.long), {}, "No windows"),
        (torch.tensor([[5]]), {}, "at least 2"),
        (torch.rand(2, 16), {}, "integers"),
        (torch.full((1, 300), 5), {}, "context is 256"),
        (torch.full((1, 100), 5), {"max_length": 300, "stride": 100}, "context is 256"),
        (torch.full((1, 100), 5), {"max_length": 40, "stride": 50}, "stride must be between"),
        (torch.full((1, 16), 500), {}, "vocabulary has 96"),
    ],
)
def test_bad_windows_are_explained(model, windows, kwargs, message):
    with pytest.raises(EvaluationError, match=message):
        perplexity(model, windows, **kwargs)


def test_long_sequences_fit_with_a_stride(model):
    result = perplexity(model, token_ids((300,), seed=3), max_length=128, stride=64)
    assert result.token_count == 299


def test_kl_is_zero_for_the_same_model(model):
    ids = token_ids((2, 48))
    result = kl_to_reference(model, model, ids)
    assert result.mean_kl < 1e-6 and result.max_kl < 1e-6
    assert result.top1_agreement == 1.0 and result.token_count == 2 * 47


def test_kl_is_positive_for_a_perturbed_copy(model, perturbed):
    ids = token_ids((2, 48))
    result = kl_to_reference(model, perturbed, ids)
    assert 1e-5 < result.mean_kl <= result.max_kl
    assert result.top1_agreement < 1.0
    with torch.no_grad():
        ref_logits, logits = model(input_ids=ids).logits[:, :-1], perturbed(input_ids=ids).logits[:, :-1]
    assert result.mean_kl == pytest.approx(kl_divergence(ref_logits, logits), rel=1e-4)
    assert result.window_kl[0] == pytest.approx(kl_divergence(ref_logits[0], logits[0]), rel=1e-4)


def count_forwards(module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_reference_cache_runs_the_reference_once(perturbed):
    reference = build_tiny_llama()
    calls = count_forwards(reference)
    ids = token_ids((3, 64), seed=4)
    plain = evaluate_against_reference(reference, perturbed, ids)
    assert calls[0] == 3
    cache = ReferenceCache()
    first = evaluate_against_reference(reference, perturbed, ids, reference_cache=cache)
    second = evaluate_against_reference(reference, perturbed, ids, reference_cache=cache)
    assert calls[0] == 6  # the second cached pass ran no reference forward
    assert cache.store_logits is False and cache.nbytes() == 3 * 63 * 64 * 4  # head inputs, float32
    for result in (first, second):
        assert result.agreement.mean_kl == pytest.approx(plain.agreement.mean_kl, rel=1e-5)
        assert result.agreement.top1_agreement == plain.agreement.top1_agreement
        assert result.reference.perplexity == pytest.approx(perplexity(reference, ids).perplexity, rel=1e-5)
        assert result.candidate.perplexity == pytest.approx(perplexity(perturbed, ids).perplexity, rel=1e-5)
    with pytest.raises(EvaluationError, match="differs"):
        evaluate_against_reference(reference, perturbed, token_ids((3, 64), seed=5), reference_cache=cache)
    with pytest.raises(EvaluationError, match="another reference model"):
        evaluate_against_reference(perturbed, perturbed, ids, reference_cache=cache)


def test_reference_cache_keeps_logits_when_the_head_is_not_the_last_step(model, perturbed):
    """A model that rescales logits after its head (like Gemma-2's soft-capping) is cached exactly."""
    reference = build_tiny_llama()

    def halve_logits(module, args, output) -> None:
        output.logits.mul_(0.5)

    handle = reference.register_forward_hook(halve_logits)
    try:
        ids = token_ids((2, 32), seed=6)
        plain = kl_to_reference(reference, perturbed, ids)
        cache = ReferenceCache()
        evaluate_against_reference(reference, perturbed, ids, reference_cache=cache)
        cached = evaluate_against_reference(reference, perturbed, ids, reference_cache=cache)
    finally:
        handle.remove()
    assert cache.store_logits is True and cache.nbytes() == 2 * 31 * 96 * 4
    assert cached.agreement.mean_kl == pytest.approx(plain.mean_kl, rel=1e-6)


def test_perplexity_gap_pairs_windows_and_says_when_they_cannot_tell():
    """Two models on the same windows: the gap over all tokens, and its standard error from the
    per-window differences; a gap within twice that noise is not resolved, one window gives no noise."""
    from engine.evaluation.perplexity import PerplexityResult, perplexity_gap

    def result(nll_per_token: list[float]) -> PerplexityResult:
        nll = [100 * v for v in nll_per_token]
        return PerplexityResult(math.exp(sum(nll) / (100 * len(nll))), sum(nll), 100 * len(nll), 0.0, nll,
                                [100] * len(nll))  # fmt: skip

    rtn = result([4.0, 4.5, 4.2, 4.3])
    close = result([4.01, 4.49, 4.21, 4.29])  # per-window differences of both signs: noise
    gap = perplexity_gap(close, rtn)
    assert gap.windows == 4 and abs(gap.relative) < 0.01
    assert not gap.resolved and gap.spread > abs(gap.relative) / 2
    better = result([3.9, 4.4, 4.1, 4.2])  # 0.1 nats lower on every window: resolved
    gap = perplexity_gap(better, rtn)
    assert gap.resolved and abs(gap.relative - math.expm1(-0.1)) < 1e-9
    one = perplexity_gap(result([3.9]), result([4.0]))
    assert one.spread is None and not one.resolved
    with pytest.raises(EvaluationError, match="different windows"):
        perplexity_gap(result([4.0, 4.1]), result([4.0]))
