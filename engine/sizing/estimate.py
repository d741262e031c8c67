"""Memory sizing from a config alone: parameters by kind, weights under a scheme, and the KV cache.

No weights are read: parameters are counted by building the model on the meta device. The KV cache is sized
layer by layer from `engine.sizing.layers` (what each layer keeps: full, sliding-window or chunked attention,
an MLA latent, or the fixed state of a Mamba / linear-attention mixer) under one engine's rules
(`engine.sizing.engines`: how transformers, vLLM and llama.cpp allocate it), with the details calculators get
wrong:
- `head_dim` from the config when present (it need not be hidden_size / heads);
- grouped-query / multi-query attention through `num_key_value_heads` (Falcon: `num_kv_heads`);
- sliding and chunked layers hold at most their window; state-space layers hold a fixed state per sequence;
- MLA (DeepSeek-V2/V3) caches one compressed latent of `kv_lora_rank + qk_rope_head_dim` values per token.
Weights take one format (a `WeightPreset` or scheme) or a checkpoint layout with a format per module kind
(`engine.sizing.checkpoints`). `estimate()` adds activations (the largest transient of one layer in prefill or
decode, attention scores when not using fused SDPA/flash attention, the logits buffer) and framework overhead as
its own line, and returns a `MemoryBreakdown`. GPUs, fitting and splitting live in `engine.sizing.gpus`;
offload in `offload`, reverse queries in `bestfit`; the CLI in `engine.sizing.cli`.
Where we simplify: activations assume nothing is freed mid-layer; overhead is a typical CUDA context plus
allocator slack, not a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.quant.schemes import QuantScheme
from engine.sizing.checkpoints import CheckpointRecipe, checkpoint_bytes
from engine.sizing.engines import TRANSFORMERS, Engine
from engine.sizing.engines import engine as engine_rules
from engine.sizing.layers import (
    CacheKind,
    TokenCache,
    _head_dim,
    _kv_heads,
    attention_values_per_token,
    layer_counts,
    layer_plan,
)
from engine.sizing.layers import _int as _positive_int  # a positive integer config field, or ConfigError
from engine.sizing.parameters import (  # noqa: F401  (parameters_by_kind re-exported)
    ConfigError,
    ParameterCount,
    _text_config,
    count_parameters,
    moe_fields,
    parameters_by_kind,
)
from engine.sizing.presets import WeightPreset, mix_bytes_by_kind, weight_preset

CUDA_OVERHEAD_BYTES = 600 * 1024**2  # CUDA context + cuBLAS workspace + allocator slack (assumed, typical)
LOGITS_BYTES = 4  # logits are upcast to fp32 before softmax / sampling


def head_dim(config) -> int:
    return _head_dim(_text_config(config))


def layer_windows(config) -> list[int | None]:
    """Per layer: the tokens its attention keeps at most (sliding window or chunk), or None for all of
    them (full attention, and layers that keep a fixed state instead)."""
    spans = []
    for layer in layer_plan(config):
        tokens = [cache.span for cache in layer.caches if isinstance(cache, TokenCache)]
        spans.append(tokens[0] if tokens else None)
    return spans


def key_value_heads(config) -> int:
    """KV heads: `num_key_value_heads`, Falcon's `num_kv_heads`, or 1 for multi-query; else every head."""
    return _kv_heads(_text_config(config))


def kv_values_per_token_per_layer(config) -> int:
    """Cached values (not bytes) one token adds to one attention layer: keys + values, or the MLA latent."""
    return attention_values_per_token(_text_config(config))


def kv_bytes_per_token(config, kv_bits: float = 16) -> float:
    """KV-cache bytes per token across the layers that cache tokens, none capped (the headline figure;
    layers that keep a fixed state add nothing per token)."""
    return sum(
        cache.values_per_token * kv_bits / 8
        for layer in layer_plan(config)
        for cache in layer.caches
        if isinstance(cache, TokenCache)
    )


def cache_bytes_by_layer(
    config,
    context: int,
    batch: int = 1,
    kv_bits: float = 16,
    engine: Engine | str = TRANSFORMERS,
    state_bits: float = 16,
) -> tuple[tuple[float, float], ...]:
    """Per layer: (token-cache bytes, state bytes) for `batch` sequences of `context` tokens, by the
    engine's rules (windows, blocks, how much convolution input and at what precision state is kept);
    `state_bits` is the activation precision a state defaults to."""
    if context < 0 or batch < 1:
        raise ConfigError("context must be >= 0 and batch >= 1")
    rules = engine_rules(engine)
    rows = []
    for layer in layer_plan(config):
        tokens = state = 0.0
        for cache in layer.caches:
            if isinstance(cache, TokenCache):
                tokens += batch * rules.tokens_held(cache, context) * cache.values_per_token * kv_bits / 8
            else:
                state += batch * rules.state_bytes(cache, state_bits)
        rows.append((tokens, state))
    return tuple(rows)


def kv_cache_bytes(config, context: int, batch: int = 1, kv_bits: float = 16) -> float:
    """KV-cache bytes for `batch` sequences of `context` tokens, as transformers keeps them; sliding and
    chunked layers cap at their window (recurrent state not included: `cache_bytes_by_layer`)."""
    return sum(tokens for tokens, _ in cache_bytes_by_layer(config, context, batch, kv_bits))


@dataclass(frozen=True)
class KVFormat:
    name: str  # CLI key: fp32, fp16, fp8, int8, int4, int3, int2
    bits: int  # bits per cached value
    group: int | None = None  # values sharing one fp16 scale and zero point; None: one per head (head_dim)
    per_tensor: bool = False  # one scale for the whole cache (FP8 KV in vLLM): no per-token cost

    def bits_per_value(self, head_dim_: int) -> float:
        if self.bits >= 16 or self.per_tensor:
            return float(self.bits)
        return self.bits + 32 / (self.group or head_dim_)  # asymmetric: fp16 scale + fp16 zero per group

    def label(self, head_dim_: int) -> str:
        if self.bits >= 16:
            return f"KV{self.bits} ({self.name})"
        return f"KV {self.name} ({self.bits_per_value(head_dim_):.3g} bits/value)"

    def side_label(self, head_dim_: int) -> str:
        """One side of a cache whose keys and values differ: "fp8 (8 bits/value)"."""
        return f"{self.name} ({self.bits_per_value(head_dim_):.3g} bits/value)"


def kv_label(keys: KVFormat, values: KVFormat, head_dim_: int) -> str:
    """The cache's label: one format, or keys and values apart ("K fp8 (8 bits/value), V int4 (...)")."""
    if keys == values:
        return keys.label(head_dim_)
    return f"K {keys.side_label(head_dim_)}, V {values.side_label(head_dim_)}"


KV_FORMATS = {
    "fp32": KVFormat("fp32", 32),  # CPU models in float32 cache in float32 too
    "fp16": KVFormat("fp16", 16),
    "fp8": KVFormat("fp8", 8, per_tensor=True),
    "int8": KVFormat("int8", 8),  # per token and head
    "int4": KVFormat("int4", 4, group=64),  # Hugging Face's QuantizedCache default group
    "int3": KVFormat("int3", 3, group=64),
    "int2": KVFormat("int2", 2, group=64),
}
_KV_BY_BITS = {"16": "fp16", "8": "int8", "4": "int4", "3": "int3", "2": "int2", "bf16": "fp16"}


def kv_format(name: str | int | KVFormat) -> KVFormat:
    if isinstance(name, KVFormat):
        return name
    key = str(name).strip().lower().removeprefix("kv")
    key = _KV_BY_BITS.get(key, key)
    if key not in KV_FORMATS:
        raise ConfigError(f"unknown KV-cache format {name!r}; choose one of {', '.join(KV_FORMATS)}")
    return KV_FORMATS[key]


@dataclass(frozen=True)
class WeightBytes:
    by_kind: dict[str, float]  # bytes per parameter kind (embeddings, attention, mlp, norms, head, other)
    bits_per_weight: float  # effective bits over all parameters
    decode_read: float | None = None  # weight bytes one decode step reads, where the pricing knows it

    @property
    def total(self) -> float:
        return sum(self.by_kind.values())


def weight_bytes(
    counts: dict[str, int], weights: WeightPreset | QuantScheme | str | None, in_features: int
) -> WeightBytes:
    """Bytes of the weights under a preset (a scheme means weight-only on linears; None: 16-bit)."""
    preset = weight_preset("bf16" if weights is None else weights)
    by_kind = {kind: count * preset.bits_for(kind, in_features) / 8 for kind, count in counts.items()}
    total_params = sum(counts.values())
    return WeightBytes(by_kind, 8 * sum(by_kind.values()) / total_params if total_params else 0.0)


def _weights(config, counts: dict[str, int], preset: WeightPreset, in_features: int) -> WeightBytes:
    """A llama.cpp mix priced tensor by tensor from the config; any other preset by kind."""
    if preset.mix is None:
        return weight_bytes(counts, preset, in_features)
    by_kind = mix_bytes_by_kind(config, preset.mix)
    total_params = sum(counts.values())
    return WeightBytes(by_kind, 8 * sum(by_kind.values()) / total_params if total_params else 0.0)


@dataclass(frozen=True)
class Activations:
    prefill_layer: float  # largest transient of one layer while prefilling the whole context
    attention_scores: float  # batch x heads x context^2 score matrix (0 with fused SDPA / flash attention)
    decode_layer: float  # the same for one new token
    logits: float  # fp32 logits: last position only in generation, every position in evaluation

    @property
    def peak(self) -> float:
        return max(self.prefill_layer + self.attention_scores, self.decode_layer) + self.logits


def _intermediate_per_token(config) -> int:
    """Widest MLP activation one token produces: the dense width, or its experts' widths summed."""
    dense = getattr(config, "intermediate_size", None) or 4 * _positive_int(config, "hidden_size")
    experts, per_token = moe_fields(config)
    expert_width = getattr(config, "moe_intermediate_size", None)
    if not experts:
        return int(dense)
    if not expert_width:  # Mixtral: each expert is as wide as intermediate_size
        return int(dense) * max(per_token, 1)
    shared = (getattr(config, "n_shared_experts", None) or 0) * expert_width
    shared += getattr(config, "shared_expert_intermediate_size", None) or 0
    return max(int(dense), per_token * expert_width + shared)  # dense layers (first_k_dense_replace) too


def activations(
    config,
    context: int,
    batch: int = 1,
    activation_bytes: int = 2,
    attention: str = "sdpa",
    all_logits: bool = False,
    prefill_chunk: int | None = None,
) -> Activations:
    """Peak transient bytes; `prefill_chunk` tokens per forward (None: the whole prompt at once, as
    transformers' `generate` does; serving engines chunk long prompts, e.g. vLLM's 8192 batched tokens)."""
    config = _text_config(config)
    hidden = _positive_int(config, "hidden_size")
    heads = _positive_int(config, "num_attention_heads")
    kv_values = kv_values_per_token_per_layer(config)
    vocab = _positive_int(config, "vocab_size")
    width = _intermediate_per_token(config)

    def layer(tokens: int) -> float:
        attention_io = heads * head_dim(config) * 2 + kv_values  # queries, attention output, new K/V
        mlp_io = 3 * width  # gate, up and their product
        return tokens * (2 * hidden + max(attention_io, mlp_io)) * activation_bytes

    if prefill_chunk is not None and prefill_chunk < 1:
        raise ConfigError(f"prefill_chunk must be a positive number of tokens (got {prefill_chunk})")
    tokens = batch * context if prefill_chunk is None else min(batch * context, prefill_chunk)
    queries = context if prefill_chunk is None else min(context, prefill_chunk)
    scores = 0.0
    if attention == "eager":  # scores (queries x keys) in the activation dtype plus the fp32 softmax
        scores = max(1, tokens // queries) * heads * queries * context * (activation_bytes + 4)
    elif attention != "sdpa":
        raise ConfigError(f"attention must be 'sdpa' or 'eager' (got {attention!r})")
    logits = (tokens if all_logits else batch) * vocab * LOGITS_BYTES
    return Activations(layer(tokens), scores, layer(batch), logits)


@dataclass(frozen=True)
class MemoryBreakdown:
    weights: WeightBytes
    kv_cache: float  # bytes for batch x context tokens
    activations: Activations
    overhead: float  # framework / CUDA context, a labelled guess
    parameters: ParameterCount
    weights_label: str
    kv_label: str
    context: int
    batch: int
    kv_bytes_per_token: float  # all layers at full attention, for the headline figure
    notes: tuple[str, ...] = field(default=())
    state: float = 0.0  # recurrent state of state-space / linear-attention layers, fixed per sequence
    kv_by_layer: tuple[float, ...] = ()  # token cache + state bytes, layer by layer
    engine: str = TRANSFORMERS.label

    @property
    def total(self) -> float:
        return self.weights.total + self.kv_cache + self.state + self.activations.peak + self.overhead

    def rows(self) -> list[tuple[str, float]]:
        """(component, bytes) in the order the page stacks them."""
        return [
            ("weights", self.weights.total),
            ("KV cache", self.kv_cache),
            *([("recurrent state", self.state)] if self.state else []),
            ("activations", self.activations.peak),
            ("overhead", self.overhead),
        ]

    def decode_bytes_per_token(self) -> float:
        """Bytes one decode step reads: the weights a token visits (one embedding row, but a tied embedding is
        the output head too and is read whole), the KV cache and the recurrent state."""
        by_kind, counts = self.weights.by_kind, self.parameters
        if self.weights.decode_read is not None:  # a checkpoint recipe prices its routed experts apart
            return self.weights.decode_read + self.kv_cache + self.state
        tied = not counts.by_kind.get("head")
        read = self.weights.total - (0.0 if tied else by_kind.get("embeddings", 0.0))
        if counts.experts and counts.by_kind.get("mlp"):
            mlp_bytes_per_param = by_kind["mlp"] / counts.by_kind["mlp"]
            read -= (counts.total - counts.active) * mlp_bytes_per_param
        return read + self.kv_cache + self.state


def estimate(
    config,
    weights: WeightPreset | QuantScheme | CheckpointRecipe | str = "bf16",
    kv: KVFormat | str | int = "fp16",
    context: int = 4096,
    batch: int = 1,
    activation_bytes: int = 2,
    attention: str = "sdpa",
    overhead: float = CUDA_OVERHEAD_BYTES,
    all_logits: bool = False,
    prefill_chunk: int | None = None,
    kv_values: KVFormat | str | int | None = None,
    engine: Engine | str = TRANSFORMERS,
) -> MemoryBreakdown:
    """Memory for serving `batch` sequences of `context` tokens, from the config alone. `kv` is the
    keys' format and the values' too unless `kv_values` gives theirs (each half of the cache at its own
    bits; an MLA latent, which is keys and values at once, takes `kv`). `engine` says how the cache and
    state are allocated (`engine.sizing.engines`: transformers, vLLM, llama.cpp)."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ConfigError(f"context must be a positive number of tokens (got {context!r})")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive integer (got {batch!r})")
    text = _text_config(config)
    if isinstance(weights, CheckpointRecipe):  # a format per module kind, priced tensor by tensor
        priced = checkpoint_bytes(config, weights)
        weights_label = weights.label
        priced_weights = WeightBytes(priced.by_kind, priced.bits_per_weight, priced.decode_read_bytes())
    else:
        preset = weight_preset(weights)
        weights_label = preset.label
        priced_weights = None
    kv_fmt = kv_format(kv)
    values_fmt = kv_fmt if kv_values is None else kv_format(kv_values)
    mla = bool(getattr(text, "kv_lora_rank", None))
    dim = head_dim(text) if not mla else kv_values_per_token_per_layer(text)
    notes = []
    if mla and values_fmt != kv_fmt:
        notes.append("MLA caches one latent for keys and values: it takes the K cache's format")
        values_fmt = kv_fmt
    # keys and values are half the cached values each: the mean of their bits prices the sum exactly
    kv_bits = (kv_fmt.bits_per_value(dim) + values_fmt.bits_per_value(dim)) / 2
    counts = count_parameters(config)
    max_positions = getattr(text, "max_position_embeddings", None)
    if isinstance(max_positions, int) and context > max_positions:
        notes.append(f"context {context:,} is beyond the model's max_position_embeddings {max_positions:,}")
    rules = engine_rules(engine)
    kinds = layer_counts(layer_plan(text))
    if kinds.get(CacheKind.SLIDING) or kinds.get(CacheKind.CHUNKED):
        notes.append("sliding-window and chunked layers keep at most their window of tokens in the KV cache")
    if kinds.get(CacheKind.LATENT):
        notes.append("MLA: the cache holds one compressed latent per token and layer")
    if kinds.get(CacheKind.MAMBA) or kinds.get(CacheKind.LINEAR):
        notes.append(
            "state-space / linear-attention layers keep a fixed state per sequence instead of a per-token cache"
        )
    by_layer = cache_bytes_by_layer(text, context, batch, kv_bits, rules, 8 * activation_bytes)
    if prefill_chunk is None:  # the engine's own chunking (vLLM 8,192 tokens, llama.cpp 512)
        prefill_chunk = rules.prefill_chunk
    return MemoryBreakdown(
        weights=priced_weights
        or _weights(config, counts.by_kind, preset, _positive_int(text, "hidden_size")),
        kv_cache=sum(tokens for tokens, _ in by_layer),
        activations=activations(text, context, batch, activation_bytes, attention, all_logits, prefill_chunk),
        overhead=float(overhead),
        parameters=counts,
        weights_label=weights_label,
        kv_label=kv_label(kv_fmt, values_fmt, dim),
        context=context,
        batch=batch,
        kv_bytes_per_token=kv_bytes_per_token(text, kv_bits),
        notes=tuple(notes),
        state=sum(state for _, state in by_layer),
        kv_by_layer=tuple(tokens + state for tokens, state in by_layer),
        engine=rules.label,
    )


def measured_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Real bytes of every parameter and buffer, by kind; shared storage (tied weights) counted once."""
    from engine.models.loading import parameter_kind

    seen: set[tuple[int, int]] = set()
    by_kind: dict[str, int] = {}
    for name, tensor in list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    ):
        data = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
        key = (data.untyped_storage().data_ptr(), data.storage_offset())
        if data.device.type != "meta" and key in seen:
            continue
        seen.add(key)
        kind = parameter_kind(name) if isinstance(tensor, torch.nn.Parameter) else "buffers"
        by_kind[kind] = by_kind.get(kind, 0) + data.numel() * data.element_size()
    return by_kind
