"""The one token loop every decoder in the engine runs: feed a token, get the next, stop on time or EOS.

The callers differ only in how one step runs:
- engine.runtime.generation.generate: the model on transformers' growing (dynamic) cache or our quantized
  KV cache, the next token picked on the device (argmax, or sampled), per-token callbacks for streaming;
- engine.runtime.decode: a preallocated static cache, the step (argmax included) eager or compiled.

A step is `step(token) -> next token`, both (batch, 1) token ids on the model's device; the step closes
over its cache and position. The argmax lives inside the step rather than here, so a compiled step (a
CUDA graph on a GPU) returns one token per sequence instead of a (batch, vocab) logits tensor that would
have to be copied out of the graph's memory and reduced in another launch. `argmax_token` is the greedy
pick for steps that produce logits.

Host reads (issue 16): a token goes straight back into the next step, on the device. The loop copies a
token's ids to the host only when someone needs them — a per-token callback (streaming) or end-of-sequence
watching — and then exactly once per token, for both. With neither (benchmarks) nothing is read back
until the caller takes the tokens at the end, so the host can queue steps ahead of the device. The kept
tokens are the steps' own outputs, concatenated once at the end (no per-token copy into a buffer).

The first token comes from the prefill (the prompt, matrix-matrix), which the caller runs and times; the
loop then runs `max_new_tokens - 1` steps at most, never one step more than it keeps (the last token is
returned, never fed back).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
from torch import Tensor

Step = Callable[[Tensor], Tensor]  # (batch, 1) token ids -> (batch, 1) next token ids
OnToken = Callable[[int, tuple[int, ...]], bool]  # (index, the token's id per sequence) -> stop?


@dataclass(frozen=True)
class LoopEnd:
    tokens: Tensor  # (batch, filled) generated ids, the first token included; EOS tokens kept in place
    stopped_at_eos: bool  # every sequence produced one of the stop ids
    cut_short: bool  # the per-token callback asked to stop


def argmax_token(logits: Tensor) -> Tensor:
    """(batch, tokens, vocab) logits -> (batch, 1) greedy next token after the last position."""
    return logits[:, -1].argmax(dim=-1, keepdim=True)


def read_ids(token: Tensor) -> tuple[int, ...]:
    """The (batch, 1) token's ids on the host: one read (a device sync on a GPU)."""
    if token.numel() == 1:
        return (int(token),)  # one `_local_scalar_dense`, which the op counter sees on a CPU too
    return tuple(token.reshape(-1).cpu().tolist())


def _stop_set(stop_ids: Tensor | Collection[int] | None) -> frozenset[int]:
    if stop_ids is None:
        return frozenset()
    if isinstance(stop_ids, Tensor):
        return frozenset(stop_ids.reshape(-1).tolist())  # once per run, not per token
    return frozenset(int(i) for i in stop_ids)


def greedy_loop(
    step: Step,
    first: Tensor,
    max_new_tokens: int,
    stop_ids: Tensor | Collection[int] | None = None,
    on_token: OnToken | None = None,
) -> LoopEnd:
    """Run `step` from `first` (batch, 1) until `max_new_tokens` tokens are held or every sequence stopped.

    `stop_ids` (ids, or a tensor of them) ends a sequence at any of those ids. `on_token(index, ids)` runs
    after each kept token that does not end the run, with the token's id per sequence; returning True
    stops the loop there (the caller's Stop button). Either one costs one host read per token (both
    together still one); with neither the loop reads nothing back.
    """
    stops = _stop_set(stop_ids)
    watch = bool(stops) or on_token is not None
    finished = [False] * first.shape[0]
    kept = []
    token = first
    for index in range(max_new_tokens):
        if index:
            token = step(token)  # (batch, 1), still on the device
        kept.append(token)
        if not watch:
            continue
        ids = read_ids(token)  # the one host read of this token
        if stops:
            finished = [done or i in stops for done, i in zip(finished, ids, strict=True)]
            if all(finished):
                return LoopEnd(torch.cat(kept, dim=1), True, False)
        if on_token is not None and on_token(index, ids):
            return LoopEnd(torch.cat(kept, dim=1), False, True)
    return LoopEnd(torch.cat(kept, dim=1), False, False)
