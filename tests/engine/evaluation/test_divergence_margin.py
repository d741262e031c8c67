"""The reference's two likeliest tokens per scored position: the near-tie that explains a greedy
divergence (the Compare page shows it at the first token where a variant's text parts)."""

from __future__ import annotations

import pytest
import torch

from engine.evaluation.token_compare import compare_tokens
from tests.conftest import build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPT = [1, 10, 20, 30, 40, 50]
GENERATED = [11, 22, 33, 44, 55]


def test_the_reference_top_two_probabilities_match_its_own_softmax():
    reference, variant = build_tiny_llama(seed=0), build_tiny_llama(seed=1)
    scored = compare_tokens(reference, variant, PROMPT, GENERATED)
    with torch.no_grad():
        logits = reference(torch.tensor([PROMPT + GENERATED[:-1]])).logits[0, len(PROMPT) - 1 :]
    top2 = torch.softmax(logits.float(), dim=-1).topk(2, dim=-1).values  # (generated, 2)
    for stat, expected in zip(scored.tokens, top2, strict=True):
        assert stat.reference_top2_p == pytest.approx(tuple(expected.tolist()), abs=1e-5)
        assert stat.reference_margin == pytest.approx(float(expected[0] - expected[1]), abs=1e-5)
        assert stat.reference_margin >= 0
