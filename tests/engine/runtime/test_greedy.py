"""engine.runtime.greedy: the one token loop; generate (dynamic cache) and decode (static cache) on it agree
with each other and with transformers' `generate`, token for token, and stop where they should."""

from __future__ import annotations

import pytest
import torch

from engine.runtime import decode as fast
from engine.runtime.generation import GenerationSettings, generate
from engine.runtime.greedy import argmax_token, greedy_loop
from tests.conftest import build_char_tokenizer, build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")


def counting_step(token: torch.Tensor) -> torch.Tensor:
    return token + 1  # (batch, 1) -> (batch, 1)


def test_the_loop_counts_steps_and_keeps_the_first_token():
    end = greedy_loop(counting_step, torch.tensor([[5], [10]]), 4)
    assert end.tokens.tolist() == [[5, 6, 7, 8], [10, 11, 12, 13]]
    assert not end.stopped_at_eos and not end.cut_short
    calls = []
    greedy_loop(lambda t: calls.append(1) or t, torch.tensor([[0]]), 1)
    assert calls == []  # one token is the prefill's: no step


def test_the_loop_stops_when_every_sequence_hit_a_stop_id_and_keeps_it():
    end = greedy_loop(counting_step, torch.tensor([[5], [6]]), 10, stop_ids=torch.tensor([8]))
    assert end.stopped_at_eos and end.tokens.tolist() == [[5, 6, 7, 8], [6, 7, 8, 9]]


def test_the_callback_sees_each_token_and_can_stop_the_loop():
    seen = []
    end = greedy_loop(
        counting_step, torch.tensor([[0]]), 10, on_token=lambda i, ids: seen.append(ids[0]) or i == 2
    )
    assert seen == [0, 1, 2] and end.cut_short and end.tokens.tolist() == [[0, 1, 2]]


def test_argmax_token_takes_the_last_position():
    logits = torch.zeros(2, 3, 5)
    logits[0, -1, 4] = logits[1, -1, 1] = logits[0, 0, 2] = 1.0
    assert argmax_token(logits).tolist() == [[4], [1]]


@torch.inference_mode()
def test_generate_and_decode_share_the_loop_and_match_transformers():
    model, tokenizer = build_tiny_llama(), build_char_tokenizer()
    prompt = "the quick brown"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    expected = model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12, pad_token_id=0
    )[0, ids.shape[1] :].tolist()
    settings = GenerationSettings(max_new_tokens=12, chat=False)
    dynamic = generate(model, _no_eos(tokenizer), prompt, settings)
    static = fast.decode(model, ids, 12)
    assert dynamic.token_ids == expected == list(static.token_ids[0])
    assert len(dynamic.token_logprobs) == 12


def test_generate_stops_at_eos_without_keeping_it_and_reports_each_token():
    model, tokenizer = build_tiny_llama(), build_char_tokenizer()
    free = generate(model, _no_eos(tokenizer), "hello", GenerationSettings(max_new_tokens=10, chat=False))
    eos = free.token_ids[3]
    tokenizer.eos_token_id = eos  # pretend the fourth token ends the sequence
    streamed = []
    stopped = generate(
        model,
        tokenizer,
        "hello",
        GenerationSettings(max_new_tokens=10, chat=False),
        on_token=lambda t, _: streamed.append(t),
    )
    assert stopped.token_ids == streamed == free.token_ids[: free.token_ids.index(eos)]
    assert len(stopped.token_logprobs) == len(stopped.token_ids) + 1  # the EOS token's too
    cut = generate(model, _no_eos(tokenizer), "hello", GenerationSettings(max_new_tokens=10, chat=False),
                   should_stop=lambda: True)  # fmt: skip
    assert cut.stopped_early and cut.token_ids == free.token_ids[:1]


def _no_eos(tokenizer):
    """The tokenizer with no end-of-sequence token, so generation runs to max_new_tokens."""

    class NoEos:
        eos_token_id = None
        chat_template = None

        def __call__(self, *args, **kwargs):
            return tokenizer(*args, **kwargs)

        def decode(self, *args, **kwargs):
            return tokenizer.decode(*args, **kwargs)

    return NoEos()


def test_generate_measured_weighs_the_weights_and_the_cache():
    from engine.quant.schemes import QuantScheme
    from engine.runtime.kv_cache import KVCacheConfig
    from engine.runtime.measured import generate_measured
    from engine.sizing.estimate import measured_bytes

    model, tokenizer = build_tiny_llama(), _no_eos(build_char_tokenizer())
    settings = GenerationSettings(max_new_tokens=6, chat=False)
    plain, plain_memory = generate_measured(model, tokenizer, "hello", settings)
    assert plain.token_ids == generate(model, tokenizer, "hello", settings).token_ids
    weights = sum(measured_bytes(model).values())  # parameters and buffers
    assert plain_memory.weight_bytes == weights and plain_memory.cuda_peak_bytes is None  # CPU: no peak
    assert plain_memory.kv_bytes > 0 and plain_memory.kv_packed_bytes is None
    assert plain_memory.total == weights + plain_memory.kv_bytes
    _, int4 = generate_measured(
        model, tokenizer, "hello", settings, KVCacheConfig(QuantScheme(4, "int", False, "channel"))
    )
    assert 0 < int4.kv_packed_bytes < plain_memory.kv_bytes
