"""Token-level comparison: teacher-forced probabilities and KL per generated token, divergence, agreement."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from engine.evaluation.token_compare import agreement, compare_tokens, first_divergence, token_pieces
from engine.quant.schemes import QuantScheme
from engine.runtime.generation import GenerationSettings, generate
from engine.runtime.kv_cache import KVCacheConfig
from tests.conftest import build_char_tokenizer, build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPT = [1, 10, 20, 30, 40, 50]
GENERATED = [11, 22, 33, 44, 55, 66, 77, 12]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama(seed=0)


@pytest.fixture(scope="module")
def perturbed(tiny):
    other = copy.deepcopy(tiny)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return other


def test_identical_models_agree_exactly(tiny):
    result = compare_tokens(tiny, tiny, PROMPT, GENERATED)
    assert [t.token_id for t in result.tokens] == GENERATED
    assert [t.position for t in result.tokens] == list(range(len(GENERATED)))
    for token in result.tokens:
        assert token.kl == pytest.approx(0.0, abs=1e-6)
        assert token.p_variant == pytest.approx(token.p_reference, rel=1e-6)
        assert 0 < token.p_reference < 1
        assert token.reference_top1 == token.variant_top1
    assert result.top1_agreement == 1.0
    assert result.mean_kl == pytest.approx(0.0, abs=1e-6)


def test_probabilities_match_a_direct_forward(tiny):
    result = compare_tokens(tiny, tiny, PROMPT, GENERATED)
    with torch.no_grad():
        logits = tiny(input_ids=torch.tensor([PROMPT + GENERATED])).logits[0].float()  # (tokens, vocab)
    logp = torch.log_softmax(logits, -1)
    for i, token in enumerate(result.tokens):
        row = len(PROMPT) - 1 + i  # the logits that predict generated token i
        assert token.p_reference == pytest.approx(float(logp[row, GENERATED[i]].exp()), rel=1e-4)
        assert token.reference_top1 == int(logp[row].argmax())


def test_perturbed_copy_has_positive_kl(tiny, perturbed):
    result = compare_tokens(tiny, perturbed, PROMPT, GENERATED)
    assert all(token.kl > 0 for token in result.tokens)
    assert result.mean_kl > 1e-4
    assert result.max_kl >= result.mean_kl
    assert any(abs(t.p_variant - t.p_reference) > 1e-4 for t in result.tokens)


def test_generation_logprobs_and_greedy_tokens_agree_with_teacher_forcing(tiny):
    tokenizer = build_char_tokenizer()
    settings = GenerationSettings(max_new_tokens=12, chat=False)
    generated = generate(tiny, tokenizer, "hello world", settings)
    prompt_ids = tokenizer("hello world", return_tensors="pt")["input_ids"]  # what generate encoded
    result = compare_tokens(tiny, tiny, prompt_ids, generated.token_ids)
    assert len(result.tokens) == len(generated.token_ids) > 0
    for token, logprob in zip(result.tokens, generated.token_logprobs, strict=False):
        assert token.token_id == token.reference_top1  # greedy picked the argmax
        assert math.log(token.p_reference) == pytest.approx(logprob, abs=1e-4)


def test_kv_cache_variant(tiny):
    plain = compare_tokens(tiny, tiny, PROMPT, GENERATED, variant_kv=KVCacheConfig(None))
    assert plain.max_kl == pytest.approx(0.0, abs=1e-6)  # a 16-bit "quantized" cache changes nothing
    two_bit = compare_tokens(
        tiny, tiny, PROMPT, GENERATED, variant_kv=QuantScheme(2, "int", False, "channel")
    )
    assert two_bit.mean_kl > 1e-4


def test_empty_continuation_and_bad_input(tiny):
    empty = compare_tokens(tiny, tiny, PROMPT, [])
    assert empty.tokens == [] and math.isnan(empty.mean_kl) and math.isnan(empty.top1_agreement)
    with pytest.raises(ValueError, match="prompt has no tokens"):
        compare_tokens(tiny, tiny, [], GENERATED)
    with pytest.raises(ValueError, match="vocabulary of 96"):
        compare_tokens(tiny, tiny, PROMPT, [500])
    with pytest.raises(ValueError, match="context is 256"):
        compare_tokens(tiny, tiny, PROMPT, [5] * 300)


@pytest.mark.parametrize(
    ("reference", "variant", "expected"),
    [
        ([1, 2, 3], [1, 2, 3], None),
        ([1, 2, 3], [1, 9, 3], 1),
        ([1, 2, 3], [7, 2, 3], 0),
        ([1, 2, 3], [1, 2], 2),
        ([1, 2], [1, 2, 3], 2),
        ([], [], None),
        ([], [4], 0),
    ],
)
def test_first_divergence(reference, variant, expected):
    assert first_divergence(reference, variant) == expected


@pytest.mark.parametrize(
    ("reference", "variant", "expected"),
    [
        ([1, 2, 3, 4], [1, 2, 3, 4], 1.0),
        ([1, 2, 3, 4], [1, 9, 3, 9], 0.5),
        ([1, 2, 3, 4], [1, 2], 0.5),  # missing positions count as different
        ([1, 2], [1, 2, 3, 4], 1.0),  # over the reference's length
        ([], [], 1.0),
    ],
)
def test_agreement(reference, variant, expected):
    assert agreement(reference, variant) == expected


def test_token_pieces_rebuild_the_text():
    tokenizer = build_char_tokenizer()
    ids = tokenizer("Hi there, 42!", add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tokenizer, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)


def test_score_continuation_is_pieces_and_scores(tiny):
    from engine.evaluation.token_compare import score_continuation

    tokenizer = build_char_tokenizer()
    ids = tokenizer("hello there", return_tensors="pt")["input_ids"][0].tolist()
    reference = score_continuation(tiny, tiny, tokenizer, PROMPT, ids, is_reference=True)
    assert "".join(reference.pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert reference.comparison is None
    variant = score_continuation(
        tiny, tiny, tokenizer, PROMPT, ids, variant_kv=QuantScheme(2, "int", False, "channel")
    )
    assert len(variant.comparison.tokens) == len(ids) == len(variant.reference_top1_text)
    assert variant.comparison.mean_kl > 0
