"""Token-by-token generation with a KV cache, callbacks and separate prefill / decode timings.

A plain loop instead of `model.generate` so that every token can be reported as it appears (the compare
page streams them) and prefill (the prompt, matrix-matrix) is timed apart from decode (one token at a
time, matrix-vector) — the two regimes in which quantization pays off differently. The loop itself is
engine.runtime.greedy's, shared with the static-cache decoder; here a step runs the model on a dynamic
(or quantized) cache and picks the next token, so it can sample and report log-probabilities.

No hidden syncs, no extra work per token (issue 16): the token is chosen on the device (argmax, or a
sample drawn with a generator on the model's device, seeded from `settings.seed`) and fed straight back;
its log-probability is gathered into a preallocated device buffer that is read back once, at the end. The
one host read per token is the token id, which the streaming callback and the end-of-sequence check
share. The prefill keeps only the last position's logits (`logits_to_keep=1`) where the model allows it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from engine.runtime.greedy import greedy_loop

if TYPE_CHECKING:
    from engine.quant.schemes import QuantScheme
    from engine.runtime.kv_cache import KVCacheConfig

MAX_NEW_TOKENS_CAP = 1024  # beyond this a CPU demo runs for minutes; the UI slider stops here too


class GenerationError(ValueError):
    """Bad generation input (empty prompt, prompt too long, too many tokens); message is for the user."""


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 48  # short enough for a live demo on two CPU cores
    temperature: float = 0.0  # 0 means greedy (argmax), the reproducible default
    top_p: float = 1.0  # nucleus sampling mass when temperature > 0
    seed: int = 0  # same seed for every model, so sampled runs are comparable
    chat: bool = True  # wrap the prompt in the tokenizer's chat template when it has one

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_CAP:
            raise GenerationError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS_CAP}.")
        if self.temperature < 0:
            raise GenerationError("temperature must be >= 0 (0 = greedy).")
        if not 0 < self.top_p <= 1:
            raise GenerationError("top_p must be in (0, 1].")


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float
    stopped_early: bool = False  # the caller's stop callback ended the loop
    token_logprobs: list[float] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float:
        decoded = max(len(self.token_ids) - 1, 0)
        return decoded / self.decode_seconds if self.decode_seconds > 0 else float("nan")

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else float("nan")


def max_context(model) -> int | None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(config, "max_position_embeddings", None)


def encode_prompt(tokenizer, prompt: str, chat: bool, context_limit: int | None) -> torch.Tensor:
    if not prompt or not prompt.strip():
        raise GenerationError("The prompt is empty: type something for the model to continue.")
    if chat and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    if context_limit is not None and ids.shape[1] >= context_limit:
        raise GenerationError(
            f"The prompt is {ids.shape[1]} tokens but the model's context is {context_limit}; shorten it."
        )
    return ids  # (1, prompt_tokens)


def _sample(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator) -> torch.Tensor:
    """(batch, vocab) logits -> (batch, 1) sampled token, on the logits' device, with no host sync.

    Nucleus (top_p) keeps the smallest set of most likely tokens whose mass reaches top_p. The draw is
    torch.multinomial's own one-sample method (argmax of probs / Exp(1) noise), written out because
    `torch.multinomial` first checks its input with two host reads.
    """
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    if settings.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        dropped = sorted_probs.cumsum(-1) - sorted_probs >= settings.top_p  # the most likely stays
        kept = sorted_probs.masked_fill(dropped, 0.0)
        probs = torch.empty_like(probs).scatter_(-1, order, kept)  # order is a permutation: all written
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / noise).argmax(dim=-1, keepdim=True)


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompt: str,
    settings: GenerationSettings | None = None,
    on_token: Callable[[int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    past_key_values=None,
    kv_scheme: QuantScheme | KVCacheConfig | None = None,
) -> GenerationResult:
    """Generate up to `settings.max_new_tokens`; `on_token(token_id, text_so_far)` fires per token.

    `kv_scheme` stores the KV cache quantized (engine.runtime.kv_cache); None keeps transformers' own cache.
    """
    settings = settings or GenerationSettings()
    if kv_scheme is not None:
        if past_key_values is not None:
            raise GenerationError("Pass either past_key_values or kv_scheme, not both.")
        from engine.runtime.kv_cache import make_kv_cache

        past_key_values = make_kv_cache(model.config, kv_scheme)
    limit = max_context(model)
    device = _device_of(model)
    ids = encode_prompt(tokenizer, prompt, settings.chat, limit).to(device)
    max_new = settings.max_new_tokens if limit is None else min(settings.max_new_tokens, limit - ids.shape[1])
    eos = tokenizer.eos_token_id
    stop_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    greedy = settings.temperature == 0
    generator = None if greedy else torch.Generator(device=device).manual_seed(settings.seed)
    logprobs = torch.empty(1, max_new, dtype=torch.float32, device=device)  # read back once, at the end
    tokens: list[int] = []
    cache = past_key_values
    picked = 0

    def choose(logits: torch.Tensor) -> torch.Tensor:
        """(1, vocab) logits -> (1, 1) chosen token, on the device; its log-probability kept there too."""
        nonlocal picked
        token = logits.argmax(dim=-1, keepdim=True) if greedy else _sample(logits, settings, generator)
        logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
        torch.gather(logp, -1, token, out=logprobs[:, picked : picked + 1])
        picked += 1
        return token

    def dynamic_step(token: torch.Tensor) -> torch.Tensor:
        nonlocal cache
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        return choose(out.logits[:, -1])

    def each(index: int, token_ids: tuple[int, ...]) -> bool:
        tokens.append(token_ids[0])  # the loop's one host read of this token, shared with the EOS check
        if on_token:
            on_token(tokens[-1], tokenizer.decode(tokens, skip_special_tokens=True))
        return bool(should_stop and should_stop())

    keep_last = (
        {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    )
    start = time.perf_counter()
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, **keep_last)
    cache = out.past_key_values
    first = choose(out.logits[:, -1])  # (1, 1)
    _sync(device)  # the prefill is timed to its first token
    prefill_seconds = time.perf_counter() - start
    decode_start = time.perf_counter()
    end = greedy_loop(dynamic_step, first, max_new, stop_ids, each)
    decode_seconds = time.perf_counter() - decode_start
    return GenerationResult(
        text=tokenizer.decode(tokens, skip_special_tokens=True),
        token_ids=tokens,
        prompt_tokens=int(ids.shape[1]),
        prefill_seconds=prefill_seconds,
        decode_seconds=decode_seconds,
        stopped_early=end.cut_short,
        token_logprobs=logprobs[0, : end.tokens.shape[1]].tolist(),
    )
