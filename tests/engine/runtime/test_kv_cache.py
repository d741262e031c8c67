"""The quantized KV cache: a transparent 16-bit baseline, honest bytes, KIVI layouts, and real-model quality."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from engine.evaluation.perplexity import perplexity
from engine.models.loading import load_model
from engine.models.sources import ModelSource
from engine.quant.metrics import sqnr_db
from engine.quant.schemes import QuantScheme
from engine.runtime.generation import GenerationError, GenerationSettings, generate
from engine.runtime.kv_cache import KVCacheConfig, KVCacheError, QuantizedKVLayer, make_kv_cache
from tests.conftest import build_tiny_llama

# One thread: on two cores shared with another busy process, two OpenMP threads made the default-model
# test about ten times slower; see the single_thread fixture.
pytestmark = pytest.mark.usefixtures("single_thread")

INT8 = QuantScheme(8, symmetric=False)
INT4 = QuantScheme(4)
INT2 = QuantScheme(2, symmetric=False)


@pytest.fixture(scope="module")
def model():
    return build_tiny_llama()


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model_dir):
    return load_model(ModelSource("folder", str(tiny_model_dir)))


def states(tokens: int, heads: int = 2, head_dim: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn((1, heads, tokens, head_dim), generator=torch.Generator().manual_seed(seed))


def test_sixteen_bit_cache_is_the_dynamic_cache(model):
    ids = torch.randint(3, 96, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain = model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True).logits
        cache = make_kv_cache(model.config, None)
        ours = model(input_ids=ids, past_key_values=cache, use_cache=True).logits
        step = model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True).logits
        reference = DynamicCache()
        model(input_ids=ids, past_key_values=reference, use_cache=True)
        expected = model(input_ids=ids[:, :1], past_key_values=reference, use_cache=True).logits
    assert torch.equal(ours, plain) and torch.equal(step, expected)
    assert cache.get_seq_length() == 41
    assert cache.nbytes() == cache.fp16_nbytes() == 2 * 2 * 2 * 41 * 16 * 2  # layers, K/V, heads, tokens, dim
    assert cache.resident_bytes() == 2 * cache.nbytes()  # the tiny model runs in float32


def test_sixteen_bit_generation_is_token_identical(tiny_loaded):
    settings = GenerationSettings(max_new_tokens=12, chat=False)
    plain = generate(tiny_loaded.model, tiny_loaded.tokenizer, "the quick", settings)
    ours = generate(
        tiny_loaded.model, tiny_loaded.tokenizer, "the quick", settings, kv_scheme=KVCacheConfig()
    )
    assert ours.token_ids == plain.token_ids and len(plain.token_ids) > 0
    assert ours.token_logprobs == plain.token_logprobs


def test_quantized_generation_runs_and_int8_agrees(tiny_loaded):
    settings = GenerationSettings(max_new_tokens=12, chat=False)
    plain = generate(tiny_loaded.model, tiny_loaded.tokenizer, "the quick", settings)
    int8 = generate(tiny_loaded.model, tiny_loaded.tokenizer, "the quick", settings, kv_scheme=INT8)
    kivi = KVCacheConfig(INT2, key_axis="channel", token_block=4)
    int2 = generate(tiny_loaded.model, tiny_loaded.tokenizer, "the quick", settings, kv_scheme=kivi)
    assert int8.token_ids == plain.token_ids
    assert len(int2.token_ids) > 0
    with pytest.raises(GenerationError, match="not both"):
        generate(tiny_loaded.model, tiny_loaded.tokenizer, "x", settings, kv_scheme=INT8, past_key_values=1)


def test_one_forward_sees_what_decoding_sees(model):
    """Per-token quantization is independent of chunking: a window in one forward reads the same K/V
    as decoding it token by token, which is why perplexity needs one forward per window."""
    ids = torch.randint(3, 96, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole = model(input_ids=ids, past_key_values=make_kv_cache(model.config, INT4), use_cache=True).logits
        cache = make_kv_cache(model.config, INT4)
        stepped = torch.cat(
            [
                model(input_ids=ids[:, i : i + 1], past_key_values=cache, use_cache=True).logits
                for i in range(24)
            ],
            dim=1,
        )
        plain = model(input_ids=ids).logits
    torch.testing.assert_close(stepped, whole, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(whole, plain, atol=1e-4)  # and the quantization did something


def test_int4_stores_a_quarter_plus_scales():
    layer = QuantizedKVLayer(KVCacheConfig(INT4))
    keys, values = layer.update(states(100), states(100, seed=1))
    assert keys.shape == values.shape == (1, 2, 100, 64)
    codes = 2 * 100 * 64 // 2  # int4: half a byte per element
    scales = 2 * 100 * 2  # one fp16 scale per token and head
    assert layer.nbytes() == 2 * (codes + scales)
    assert layer.fp16_nbytes() == 2 * 2 * 100 * 64 * 2
    assert layer.nbytes() / layer.fp16_nbytes() == pytest.approx(0.25 + 1 / 64)
    assert layer.resident_bytes() == 2 * (2 * codes + scales)  # codes held one per byte


def test_whole_cache_bytes_on_a_model():
    model = build_tiny_llama(hidden_size=128, num_attention_heads=2, num_key_value_heads=2)  # head_dim 64
    ids = torch.randint(3, 96, (1, 50), generator=torch.Generator().manual_seed(0))
    cache = make_kv_cache(model.config, QuantScheme(4, symmetric=False, granularity="group", group_size=32))
    with torch.inference_mode():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    elements = 2 * 2 * 2 * 50 * 64  # layers, K/V, heads, tokens, head_dim
    assert cache.fp16_nbytes() == 2 * elements
    assert cache.nbytes() == elements // 2 + 2 * 2 * (elements // 32)  # codes + fp16 scale and zero per 32
    assert 0.25 < cache.nbytes() / cache.fp16_nbytes() < 0.32


def test_per_channel_keys_wait_for_a_full_block():
    layer = QuantizedKVLayer(KVCacheConfig(INT2, key_axis="channel", token_block=16))
    keys_in, values_in = states(10), states(10, seed=1)
    keys, values = layer.update(keys_in, values_in)
    assert torch.equal(keys, keys_in)  # a partial block stays in full precision
    assert not torch.equal(values, values_in)  # values are quantized per token at once
    more = states(10, seed=2)
    keys, _ = layer.update(more, states(10, seed=3))
    history = torch.cat([keys_in, more], dim=-2)
    assert layer.get_seq_length() == 20 and keys.shape[-2] == 20
    assert torch.equal(keys[..., 16:, :], history[..., 16:, :])  # the new residual
    assert not torch.equal(keys[..., :16, :], history[..., :16, :])  # the first block, quantized
    assert layer.nbytes() < layer.fp16_nbytes()


def test_per_channel_keys_beat_per_token_on_outlier_channels():
    """KIVI's observation: key outliers sit in fixed channels, so per-channel scales isolate them."""
    keys = states(128)
    keys[..., 5] *= 10  # one outlier channel, as real keys have
    token = QuantizedKVLayer(KVCacheConfig(INT2)).update(keys, keys)[0]
    channel = QuantizedKVLayer(KVCacheConfig(INT2, key_axis="channel", token_block=32)).update(keys, keys)[0]
    normal = torch.arange(64) != 5  # per-token scales spend the grid on the outlier, zeroing the rest
    assert (
        sqnr_db(keys[..., normal], channel[..., normal]) > sqnr_db(keys[..., normal], token[..., normal]) + 3
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(scheme=QuantScheme(8, granularity="tensor")), "no whole tensor"),
        (
            dict(scheme=QuantScheme(4, "nf4", granularity="group", group_size=64, double_quant=True)),
            "double_quant",
        ),
        (dict(scheme=INT4, key_axis="head"), "key_axis"),
        (dict(scheme=INT4, token_block=0), "token_block"),
        (
            dict(scheme=QuantScheme(4, granularity="group", group_size=48), key_axis="channel"),
            "does not divide",
        ),
    ],
)
def test_bad_settings_are_explained(settings, message):
    with pytest.raises(KVCacheError, match=message):
        KVCacheConfig(**settings)


def test_group_size_must_divide_head_dim(model):
    cache = make_kv_cache(model.config, QuantScheme(4, granularity="group", group_size=32))  # head_dim 16
    with pytest.raises(KVCacheError, match="head width of 16 values"), torch.inference_mode():
        model(input_ids=torch.tensor([[5, 6, 7]]), past_key_values=cache, use_cache=True)


def test_sliding_window_models_and_rollback_are_refused(model):
    from transformers import MistralConfig

    with pytest.raises(KVCacheError, match="full-attention layers only"):
        make_kv_cache(MistralConfig(num_hidden_layers=2, sliding_window=64), INT8)
    cache = make_kv_cache(model.config, INT8)
    with pytest.raises(KVCacheError, match="crop"):
        cache.crop(-1)


@pytest.mark.slow
def test_kv_quantization_on_the_default_model(default_loaded):
    from engine.models.data import WindowSpec, load_text, token_windows

    ids = token_windows(
        default_loaded.tokenizer, load_text("britannica"), WindowSpec(window=256, count=2, split="evaluation")
    )
    model = default_loaded.model
    plain = perplexity(model, ids).perplexity
    int8 = perplexity(model, ids, kv_scheme=INT8).perplexity
    int2 = perplexity(model, ids, kv_scheme=INT2).perplexity
    assert abs(int8 / plain - 1) < 0.01, (plain, int8)
    assert int2 > 1.5 * int8, (int8, int2)
