"""Issue 16: per generated token, our decode loops launch no more aten ops than transformers' `generate`
and read back at most the one token id that streaming (or EOS watching) needs.

Counted with engine.speed.ops.count_ops on the tiny random Llama on CPU: the same Python dispatches the same
aten ops on a GPU, where each op that computes is a kernel launch and each host read a device sync. Per
token = (count of a run with N + EXTRA new tokens - count with N) / EXTRA, so prefill, warm-up and
set-up cancel out. transformers' `generate` runs under `torch.inference_mode()` as our loops do: under its
own `no_grad` composite ops dispatch as their parts (`linear` as `mm` + `_unsafe_view`), which would
flatter us. A failure prints both loops' per-token ops by name.
"""

from __future__ import annotations

import pytest
import torch

from engine.runtime import decode as fast
from engine.runtime.generation import GenerationSettings, generate
from engine.runtime.greedy import greedy_loop
from engine.speed.ops import OpCounts, count_ops
from tests.conftest import build_char_tokenizer, build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")

N, EXTRA = 4, 20
PROMPT = "the quick brown"


class _Tokenizer:
    """The char tokenizer with a chosen end-of-sequence id (None: generate to max_new_tokens)."""

    chat_template = None

    def __init__(self, tokenizer, eos_token_id: int | None) -> None:
        self._tokenizer, self.eos_token_id = tokenizer, eos_token_id

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self._tokenizer.decode(*args, **kwargs)


def per_token(run) -> OpCounts:
    """Ops of `run(new_tokens)` per extra token: (N + EXTRA) run minus N run (both after a warm-up)."""
    run(N + EXTRA)
    short = count_ops(lambda: run(N))
    long = count_ops(lambda: run(N + EXTRA))
    return long - short


def breakdown(name: str, counts: OpCounts) -> str:
    ops = ", ".join(f"{op.removeprefix('aten.')} {n / EXTRA:g}" for op, n in counts.launched().items())
    return f"{name}: {counts.launches / EXTRA:g} launches, {counts.host_reads / EXTRA:g} host reads ({ops})"


@pytest.fixture(scope="module", params=[2, 6], ids=["2 layers", "6 layers"])
def subject(request):
    """(model, tokenizer, prompt ids, an id no loop here generates: an EOS that never ends a run)."""
    model, tokenizer = build_tiny_llama(num_hidden_layers=request.param), build_char_tokenizer()
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    free = fast.decode(model, ids, N + EXTRA).token_ids[0]
    never = next(i for i in range(3, model.config.vocab_size) if i not in free)
    return model, tokenizer, ids, never


@pytest.fixture(scope="module")
def hf_generate(subject) -> OpCounts:
    model, _, ids, _ = subject

    @torch.inference_mode()
    def run(new_tokens: int):
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=new_tokens,
            eos_token_id=None,
            pad_token_id=0,
        )

    return per_token(run)


def _dynamic(subject, eos: bool, streaming: bool, **settings) -> OpCounts:
    model, tokenizer, _, never = subject
    quiet = _Tokenizer(tokenizer, never if eos else None)
    on_token = (lambda token_id, text: None) if streaming else None

    def run(new_tokens: int):
        generate(
            model,
            quiet,
            PROMPT,
            GenerationSettings(max_new_tokens=new_tokens, chat=False, **settings),
            on_token,
        )

    return per_token(run)


def _static(subject, eos: bool) -> OpCounts:
    model, _, ids, never = subject
    cache_len = ids.shape[1] + N + EXTRA  # one cache (one kept step) for both runs

    def run(new_tokens: int):
        fast.decode(model, ids, new_tokens, eos_token_id=never if eos else None, cache_len=cache_len)

    return per_token(run)


@pytest.mark.parametrize("eos, streaming", [(False, False), (True, True)], ids=["plain", "eos+streaming"])
def test_dynamic_loop_launches_no_more_than_generate_and_reads_one_token_id(
    subject, hf_generate, eos, streaming
):
    ours = _dynamic(subject, eos, streaming)
    report = f"\n{breakdown('dynamic loop', ours)}\n{breakdown('transformers generate', hf_generate)}"
    assert ours.launches <= hf_generate.launches, report
    assert ours.host_reads == EXTRA, report  # the token id, once per token
    assert ours.by_name["aten.item.default"] + ours.by_name["aten._local_scalar_dense.default"] == EXTRA


def test_sampling_reads_back_only_the_token_id(subject):
    ours = _dynamic(subject, eos=False, streaming=True, temperature=0.8, top_p=0.9)  # a sample may hit any id
    assert ours.host_reads == EXTRA, breakdown("dynamic loop, sampled", ours)
    assert "aten.multinomial.default" not in ours.by_name  # its input checks are two hidden host reads


def test_static_eager_loop_launches_no_more_than_generate_and_reads_nothing(subject, hf_generate):
    ours = _static(subject, eos=False)
    report = f"\n{breakdown('static loop (eager)', ours)}\n{breakdown('transformers generate', hf_generate)}"
    assert ours.launches <= hf_generate.launches, report
    assert ours.host_reads == 0, report
    # no per-step mask building, no per-layer position arithmetic, no clone of the step's output
    assert "aten.arange.default" not in ours.by_name and "aten.clone.default" not in ours.by_name, report


def test_static_eager_loop_watching_for_eos_reads_one_token_id(subject, hf_generate):
    ours = _static(subject, eos=True)
    report = f"\n{breakdown('static loop, EOS', ours)}\n{breakdown('transformers generate', hf_generate)}"
    assert ours.host_reads <= EXTRA, report
    assert ours.launches <= hf_generate.launches, report


def test_static_cache_writes_each_layer_with_two_index_copies(subject):
    model, _, _, _ = subject
    ours = _static(subject, eos=False)
    layers = model.config.num_hidden_layers
    report = breakdown("static loop (eager)", ours)
    assert ours.by_name["aten.index_copy_.default"] == 2 * layers * EXTRA, report
    assert ours.by_name["aten.add_.Tensor"] == EXTRA, report  # the shared position, once per step
    assert ours.by_name["aten.index_fill_.int_Scalar"] == EXTRA, report  # the mask, one slot per step


def test_the_loop_reads_nothing_without_a_reader_and_once_with_both():
    def step(token):
        return token + 1

    first = torch.tensor([[3]])
    silent = count_ops(lambda: greedy_loop(step, first, 10))
    assert silent.host_reads == 0
    both = count_ops(lambda: greedy_loop(step, first, 10, stop_ids=[99], on_token=lambda i, ids: False))
    assert both.host_reads == 10  # one per kept token, shared by the callback and the EOS check
