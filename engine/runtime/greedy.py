"""The one token loop every decoder in the engine runs: feed a token, get the next, stop on time or EOS.

The callers differ only in how one step runs:
- engine.runtime.generation.generate: the model on transformers' growing (dynamic) cache or our quantized
  KV cache, the next token picked on the host (argmax, or sampled), per-token callbacks for streaming;
- engine.runtime.decode: a preallocated StaticCache, the step (argmax included) eager or compiled,
  nothing copied to the host between steps unless an end-of-sequence token must be watched for.

A step is `step(token) -> next token`, both (batch, 1) token ids; the step closes over its cache and
position. The argmax lives inside the step rather than here, so a compiled step (a CUDA graph on a GPU)
returns one token per sequence instead of a (batch, vocab) logits tensor that would have to be copied
out of the graph's memory and reduced in another launch. `argmax_token` is the greedy pick for steps
that produce logits.

The first token comes from the prefill (the prompt, matrix-matrix), which the caller runs and times; the
loop then runs `max_new_tokens - 1` steps at most, never one step more than it keeps (the last token is
returned, never fed back).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Step = Callable[[Tensor], Tensor]  # (batch, 1) token ids -> (batch, 1) next token ids


@dataclass(frozen=True)
class LoopEnd:
    tokens: Tensor  # (batch, filled) generated ids, the first token included; EOS tokens kept in place
    stopped_at_eos: bool  # every sequence produced one of the stop ids
    cut_short: bool  # the per-token callback asked to stop


def argmax_token(logits: Tensor) -> Tensor:
    """(batch, tokens, vocab) logits -> (batch, 1) greedy next token after the last position."""
    return logits[:, -1].argmax(dim=-1, keepdim=True)


def greedy_loop(
    step: Step,
    first: Tensor,
    max_new_tokens: int,
    stop_ids: Tensor | None = None,
    on_token: Callable[[int, Tensor], bool] | None = None,
) -> LoopEnd:
    """Run `step` from `first` (batch, 1) until `max_new_tokens` tokens are held or every sequence stopped.

    `stop_ids` (a 1-D tensor on the tokens' device) ends a sequence at any of those ids; checking costs
    one host sync per token, so None (decode exactly `max_new_tokens`) keeps the loop free of syncs.
    `on_token(index, token)` runs after each kept token that does not end the run; returning True stops
    the loop there (the caller's Stop button).
    """
    batch = first.shape[0]
    tokens = torch.empty(batch, max_new_tokens, dtype=torch.long, device=first.device)  # (batch, new)
    finished = None
    token = first
    for index in range(max_new_tokens):
        if index:
            token = step(token)  # (batch, 1)
        tokens[:, index] = token[:, 0]
        if stop_ids is not None:
            hit = torch.isin(token[:, 0], stop_ids)  # (batch,)
            finished = hit if finished is None else finished | hit
            if bool(finished.all()):  # the host sync, only when watching for EOS
                return LoopEnd(tokens[:, : index + 1], True, False)
        if on_token is not None and on_token(index, token):
            return LoopEnd(tokens[:, : index + 1], False, True)
    return LoopEnd(tokens, False, False)
