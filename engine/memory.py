"""Memory sizing from a config alone: parameters by kind, weights under a scheme, and the KV cache.

The first building block of the Memory page (issue 7): no weights are read; parameters are counted by
building the model on the meta device. The KV cache follows `2 x layers x kv_heads x head_dim x bytes`
per token with the details calculators get wrong:
- `head_dim` from the config when present (it need not be hidden_size / heads);
- grouped-query / multi-query attention through `num_key_value_heads`;
- sliding-window layers (`sliding_window` with `layer_types`, or Gemma-2-style alternation) hold at most
  `sliding_window` tokens;
- MLA (DeepSeek-V2/V3) caches one compressed latent of `kv_lora_rank + qk_rope_head_dim` values per
  token and layer instead of keys and values per head.
Activations, framework overhead, GPUs and the page are not here yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.schemes import QuantScheme, bits_per_weight

SIXTEEN_BIT_KINDS = ("embeddings", "head", "norms", "other")  # kept in 16-bit by weight-only methods


class ConfigError(ValueError):
    """A config that cannot be sized (missing or impossible fields); the message is for the user."""


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _positive_int(config, name: str, default: int | None = None) -> int:
    value = getattr(config, name, None)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"config field {name} must be a positive integer (got {value!r})")
    return value


def head_dim(config) -> int:
    config = _text_config(config)
    explicit = getattr(config, "head_dim", None)
    if explicit:
        return _positive_int(config, "head_dim")
    hidden, heads = _positive_int(config, "hidden_size"), _positive_int(config, "num_attention_heads")
    if hidden % heads:
        raise ConfigError(
            f"hidden_size {hidden} is not divisible by num_attention_heads {heads}; set head_dim"
        )
    return hidden // heads


def layer_windows(config) -> list[int | None]:
    """Per layer: the sliding window in tokens, or None for full attention."""
    config = _text_config(config)
    layers = _positive_int(config, "num_hidden_layers")
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if not window:
        return [None] * layers
    if types:
        if len(types) != layers:
            raise ConfigError(f"layer_types has {len(types)} entries for {layers} layers")
        return [window if kind == "sliding_attention" else None for kind in types]
    if getattr(config, "model_type", "") == "gemma2":  # even layers slide, odd layers attend fully
        return [window if index % 2 == 0 else None for index in range(layers)]
    if getattr(config, "use_sliding_window", True) is False:
        return [None] * layers
    return [window] * layers  # Mistral-7B v0.1 style: every layer slides


def kv_values_per_token_per_layer(config) -> int:
    """Cached values (not bytes) one token adds to one layer: keys + values, or the MLA latent."""
    config = _text_config(config)
    rank = getattr(config, "kv_lora_rank", None)
    if rank:  # MLA: compressed latent plus the decoupled RoPE key, shared by all heads
        return _positive_int(config, "kv_lora_rank") + _positive_int(config, "qk_rope_head_dim")
    heads = _positive_int(config, "num_attention_heads")
    kv_heads = _positive_int(config, "num_key_value_heads", heads)
    if heads % kv_heads:
        raise ConfigError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    return 2 * kv_heads * head_dim(config)


def kv_bytes_per_token(config, kv_bits: float = 16) -> float:
    """KV-cache bytes per token across all layers at full attention (the usual headline figure)."""
    layers = _positive_int(_text_config(config), "num_hidden_layers")
    return layers * kv_values_per_token_per_layer(config) * kv_bits / 8


def kv_cache_bytes(config, context: int, batch: int = 1, kv_bits: float = 16) -> float:
    """KV-cache bytes for `batch` sequences of `context` tokens; sliding-window layers cap at the window."""
    if context < 0 or batch < 1:
        raise ConfigError("context must be >= 0 and batch >= 1")
    per_layer = kv_values_per_token_per_layer(config) * kv_bits / 8
    tokens = sum(context if window is None else min(context, window) for window in layer_windows(config))
    return batch * tokens * per_layer


@dataclass(frozen=True)
class WeightBytes:
    by_kind: dict[str, float]  # bytes per parameter kind (embeddings, attention, mlp, norms, head, other)
    bits_per_weight: float  # effective bits over all parameters

    @property
    def total(self) -> float:
        return sum(self.by_kind.values())


def weight_bytes(
    parameters_by_kind: dict[str, int], scheme: QuantScheme | None, in_features: int
) -> WeightBytes:
    """Bytes of the weights when linear layers use `scheme` (None: 16-bit) and the rest stays 16-bit."""
    by_kind = {}
    linear_bits = 16.0 if scheme is None else bits_per_weight(scheme, in_features=in_features)
    for kind, count in parameters_by_kind.items():
        bits = 16.0 if kind in SIXTEEN_BIT_KINDS else linear_bits
        by_kind[kind] = count * bits / 8
    total_params = sum(parameters_by_kind.values())
    return WeightBytes(by_kind, 8 * sum(by_kind.values()) / total_params if total_params else 0.0)


def parameters_by_kind(config) -> dict[str, int]:
    """Exact parameter counts by kind from the config alone (meta device; tied weights counted once)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from engine.models import parameter_kind

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    model.tie_weights()  # built untied on the meta device; tie outside init_empty_weights, which re-registers
    counts: dict[str, int] = {}
    for name, parameter in model.named_parameters():  # named_parameters() skips tied duplicates
        kind = parameter_kind(name)
        counts[kind] = counts.get(kind, 0) + parameter.numel()
    return counts
