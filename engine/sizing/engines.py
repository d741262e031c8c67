"""How each inference engine allocates the KV cache and the recurrent state: the rules, each with its source.

The same model holds different bytes in different engines. An `Engine` answers three questions for the
per-layer plan of `engine.sizing.layers`:
- how many tokens a layer's `TokenCache` holds for a sequence of `context` tokens (sliding and chunked
  layers cap it; engines that page the cache round it up to whole blocks);
- how many past inputs of a state mixer's causal convolution are kept;
- at what precision the recurrent state is kept.

transformers (`cache_utils.py`, 5.x): `DynamicLayer` holds every token; `DynamicSlidingWindowLayer` holds
`min(seq_len, sliding_window)` (chunked layers use it with the chunk size); linear-attention layers keep the
last `conv_kernel_size` inputs (`update_conv_state`); Qwen3-Next's torch path computes and returns its
recurrent state in fp32 ("make sure all tensors are fp32" in `torch_chunk_gated_delta_rule`), Mamba layers
keep theirs in the model's dtype.

vLLM (V1: `vllm/v1/kv_cache_interface.py`, `vllm/v1/core/kv_cache_utils.py`): the cache is paged in blocks
of `block_size` tokens (16); a sliding layer needs `min(sliding_window - 1 + max_num_batched_tokens,
max_model_len)` tokens plus one block, a chunked one `min(chunk + max_num_batched_tokens, max_model_len)`;
Mamba layers keep `d_conv - 1` inputs and their state in the model's dtype (`mamba_ssm_cache_dtype="auto"`).
The pool and what vLLM prints from it are in `vllm_report`. Prompts are prefilled 8,192 tokens at a time
(max_num_batched_tokens with chunked prefill), which caps activations.

llama.cpp (`llama-kv-cache.cpp`, `llama-memory-recurrent.cpp`, `llama-model.cpp`): the cache is sized at
load for the whole `n_ctx` (padded to 256); a sliding-window (or chunked) layer's cache holds
`min(n_ctx, n_swa x n_seq + n_ubatch)` cells padded to 256 (`n_ubatch` 512 by default; `--swa-full` gives
them the whole context); recurrent layers keep `d_conv - 1` inputs and their state in F32; prompts are
computed `n_ubatch` (512) tokens at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.sizing.layers import CacheKind, LayerPlan, StateCache, TokenCache
from engine.sizing.parameters import ConfigError


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Engine:
    name: str  # short key for the CLI and URLs
    label: str
    note: str
    block_tokens: int = 1  # tokens per cache block a sequence rounds up to
    context_padding: int = 1  # the whole context is padded to a multiple of this (llama.cpp: 256)
    batched_tokens: int = 0  # vLLM's max_num_batched_tokens / llama.cpp's n_ubatch, added to windows
    window_extra_block: bool = False  # vLLM: a window may start mid-block, so one more block
    window_minus_one: bool = False  # vLLM keeps sliding_window - 1 past tokens
    conv_keeps_kernel: bool = True  # transformers keeps d_conv inputs, vLLM and llama.cpp d_conv - 1
    state_bits: float | None = None  # recurrent state precision; None: the model's dtype
    linear_state_bits: float | None = None  # linear-attention state, when it differs (transformers: fp32)
    prefill_chunk: int | None = None  # tokens per prefill forward by default (None: the whole prompt)

    def tokens_held(self, cache: TokenCache, context: int) -> int:
        """Tokens one sequence of `context` tokens keeps in a layer's token cache, blocks rounded up."""
        whole = _round_up(_round_up(context, self.context_padding), self.block_tokens)
        if cache.span is None:
            return whole
        span = cache.span - 1 if self.window_minus_one and cache.kind is CacheKind.SLIDING else cache.span
        held = min(context, span + self.batched_tokens)
        extra = 1 if self.window_extra_block and held < context else 0
        held = _round_up(_round_up(held, self.context_padding), self.block_tokens)
        return min(held + extra * self.block_tokens, whole)

    def conv_positions(self, cache: StateCache) -> int:
        return cache.conv_kernel if self.conv_keeps_kernel else cache.conv_kernel - 1

    def state_value_bits(self, cache: StateCache, activation_bits: float) -> float:
        """Bits per recurrent-state value."""
        if cache.kind is CacheKind.LINEAR and self.linear_state_bits is not None:
            return self.linear_state_bits
        return self.state_bits if self.state_bits is not None else activation_bits

    def state_bytes(self, cache: StateCache, activation_bits: float) -> float:
        """One sequence's state: the recurrent state, and the convolution's past inputs (kept in the
        activation dtype, except where the engine keeps all state in F32)."""
        conv_bits = self.state_bits if self.state_bits is not None else activation_bits
        recurrent = cache.recurrent_values * self.state_value_bits(cache, activation_bits)
        return (recurrent + cache.conv_channels * self.conv_positions(cache) * conv_bits) / 8


TRANSFORMERS = Engine(
    "transformers",
    "transformers (DynamicCache)",
    "Grows token by token; a sliding or chunked layer keeps its window only. Linear-attention state in fp32.",
    linear_state_bits=32,
)
VLLM = Engine(
    "vllm",
    "vLLM (paged, V1)",
    "Pages of 16 tokens from a pool reserved at start; windows keep window − 1 + one batch of tokens.",
    block_tokens=16,
    batched_tokens=8192,
    window_extra_block=True,
    window_minus_one=True,
    conv_keeps_kernel=False,
    prefill_chunk=8192,
)
LLAMA_CPP = Engine(
    "llama.cpp",
    "llama.cpp (n_ctx at load)",
    "The whole context is allocated at load (padded to 256); sliding layers keep window + 512 cells; "
    "recurrent state in F32.",
    context_padding=256,
    batched_tokens=512,
    conv_keeps_kernel=False,
    state_bits=32,
    prefill_chunk=512,
)
ENGINES: dict[str, Engine] = {e.name: e for e in (TRANSFORMERS, VLLM, LLAMA_CPP)}


def engine(name: str | Engine) -> Engine:
    if isinstance(name, Engine):
        return name
    key = str(name).strip().lower()
    if key not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    return ENGINES[key]


# ---- vLLM's pool and what it prints ------------------------------------------------------------------


@dataclass(frozen=True)
class VLLMReport:
    block_size: int  # tokens per block (raised for hybrid models so a block holds a whole state page)
    num_blocks: int
    kv_tokens: int  # "GPU KV cache size: N tokens"
    max_concurrency: float  # "Maximum concurrency for max_model_len tokens per request: X"
    groups: int  # KV cache groups of the hybrid allocator (1 for a uniform model)
    padding_layers: int  # layers added so every group has the same size (vLLM warns about them)


def vllm_report(
    plan: tuple[LayerPlan, ...],
    available_bytes: float,
    max_model_len: int,
    kv_bits: float = 16,
    state_bits: float = 16,
    block_size: int = 16,
    max_num_batched_tokens: int = 8192,
) -> VLLMReport:
    """vLLM V1's KV pool for `available_bytes` ("Available KV cache memory"): layers are grouped by cache
    kind into groups of equal size (the smallest kind's count; `_get_kv_cache_groups_uniform_page_size`),
    each group's layers share tensors of `num_blocks` pages, so `num_blocks = available // (page x group
    size)`; the log's token count is `num_blocks // groups x block_size` and the concurrency
    `num_blocks / blocks one max_model_len request needs` (`get_max_concurrency_for_kv_cache_config`)."""
    if available_bytes <= 0 or max_model_len < 1:
        raise ConfigError("vLLM needs positive KV-cache memory and max_model_len")
    layers_by_spec: dict[tuple, int] = {}
    token_page = state_page = 0.0
    for layer in plan:
        for cache in layer.caches:
            if isinstance(cache, TokenCache):
                key = (cache.kind, cache.span)
                token_page = max(token_page, cache.values_per_token * kv_bits / 8)
            else:
                key = (cache.kind, None)
                state_page = max(state_page, cache.values(cache.conv_kernel - 1) * state_bits / 8)
            layers_by_spec[key] = layers_by_spec.get(key, 0) + 1
    if not layers_by_spec:
        raise ConfigError("this model caches nothing per token or sequence")
    if token_page and state_page:  # hybrid: attention blocks grow until a page holds a whole state
        block_size = _round_up(math.ceil(state_page / token_page), block_size)
    page = max(token_page * block_size, state_page)
    group_size = min(layers_by_spec.values())
    groups = sum(math.ceil(count / group_size) for count in layers_by_spec.values())
    padding = sum(math.ceil(count / group_size) * group_size - count for count in layers_by_spec.values())
    num_blocks = int(available_bytes // (page * group_size))
    needed = 0
    for (kind, span), count in layers_by_spec.items():
        spec_groups = math.ceil(count / group_size)
        if kind in (CacheKind.MAMBA, CacheKind.LINEAR):
            blocks = 1
        elif kind is CacheKind.SLIDING:
            tokens = min(span - 1 + max_num_batched_tokens, max_model_len)
            blocks = math.ceil(tokens / block_size) + 1
        elif kind is CacheKind.CHUNKED:
            blocks = math.ceil(min(span + max_num_batched_tokens, max_model_len) / block_size)
        else:
            blocks = math.ceil(max_model_len / block_size)
        needed += spec_groups * blocks
    tokens = num_blocks // groups * block_size
    return VLLMReport(block_size, num_blocks, tokens, num_blocks / needed, groups, padding)
