"""engine.runtime.decode: the static-cache greedy loop, eager and compiled, against transformers' `generate`.

Logic runs on the tiny random Llama. Real inductor compilation (a C++ compiler at work) takes tens of
seconds with a cold cache on a small CPU, so the two tests that use it are `slow`; the others compile with the "eager" / "aot_eager" backends, which trace with
Dynamo (graph breaks, fullgraph; aot_eager also runs every op on fake tensors) without generating code.
CUDA graphs (reduce-overhead) are `gpu` and skip without CUDA.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from engine.kernels import QuantLinear, to_quant_linears
from engine.methods import RTNConfig, quantize_model
from engine.quant.schemes import QuantScheme
from engine.runtime import decode as fast
from engine.runtime.generation import GenerationError
from tests.conftest import build_char_tokenizer, build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")

INT8 = QuantScheme(8, "int", True, "channel")
INT4 = QuantScheme(4, "int", True, "group", 32)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def prompt_ids(tokens: int = 10, batch: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 96, (batch, tokens), generator=generator)  # 0-2 are the specials


@torch.inference_mode()
def hf_greedy(model, ids: torch.Tensor, new_tokens: int, eos=None) -> list[int]:
    out = model.generate(
        ids.to(next(model.parameters()).device),
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=new_tokens,
        eos_token_id=eos,
        pad_token_id=0,
    )
    return out[0, ids.shape[1] :].tolist()


def kept_step(model, mode: str, cache_len: int) -> fast._Step:
    (step,) = [s for key, s in fast._STEPS[model].items() if key[0] == mode and key[3] == cache_len]
    return step


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama()


def test_eager_matches_generate_and_the_cache_holds_prompt_plus_new_tokens(tiny):
    ids = prompt_ids()
    result = fast.decode(tiny, ids, 16)
    assert list(result.token_ids[0]) == hf_greedy(tiny, ids, 16)
    assert result.mode_used == "eager" and result.compile_seconds == 0 and result.graph_breaks is None
    assert result.new_tokens == 16 and result.prompt_tokens == 10 and result.cache_len == 26
    cache = kept_step(tiny, "eager", 26).cache
    assert cache.get_max_length() == 26
    assert int(cache.get_seq_length()) == 25  # the last token is returned, never fed back
    assert cache.layers[0].keys.shape == (1, 2, 26, 16)  # (batch, kv heads, cache, head dim)
    assert result.decode_tokens_per_s > 0 and result.prefill_tokens_per_s > 0


@pytest.mark.slow
def test_compiled_with_inductor_matches_eager_and_generate_and_is_reused():
    """The real thing on CPU: inductor compiles the step to C++ (one graph), once; a cold inductor cache
    makes this the slowest test here."""
    from torch._dynamo.utils import counters

    model = build_tiny_llama()
    ids = prompt_ids()
    expected = hf_greedy(model, ids, 16)
    compiled = fast.decode(model, ids, 16, "compiled")
    assert list(compiled.token_ids[0]) == expected
    assert list(fast.decode(model, ids, 16, "eager").token_ids[0]) == expected
    assert compiled.mode_used == "compiled (inductor)" and compiled.fallback_reason is None
    assert compiled.fullgraph is True and compiled.graph_breaks == 0
    assert compiled.compile_seconds > 0 and not compiled.reused

    graphs = counters["stats"]["unique_graphs"]
    again = fast.decode(model, prompt_ids(seed=1), 16, "compiled")  # another prompt, same shapes
    assert again.reused and again.compile_seconds == 0
    assert counters["stats"]["unique_graphs"] == graphs  # nothing was compiled again
    assert list(again.token_ids[0]) == hf_greedy(model, prompt_ids(seed=1), 16)


@pytest.mark.parametrize("weights", [INT8, INT4], ids=["int8", "int4"])
def test_packed_quantlinear_models_decode_and_trace_as_one_graph(tiny, weights):
    packed = to_quant_linears(tiny, weights)
    assert isinstance(packed.model.layers[0].self_attn.q_proj, QuantLinear)
    ids = prompt_ids()
    expected = hf_greedy(packed, ids, 12)
    assert list(fast.decode(packed, ids, 12).token_ids[0]) == expected
    traced = fast.decode(packed, ids, 12, "compiled", backend="aot_eager")  # fake tensors: no C++ compile
    assert list(traced.token_ids[0]) == expected
    assert traced.fullgraph is True and traced.graph_breaks == 0, traced.fallback_reason


def test_fake_quant_activations_break_the_graph_and_still_decode_the_same():
    """Fake-quantized activations branch on tensor values: fullgraph fails, fullgraph=False counts breaks."""
    one_layer = build_tiny_llama(num_hidden_layers=1)  # every break is traced: keep them few
    model = quantize_model(one_layer, RTNConfig(INT8, activations=INT8)).model
    ids = prompt_ids()
    result = fast.decode(model, ids, 8, "compiled", backend="eager")
    assert result.mode_used == "compiled (eager)" and result.fullgraph is False
    assert result.graph_breaks > 0
    assert "fullgraph=False" in result.fallback_reason
    assert list(result.token_ids[0]) == list(fast.decode(model, ids, 8).token_ids[0])


def test_failed_compilation_falls_back_to_eager_with_the_reason(tiny):
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler on this machine")

    ids = prompt_ids()
    result = fast.decode(tiny, ids, 8, "compiled", backend=broken_backend)
    assert result.mode == "compiled" and result.mode_used == "eager"
    assert "no C++ compiler on this machine" in result.fallback_reason
    assert list(result.token_ids[0]) == hf_greedy(tiny, ids, 8)


def test_max_new_tokens_is_respected_and_eos_stops_like_generate(tiny):
    ids = prompt_ids()
    for new_tokens in (1, 2, 5):
        assert fast.decode(tiny, ids, new_tokens).new_tokens == new_tokens
    free = hf_greedy(tiny, ids, 16)
    eos = free[4]  # pretend the fifth token ends the sequence
    stopped = fast.decode(tiny, ids, 16, eos_token_id=eos)
    assert stopped.stopped_at_eos
    assert list(stopped.token_ids[0]) == free[: free.index(eos)]
    assert hf_greedy(tiny, ids, 16, eos=eos) == free[: free.index(eos) + 1]  # generate keeps the EOS


def test_a_batch_of_equal_length_prompts_decodes_each_as_alone(tiny):
    ids = prompt_ids(batch=2)
    result = fast.decode(tiny, ids, 8)
    assert result.batch == 2
    for row in range(2):
        assert list(result.token_ids[row]) == hf_greedy(tiny, ids[row : row + 1], 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_ids=prompt_ids(20), cache_len=16), "need a cache of 28, but the static cache holds 16"),
        (dict(input_ids=prompt_ids(250)), "the model's context is 256"),
        (dict(mode="fast"), "mode 'fast' is not one of eager, compiled"),
        (dict(input_ids=prompt_ids()[0]), r"\(batch, tokens\) tensor"),
        (dict(input_ids=prompt_ids().float()), r"\(batch, tokens\) tensor"),
        (dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), "is empty"),
        (dict(max_new_tokens=0), "max_new_tokens must be a whole number >= 1"),
    ],
)
def test_bad_input_is_refused_with_a_reason(tiny, kwargs, message):
    arguments = dict(input_ids=prompt_ids(), max_new_tokens=8) | kwargs
    with pytest.raises(GenerationError, match=message):
        fast.decode(tiny, **arguments)


def test_steps_are_kept_per_model_and_shapes_and_freed_with_the_model():
    model = build_tiny_llama()
    ids = prompt_ids()
    fast.decode(model, ids, 4, "compiled", backend="eager")
    assert fast.decode(model, ids, 4, "compiled", backend="eager").reused
    assert not fast.decode(model, ids, 4, "compiled", backend="eager", cache_len=32).reused
    assert fast.decode(model, prompt_ids(6), 8, "compiled", backend="eager", cache_len=32).reused
    assert fast.compiled_entries(model) == 2
    for extra in range(fast.MAX_STEPS_PER_MODEL + 2):
        fast.decode(model, ids, 4, cache_len=40 + extra)
    assert fast.compiled_entries(model) == fast.MAX_STEPS_PER_MODEL  # the least recently used go
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None  # the kept steps do not hold the model


def test_decode_text_uses_the_tokenizer_and_stops_at_its_eos(tiny):
    tokenizer = build_char_tokenizer()
    result = fast.decode_text(tiny, tokenizer, "hello there", max_new_tokens=12)
    assert result.prompt_tokens == len("hello there")
    assert result.text == tokenizer.decode(list(result.token_ids[0]), skip_special_tokens=True)
    assert tokenizer.eos_token_id not in result.token_ids[0]


def test_speed_runs_every_loop_beside_each_other(tiny, monkeypatch):
    """engine.speed: the four loops on one variant decode the same greedy tokens and report compile time
    (Dynamo's "eager" backend here, so no C++ compile: the inductor path is the slow test's)."""
    from engine import speed

    monkeypatch.setattr(fast, "DEFAULT_BACKEND", "eager")
    results = speed.decode_comparison(
        tiny, build_char_tokenizer(), ["fp32"], prompt_tokens=12, new_tokens=6, loops=speed.LOOPS
    )
    assert [r.loop for r in results] == list(speed.LOOPS)
    assert len({r.token_ids for r in results}) == 1 and len({r.prompt_tokens for r in results}) == 1
    for r in results:
        assert r.new_tokens == 6 and r.decode_tokens_per_s > 0 and r.prefill_tokens_per_s > 0
    compiled = results[-1]
    assert compiled.ran_as == "compiled (eager)" and compiled.compile_seconds > 0
    assert {r.compile_seconds for r in results[:-1]} == {0.0}
    with pytest.raises(ValueError, match="unknown decode loops"):
        speed.decode_comparison(tiny, build_char_tokenizer(), ["fp32"], loops=["warp drive"])


@pytest.mark.slow
def test_default_model_eager_and_compiled_match_generate_token_for_token(default_loaded):
    """SmolLM2-135M, 16 greedy tokens: our loop, eager and inductor-compiled, is transformers' generate."""
    model, tokenizer = default_loaded.model, default_loaded.tokenizer
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    expected = hf_greedy(model, ids, 16)
    eager = fast.decode(model, ids, 16, "eager")
    compiled = fast.decode(model, ids, 16, "compiled")
    assert list(eager.token_ids[0]) == expected
    assert list(compiled.token_ids[0]) == expected
    assert compiled.mode_used == "compiled (inductor)" and compiled.graph_breaks == 0


# -- GPU --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("weights", [None, INT8, INT4], ids=["bf16", "int8", "int4"])
def test_reduce_overhead_on_cuda_replays_cuda_graphs_and_matches_eager(weights):
    model = build_tiny_llama().to("cuda", torch.bfloat16)
    if weights is not None:
        model = to_quant_linears(model, weights)
    ids = prompt_ids().cuda()
    eager = fast.decode(model, ids, 16, "eager")
    compiled = fast.decode(model, ids, 16, "compiled")
    assert compiled.mode_used == "compiled (reduce-overhead)", compiled.fallback_reason
    assert list(compiled.token_ids[0]) == list(eager.token_ids[0])
    again = fast.decode(model, ids, 16, "compiled")
    assert again.reused and again.compile_seconds == 0
    assert list(again.token_ids[0]) == list(eager.token_ids[0])
