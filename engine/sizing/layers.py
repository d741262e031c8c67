"""What each layer keeps between tokens, by kind: the per-layer plan the KV cache and state are sized from.

A layer keeps zero, one or two caches:
- `TokenCache`: grows with every token. Full attention keeps keys and values of every token; a sliding
  window (Mistral, Gemma 2/3, gpt-oss) keeps at most `span` tokens; chunked attention (Llama 4) keeps at
  most one chunk; MLA (DeepSeek-V2/V3) keeps one compressed latent per token instead of keys and values.
- `StateCache`: a fixed size per sequence, whatever the context: the recurrent state of a state-space
  mixer (Mamba in Jamba; Mamba-2 in Falcon-H1, Nemotron-H, Bamba) or of a linear-attention mixer (Qwen3-Next's
  Gated DeltaNet), plus the last few inputs of its causal convolution (`conv_channels` x the kernel's width;
  how many of the kernel's positions an engine keeps is an engine rule, `engine.sizing.engines`).
Falcon-H1 runs attention and Mamba-2 side by side in every layer, so its layers hold both.

The layer kinds come from the config's `layer_types` (transformers 5 gives every hybrid family one: Jamba
and Nemotron-H derive it from `attn_layer_period` / `hybrid_override_pattern`, Qwen3-Next from
`full_attention_interval`, Llama 4 from `no_rope_layers`), else from the older fields (Gemma 2's
alternation, Mistral's `sliding_window` on every layer). Which mixer a "linear_attention" or "mamba" layer
runs depends on the family: `STATE_MIXERS` maps model types to one small function each. A layer kind we
cannot size is refused with its name (`ConfigError`), never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from engine.sizing.parameters import ConfigError, _text_config


class CacheKind(Enum):
    FULL = "full attention"
    SLIDING = "sliding-window attention"
    CHUNKED = "chunked attention"
    LATENT = "MLA latent"
    MAMBA = "state-space (Mamba) state"
    LINEAR = "linear-attention state"


@dataclass(frozen=True)
class TokenCache:
    kind: CacheKind
    values_per_token: int  # keys + values of one token in this layer (MLA: the latent and RoPE key)
    span: int | None = None  # tokens kept at most (the window or chunk); None: every token


@dataclass(frozen=True)
class StateCache:
    kind: CacheKind
    recurrent_values: int  # the mixer's recurrent state, per sequence
    conv_channels: int  # channels of the causal convolution before the mixer
    conv_kernel: int  # its width in tokens

    def values(self, conv_positions: int) -> int:
        """State values per sequence when an engine keeps `conv_positions` past inputs of the convolution."""
        return self.recurrent_values + self.conv_channels * conv_positions


Cache = TokenCache | StateCache


@dataclass(frozen=True)
class LayerPlan:
    index: int
    kind: str  # the config's name for the layer ("sliding_attention", "mamba", "hybrid", "mlp", ...)
    caches: tuple[Cache, ...]


def _int(config, name: str, default: int | None = None) -> int:
    value = getattr(config, name, None)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"config field {name} must be a positive integer (got {value!r})")
    return value


def _first(config, *names: str) -> int:
    """The first of several spellings of one field (families name the same size differently)."""
    for name in names:
        if getattr(config, name, None) is not None:
            return _int(config, name)
    raise ConfigError(f"the config has none of {', '.join(names)}; its state cannot be sized")


# ---- attention ---------------------------------------------------------------------------------------


def _kv_heads(config) -> int:
    heads = _int(config, "num_attention_heads")
    if getattr(config, "model_type", "") == "falcon":
        if getattr(config, "new_decoder_architecture", False):
            return _int(config, "num_kv_heads", heads)
        return 1 if getattr(config, "multi_query", True) else heads
    return _int(config, "num_key_value_heads", heads)


def _head_dim(config) -> int:
    if getattr(config, "head_dim", None):
        return _int(config, "head_dim")
    hidden, heads = _int(config, "hidden_size"), _int(config, "num_attention_heads")
    if hidden % heads:
        raise ConfigError(
            f"hidden_size {hidden} is not divisible by num_attention_heads {heads}; set head_dim"
        )
    return hidden // heads


def attention_values_per_token(config) -> int:
    """Cached values one token adds to one attention layer: keys + values, or the MLA latent."""
    if getattr(config, "kv_lora_rank", None):  # MLA: compressed latent plus the decoupled RoPE key
        return _int(config, "kv_lora_rank") + _int(config, "qk_rope_head_dim")
    heads, kv_heads = _int(config, "num_attention_heads"), _kv_heads(config)
    if heads % kv_heads:
        raise ConfigError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    return 2 * kv_heads * _head_dim(config)


def _window(config) -> int:
    window = getattr(config, "sliding_window", None)
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise ConfigError(f"sliding-window layers need a positive sliding_window (got {window!r})")
    return window


def _full(config) -> TokenCache:
    kind = CacheKind.LATENT if getattr(config, "kv_lora_rank", None) else CacheKind.FULL
    return TokenCache(kind, attention_values_per_token(config))


def _sliding(config) -> TokenCache:
    return TokenCache(CacheKind.SLIDING, attention_values_per_token(config), _window(config))


def _chunked(config) -> TokenCache:
    chunk = _int(config, "attention_chunk_size")
    return TokenCache(CacheKind.CHUNKED, attention_values_per_token(config), chunk)


# ---- state-space and linear-attention mixers ---------------------------------------------------------


def _mamba(config) -> StateCache:
    """Mamba (Jamba): d_inner = expand x hidden channels, each with a d_state recurrent state."""
    inner = _int(config, "mamba_expand", 2) * _int(config, "hidden_size")
    state = _first(config, "mamba_d_state", "state_size")
    return StateCache(CacheKind.MAMBA, inner * state, inner, _first(config, "mamba_d_conv", "conv_kernel"))


def _mamba2(config) -> StateCache:
    """Mamba-2 (Falcon-H1, Nemotron-H, Bamba): heads x head_dim x d_state of state; the convolution runs over
    x, B and C: d_inner + 2 x groups x d_state channels."""
    heads = _first(config, "mamba_n_heads", "mamba_num_heads")
    head = _first(config, "mamba_d_head", "mamba_head_dim")
    state = _first(config, "mamba_d_state", "ssm_state_size")
    groups = _first(config, "mamba_n_groups", "n_groups")
    kernel = _first(config, "mamba_d_conv", "conv_kernel")
    inner = heads * head
    return StateCache(CacheKind.MAMBA, inner * state, inner + 2 * groups * state, kernel)


def _gated_deltanet(config) -> StateCache:
    """Gated DeltaNet (Qwen3-Next): a key_dim x value_dim state per value head; the convolution runs over
    queries, keys and values."""
    key_heads, value_heads = _int(config, "linear_num_key_heads"), _int(config, "linear_num_value_heads")
    key_dim, value_dim = _int(config, "linear_key_head_dim"), _int(config, "linear_value_head_dim")
    channels = 2 * key_heads * key_dim + value_heads * value_dim
    state = value_heads * key_dim * value_dim
    return StateCache(CacheKind.LINEAR, state, channels, _int(config, "linear_conv_kernel_dim"))


STATE_MIXERS = {  # model_type -> the mixer its "linear_attention" / "mamba" layers run
    "qwen3_next": _gated_deltanet,
    "jamba": _mamba,
    "falcon_h1": _mamba2,
    "nemotron_h": _mamba2,
    "bamba": _mamba2,
    "granitemoehybrid": _mamba2,
}


def _state(config) -> StateCache:
    model_type = getattr(config, "model_type", "")
    mixer = STATE_MIXERS.get(model_type)
    if mixer is None:
        raise ConfigError(
            f"{model_type or 'this model'} has linear-attention or state-space layers of a kind we cannot size "
            f"yet (known: {', '.join(sorted(STATE_MIXERS))})"
        )
    return mixer(config)


def _hybrid(config) -> tuple[Cache, ...]:  # Falcon-H1: attention and Mamba-2 in parallel in every layer
    return (_full(config), _state(config))


LAYER_KINDS = {  # a layer_types entry -> what the layer caches
    "full_attention": lambda c: (_full(c),),
    "attention": lambda c: (_full(c),),
    "sliding_attention": lambda c: (_sliding(c),),
    "chunked_attention": lambda c: (_chunked(c),),
    "linear_attention": lambda c: (_state(c),),
    "mamba": lambda c: (_state(c),),
    "hybrid": _hybrid,
    "mlp": lambda c: (),
    "moe": lambda c: (),
}


def _layer_kinds(config) -> list[str]:
    layers = _int(config, "num_hidden_layers")
    types = getattr(config, "layer_types", None)
    if types:
        if not isinstance(types, list | tuple) or not all(isinstance(kind, str) for kind in types):
            raise ConfigError("layer_types must be a list of layer kinds such as 'sliding_attention'")
        if len(types) != layers and getattr(config, "model_type", "") != "nemotron_h":
            raise ConfigError(f"layer_types has {len(types)} entries for {layers} layers")
        return list(types)
    window = getattr(config, "sliding_window", None)
    if not window:
        return ["full_attention"] * layers
    if getattr(config, "model_type", "") == "gemma2":  # even layers slide, odd layers attend fully
        return ["sliding_attention" if index % 2 == 0 else "full_attention" for index in range(layers)]
    if getattr(config, "use_sliding_window", True) is False:
        return ["full_attention"] * layers
    return ["sliding_attention"] * layers  # Mistral-7B v0.1 style: every layer slides


def layer_plan(config) -> tuple[LayerPlan, ...]:
    """Per layer, what it caches; ConfigError naming any layer kind we cannot size."""
    config = _text_config(config)
    kinds = _layer_kinds(config)
    unknown = sorted({kind for kind in kinds if kind not in LAYER_KINDS})
    if unknown:
        raise ConfigError(
            f"layer kind {', '.join(repr(k) for k in unknown)} cannot be sized (known kinds: "
            f"{', '.join(LAYER_KINDS)})"
        )
    made = {kind: LAYER_KINDS[kind](config) for kind in dict.fromkeys(kinds)}
    return tuple(LayerPlan(index, kind, made[kind]) for index, kind in enumerate(kinds))


def layer_counts(plan: tuple[LayerPlan, ...]) -> dict[CacheKind, int]:
    """How many layers hold each kind of cache (Falcon-H1's layers count under both of theirs)."""
    counts: dict[CacheKind, int] = {}
    for layer in plan:
        for cache in layer.caches:
            counts[cache.kind] = counts.get(cache.kind, 0) + 1
    return counts
