"""engine.runtime.static_cache: a StaticCache whose full-attention layers share one position tensor; and
engine.runtime.decode's preallocated attention mask, for sdpa and "eager" attention, left to transformers
where a model has sliding-window layers."""

from __future__ import annotations

import pytest
import torch
from transformers import StaticCache

from engine.runtime import decode as fast
from engine.runtime.static_cache import SharedPositionCache, SharedPositionLayer
from tests.conftest import build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")


def prompt_ids(tokens: int = 10) -> torch.Tensor:
    return torch.randint(3, 96, (1, tokens), generator=torch.Generator().manual_seed(0))


@torch.inference_mode()
def hf_greedy(model, ids: torch.Tensor, new_tokens: int, cache=None) -> list[int]:
    extra = {} if cache is None else {"past_key_values": cache}
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=new_tokens,
        eos_token_id=None,
        pad_token_id=0,
        **extra,
    )
    return out[0, ids.shape[1] :].tolist()


def tiny_hybrid():
    """A two-layer Qwen2 with one full-attention and one sliding-window (6 tokens) layer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        use_sliding_window=True,
        sliding_window=6,
        layer_types=["full_attention", "sliding_attention"],
        tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(config).eval()


def test_transformers_generate_on_it_matches_its_own_static_cache():
    model, ids = build_tiny_llama(), prompt_ids()
    ours = SharedPositionCache(model.config, 22)
    assert isinstance(ours, StaticCache) and ours.all_full_attention
    expected = hf_greedy(model, ids, 12, StaticCache(config=model.config, max_cache_len=22))
    assert hf_greedy(model, ids, 12, ours) == expected == hf_greedy(model, ids, 12)
    assert int(ours.get_seq_length()) == 21  # the last token is returned, never fed back
    positions = {id(layer.cumulative_length) for layer in ours.layers}
    assert positions == {id(ours.position)}  # one tensor for every layer
    with torch.inference_mode():  # the cache's tensors are inference tensors
        ours.reset()
    assert int(ours.get_seq_length()) == 0 and not ours.layers[0].keys.any()


@torch.inference_mode()
def test_a_prompt_then_single_tokens_are_written_where_a_static_cache_writes_them():
    model, ids = build_tiny_llama(), prompt_ids(6)
    ours, theirs = SharedPositionCache(model.config, 9), StaticCache(config=model.config, max_cache_len=9)
    for cache in (ours, theirs):
        model(input_ids=ids, past_key_values=cache, use_cache=True)
        for token in (5, 7):
            model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
    assert int(ours.get_seq_length()) == int(theirs.get_seq_length()) == 8
    for mine, reference in zip(ours.layers, theirs.layers, strict=True):
        torch.testing.assert_close(mine.keys, reference.keys)
        torch.testing.assert_close(mine.values, reference.values)


def test_eager_attention_gets_an_additive_mask_and_decodes_like_generate():
    model, ids = build_tiny_llama(attn_implementation="eager"), prompt_ids()
    result = fast.decode(model, ids, 12)
    (step,) = fast._STEPS[model].values()
    assert step.mask is not None and step.mask.tensor.dtype == torch.float32 and step.mask.attend == 0.0
    assert list(result.token_ids[0]) == hf_greedy(model, ids, 12)


def test_sdpa_gets_a_bool_mask_opened_up_to_the_last_written_token():
    model, ids = build_tiny_llama(), prompt_ids()
    fast.decode(model, ids, 5, cache_len=20)
    (step,) = fast._STEPS[model].values()
    assert step.mask.tensor.dtype == torch.bool
    assert step.mask.tensor[0, 0, 0].tolist() == [True] * 14 + [False] * 6  # 10 prompt + 4 fed back


def test_sliding_window_layers_keep_their_own_class_and_the_mask_is_left_to_transformers():
    model, ids = tiny_hybrid(), prompt_ids()
    result = fast.decode(model, ids, 12)  # 22 tokens through a 6-token window
    (step,) = fast._STEPS[model].values()
    assert [type(layer).__name__ for layer in step.cache.layers] == [
        SharedPositionLayer.__name__,
        "StaticSlidingWindowLayer",
    ]
    assert step.mask is None and not step.cache.all_full_attention
    assert list(result.token_ids[0]) == hf_greedy(model, ids, 12)
    assert [int(layer.get_seq_length()) for layer in step.cache.layers] == [21, 21]


def test_a_cache_built_for_another_device_is_refused():
    model = build_tiny_llama()
    cache = SharedPositionCache(model.config, 16, "meta")
    with (
        pytest.raises(ValueError, match="build SharedPositionCache with the model's device"),
        torch.inference_mode(),
    ):
        model(input_ids=prompt_ids(4), past_key_values=cache, use_cache=True)
