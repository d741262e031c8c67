"""Token-level comparison of a generated continuation under the reference and a quantized variant.

After the compare page has generated text with each model, this module scores one continuation (prompt
ids + generated ids) under two models with one teacher-forced forward each: for every generated position
the token's probability under the reference and under the variant, KL(reference || variant) of the two
next-token distributions (float32 log-softmax, nats), both models' top-1 tokens and the reference's two
likeliest tokens' probabilities (a near-tie there explains a greedy divergence better than the KL). It
also holds the plain-list measures of two greedy outputs (`first_divergence`, `agreement`) and
`token_pieces`, the text each token adds, so a page can draw tokens one by one; `score_continuation` is
all of it for one column.

Where this departs from generation: the forward runs over the whole sequence at once instead of one token
at a time, so probabilities can differ from the generation loop's in the last float digits. A quantized
KV cache (`variant_kv`) goes through `engine.runtime.kv_cache` in that single forward, which for per-token K/V
quantization stores exactly what generation stores (see that module for per-channel keys).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.quant.schemes import QuantScheme
from engine.runtime.kv_cache import KVCacheConfig, make_kv_cache

ROWS_PER_CHUNK = 256  # positions per float32 log-softmax chunk: 256 x 49,152 x 4 B = 48 MiB at most


@dataclass(frozen=True)
class TokenStat:
    """One generated position, scored under both models on the same prefix."""

    position: int  # index among the generated tokens (0 = first generated token)
    token_id: int  # the token the scored continuation holds here
    p_reference: float  # its probability under the reference (temperature 1)
    p_variant: float  # its probability under the variant
    kl: float  # KL(reference || variant) of the next-token distributions here, in nats
    reference_top1: int  # the reference's most likely token here
    variant_top1: int  # the variant's most likely token here
    reference_top2_p: tuple[float, float] = (float("nan"), float("nan"))  # its two likeliest tokens' p

    @property
    def reference_margin(self) -> float:
        """How far the reference's top-1 token leads its second (probability points): near 0, a near-tie
        that any small change to the logits can flip under greedy decoding."""
        return self.reference_top2_p[0] - self.reference_top2_p[1]


@dataclass(frozen=True)
class TokenComparison:
    """Per-position scores of one continuation; empty when nothing was generated."""

    tokens: list[TokenStat]  # one per generated token, in order

    @property
    def mean_kl(self) -> float:
        return sum(t.kl for t in self.tokens) / len(self.tokens) if self.tokens else float("nan")

    @property
    def max_kl(self) -> float:
        return max((t.kl for t in self.tokens), default=float("nan"))

    @property
    def top1_agreement(self) -> float:
        """Share of positions where both models' most likely next token is the same (teacher-forced)."""
        if not self.tokens:
            return float("nan")
        return sum(t.reference_top1 == t.variant_top1 for t in self.tokens) / len(self.tokens)


def _ids_tensor(ids: Tensor | Sequence[int]) -> Tensor:
    """A (tokens,) int64 CPU tensor from a list or a (tokens,) / (1, tokens) tensor."""
    t = torch.as_tensor(ids, dtype=torch.long).detach().cpu()
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1:
        raise ValueError(f"expected one sequence of token ids, got shape {tuple(t.shape)}")
    return t


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _check_fits(model, ids: Tensor) -> None:
    """Errors with a reason instead of an index error deep inside the model."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and ids.numel() > limit:
        raise ValueError(f"the sequence is {ids.numel()} tokens but the model's context is {limit}")
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and (int(ids.max()) >= vocab or int(ids.min()) < 0):
        raise ValueError(f"a token id is outside the model's vocabulary of {vocab}")


def _next_token_logits(model, inputs: Tensor, keep: int, kv: KVCacheConfig | None) -> Tensor:
    """Logits (keep, vocab) predicting the last `keep` tokens after `inputs` (tokens,)."""
    kwargs: dict = {"use_cache": False}
    if kv is not None:
        kwargs = {"use_cache": True, "past_key_values": make_kv_cache(model.config, kv)}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = keep
    out = model(input_ids=inputs.to(_device_of(model)).unsqueeze(0), **kwargs)
    return out.logits[0, -keep:]  # (keep, vocab)


@torch.inference_mode()
def compare_tokens(
    reference,
    variant,
    prompt_ids: Tensor | Sequence[int],
    generated_ids: Sequence[int],
    variant_kv: QuantScheme | KVCacheConfig | None = None,
    reference_kv: QuantScheme | KVCacheConfig | None = None,
) -> TokenComparison:
    """Score `generated_ids` (after `prompt_ids`) under both models, one teacher-forced forward each.

    `variant` may be the reference itself with `variant_kv` set: a KV-cache-only variant.
    """
    prompt = _ids_tensor(prompt_ids)
    generated = _ids_tensor(list(generated_ids))
    if prompt.numel() == 0:
        raise ValueError("the prompt has no tokens: a continuation needs at least one token before it")
    if generated.numel() == 0:
        return TokenComparison([])
    sequence = torch.cat([prompt, generated])  # (tokens,)
    inputs = sequence[:-1]  # the last token is only a target
    keep = generated.numel()
    _check_fits(reference, sequence)
    _check_fits(variant, sequence)
    ref_logits = _next_token_logits(reference, inputs, keep, _as_kv(reference_kv))
    var_logits = _next_token_logits(variant, inputs, keep, _as_kv(variant_kv))
    if ref_logits.shape[-1] != var_logits.shape[-1]:
        raise ValueError(
            f"the models have different vocabularies ({ref_logits.shape[-1]} vs {var_logits.shape[-1]})"
        )
    stats: list[TokenStat] = []
    for start in range(0, keep, ROWS_PER_CHUNK):
        rows = slice(start, start + ROWS_PER_CHUNK)
        ref_logp = torch.log_softmax(ref_logits[rows].float().cpu(), dim=-1)  # (rows, vocab)
        var_logp = torch.log_softmax(var_logits[rows].float().cpu(), dim=-1)
        targets = generated[rows].unsqueeze(-1)  # (rows, 1)
        p_ref = ref_logp.gather(-1, targets).squeeze(-1).exp()  # (rows,)
        p_var = var_logp.gather(-1, targets).squeeze(-1).exp()
        kl = (ref_logp.exp() * (ref_logp - var_logp)).sum(-1).clamp_min(0.0)  # (rows,)
        ref_top1, var_top1 = ref_logp.argmax(-1), var_logp.argmax(-1)
        ref_top2 = ref_logp.topk(min(2, ref_logp.shape[-1]), dim=-1).values.exp()  # (rows, 2)
        for offset in range(targets.shape[0]):
            stats.append(
                TokenStat(
                    position=start + offset,
                    token_id=int(targets[offset, 0]),
                    p_reference=float(p_ref[offset]),
                    p_variant=float(p_var[offset]),
                    kl=float(kl[offset]),
                    reference_top1=int(ref_top1[offset]),
                    variant_top1=int(var_top1[offset]),
                    reference_top2_p=(float(ref_top2[offset, 0]), float(ref_top2[offset, -1])),
                )
            )
    return TokenComparison(stats)


def _as_kv(kv: QuantScheme | KVCacheConfig | None) -> KVCacheConfig | None:
    if kv is None or isinstance(kv, KVCacheConfig):
        return kv
    return KVCacheConfig(scheme=kv)


@dataclass(frozen=True)
class ScoredContinuation:
    """What the Compare page draws for one generated column besides its tokens."""

    pieces: list[str]  # the text each token adds (token_pieces)
    comparison: TokenComparison | None  # teacher-forced scores against the reference; None for itself
    reference_top1_text: list[str]  # the reference's most likely token here, as text, per position


def score_continuation(
    reference,
    variant,
    tokenizer,
    prompt_ids: Tensor | Sequence[int],
    token_ids: Sequence[int],
    variant_kv: QuantScheme | KVCacheConfig | None = None,
    is_reference: bool = False,
) -> ScoredContinuation:
    """Pieces of `token_ids` and, unless `is_reference` (or nothing was generated), their scores."""
    pieces = token_pieces(tokenizer, token_ids)
    if is_reference or not token_ids:
        return ScoredContinuation(pieces, None, [])
    comparison = compare_tokens(reference, variant, prompt_ids, token_ids, variant_kv=variant_kv)
    top1 = [tokenizer.decode([t.reference_top1]) for t in comparison.tokens]
    return ScoredContinuation(pieces, comparison, top1)


# -- plain token lists -------------------------------------------------------------------------------


def first_divergence(reference_tokens: Sequence[int], variant_tokens: Sequence[int]) -> int | None:
    """Index of the first position where the two lists differ (or one ends early); None when identical."""
    for index, (ref, var) in enumerate(zip(reference_tokens, variant_tokens, strict=False)):
        if ref != var:
            return index
    if len(reference_tokens) != len(variant_tokens):
        return min(len(reference_tokens), len(variant_tokens))
    return None


def agreement(reference_tokens: Sequence[int], variant_tokens: Sequence[int]) -> float:
    """Share of reference positions where the variant produced the identical token (missing = differs)."""
    if not reference_tokens:
        return 1.0 if not variant_tokens else 0.0
    same = sum(ref == var for ref, var in zip(reference_tokens, variant_tokens, strict=False))
    return same / len(reference_tokens)


def token_pieces(tokenizer, token_ids: Sequence[int]) -> list[str]:
    """The text each token adds to the decoded string, so that "".join(pieces) is the whole text.

    Decoding token by token breaks characters that span tokens (byte-level BPE); a token whose bytes do
    not finish a character gets "" and the token that completes it carries the character.
    """
    pieces: list[str] = []
    shown = ""
    for end in range(1, len(token_ids) + 1):
        text = tokenizer.decode(list(token_ids[:end]), skip_special_tokens=True)
        if text.endswith("\ufffd") and end < len(token_ids):
            pieces.append("")  # an unfinished multi-byte character: wait for the next token
            continue
        if text.startswith(shown):
            pieces.append(text[len(shown) :])
        else:  # the decoder rewrote earlier text (cleanup of spaces): show this token on its own
            pieces.append(tokenizer.decode([token_ids[end - 1]], skip_special_tokens=True))
        shown = text
    return pieces
