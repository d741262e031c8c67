"""A quantized KV cache for Hugging Face causal LMs, built on our own `quantize` / `dequantize`.

`make_kv_cache(model.config, KVCacheConfig(scheme, key_axis=...))` returns a transformers `Cache`
(pass it as `past_key_values`). Every layer stores its keys and values as codes plus scales under a
`QuantScheme` and dequantizes the whole history on every read, the way transformers' own
`QuantizedCache` does; `nbytes()` is what it stores and `fp16_nbytes()` what a 16-bit cache would.
Keys and values may be chosen apart (`KVCacheConfig(key_scheme=fp8, value_scheme=mxfp4)`, label
"K fp8_e4m3 channel / V mxfp4"; a side left None stays 16-bit); `scheme=` sets both.

Formats: any per-token ("channel") or grouped scheme of engine.quant: int, FP8 per token and head
("fp8_e4m3 channel"), the microscaling presets along head_dim (mxfp4 / mxfp6 / mxfp8: blocks of 32 with an
E8M0 scale, so head_dim 64 is 2 blocks; nvfp4: blocks of 16 with an E4M3 scale, plus one float32 scale per
layer and side set by its first update, as NVIDIA's static per-tensor scale: see engine.runtime.kv_store).

Layouts (a layer's states are (batch, kv_heads, tokens, head_dim)):
- values, and keys with key_axis="token": each token is quantized as it arrives; the scheme's
  granularity runs along head_dim ("channel": one scale per token and head, "group": group_size channels).
- keys with key_axis="channel" (KIVI): tokens collect in a full-precision residual until `token_block`
  of them have arrived; the block is then quantized along the token axis ("channel": one scale per
  channel of each block, "group": group_size tokens), so outlier channels get scales of their own.

How KV quantization enters a forward pass: `update` returns the *dequantized* states of every cached
token, the new ones included, so attention reads quantized K/V even within a single forward over a
whole window. Perplexity therefore needs only one forward per window. Where this departs from serving:
- a query reads its own token's key and value quantized (vLLM's fp8 cache does the same; KIVI and
  transformers' `QuantizedCache` keep the most recent tokens in full precision);
- with per-channel keys, a block quantized inside one forward gets its scales from all `token_block`
  tokens, so an earlier query reads keys whose scale saw later tokens (in serving the block is only
  quantized once complete, and meanwhile read at full precision);
- values have no full-precision residual (KIVI keeps one), and the tail of a window shorter than
  `token_block` stays unquantized (as in KIVI).
The figures are thus slightly pessimistic for KIVI and exact for a per-token cache that stores every
token, the current one included, before attention reads it.

Storage accounting: codes count at `bits` bits (densely packed, the `QTensor.nbytes` convention),
scales and zero points at the scale dtype, and unquantized (residual or `scheme=None`) elements at
16 bits. In this process codes are held one per byte (int8 / uint8 / float8), so `resident_bytes()`
is larger for sub-8-bit schemes. `scheme=None` stores the states as computed and reproduces
transformers' `DynamicCache` bit for bit (the 16-bit baseline). Our primitives allocate on the CPU, so
for a model on a GPU the codes live in CPU memory and every read copies the history back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer, get_layer_types_and_kwargs

from engine.quant.schemes import QuantScheme
from engine.quant.shapes import suggest_group_sizes
from engine.runtime.kv_store import BASELINE_BYTES, make_store, numel, tensor_bytes

KEY_AXES = ("token", "channel")


class KVCacheError(ValueError):
    """A KV cache setting that cannot work for this model (or an unsupported cache operation)."""


@dataclass(frozen=True)
class KVCacheConfig:
    """How keys and values are stored: one scheme for both (`scheme`), or each its own.

    `scheme` is shorthand: it fills whichever of `key_scheme` / `value_scheme` is not given, so
    `KVCacheConfig(int4)` is int4 keys and values, and `KVCacheConfig(key_scheme=fp8, value_scheme=mxfp4)`
    chooses them apart. A side left None stays 16-bit. After construction `scheme` is the common scheme
    when keys and values share one, else None; read `key_scheme`, `value_scheme` and `quantized`.
    """

    scheme: QuantScheme | None = None  # both keys and values (None and no key/value scheme: 16-bit cache)
    key_axis: str = "token"  # "token": keys like values; "channel": KIVI's per-channel keys
    token_block: int = 128  # per-channel keys: tokens quantized together (KIVI's residual length R)
    key_scheme: QuantScheme | None = None  # keys alone (default: scheme)
    value_scheme: QuantScheme | None = None  # values alone (default: scheme)

    def __post_init__(self) -> None:
        if self.key_axis not in KEY_AXES:
            raise KVCacheError(f"key_axis must be one of {', '.join(KEY_AXES)} (got {self.key_axis!r})")
        if (
            isinstance(self.token_block, bool)
            or not isinstance(self.token_block, int)
            or self.token_block < 1
        ):
            raise KVCacheError(f"token_block must be a positive integer (got {self.token_block!r})")
        for field, side in (("scheme", ""), ("key_scheme", "key "), ("value_scheme", "value ")):
            _check_scheme(getattr(self, field), side)
        if self.scheme is not None:
            for field in ("key_scheme", "value_scheme"):
                if getattr(self, field) is None:
                    object.__setattr__(self, field, self.scheme)
        common = self.key_scheme if self.key_scheme == self.value_scheme else None
        object.__setattr__(self, "scheme", common)
        keys = self.key_scheme
        if self.channel_keys and keys.granularity == "group" and self.token_block % keys.group_size:
            raise KVCacheError(
                f"per-channel keys group {keys.group_size} tokens, which does not divide token_block "
                f"{self.token_block}; pick a token_block that is a multiple of {keys.group_size}"
            )

    @property
    def quantized(self) -> bool:
        """Whether keys or values are quantized (False: the 16-bit baseline, transformers' DynamicCache)."""
        return self.key_scheme is not None or self.value_scheme is not None

    @property
    def channel_keys(self) -> bool:
        """Keys quantized per channel in token blocks (KIVI); a 16-bit key side ignores key_axis."""
        return self.key_axis == "channel" and self.key_scheme is not None

    @property
    def label(self) -> str:
        """ "KV int4", "K fp8_e4m3 channel / V mxfp4", "KV 16-bit" (plus the per-channel key layout)."""
        if not self.quantized:
            return "KV 16-bit"
        keys = f", keys per channel ({self.token_block}-token blocks)" if self.channel_keys else ""
        if self.scheme is not None:
            return f"KV {self.scheme.label}{keys}"
        return f"K {_side_label(self.key_scheme)} / V {_side_label(self.value_scheme)}{keys}"


def _side_label(scheme: QuantScheme | None) -> str:
    return "16-bit" if scheme is None else scheme.label


def _check_scheme(scheme: QuantScheme | None, side: str) -> None:
    """Refuse, in words, a scheme a growing cache cannot use (`side`: "", "key " or "value ")."""
    if scheme is None:
        return
    if not isinstance(scheme, QuantScheme):
        raise KVCacheError(f"{side}scheme must be a QuantScheme or None (got {type(scheme).__name__})")
    if scheme.granularity == "tensor":
        raise KVCacheError(
            "a growing KV cache has no whole tensor to share one scale; use granularity 'channel' "
            "(one scale per token and head) or 'group'"
        )
    if scheme.double_quant:
        raise KVCacheError(
            "double_quant compresses the scales of a finished tensor; drop it for the KV cache"
        )


def as_kv_config(kv: QuantScheme | KVCacheConfig | None) -> KVCacheConfig:
    """A KVCacheConfig from a scheme (per-token keys and values), a config, or None (16-bit)."""
    if isinstance(kv, KVCacheConfig):
        return kv
    return KVCacheConfig(scheme=kv)


def _check_head_dim(scheme: QuantScheme | None, head_dim: int, side: str) -> None:
    """A scheme grouped along head_dim must divide it (`side`: "keys" or "values")."""
    if scheme is None or scheme.granularity != "group" or head_dim % scheme.group_size == 0:
        return
    choices = ", ".join(map(str, suggest_group_sizes(head_dim)))
    if scheme.preset:
        raise KVCacheError(
            f"{scheme.preset} works in fixed blocks of {scheme.group_size} values, which do not divide this "
            f"model's head width of {head_dim} values (the KV cache for {side} is grouped along it); pick "
            f"one scale per token and head (e.g. fp8_e4m3 channel) or a group size of {choices}"
        )
    raise KVCacheError(
        f"a group size of {scheme.group_size} does not divide this model's head width of {head_dim} "
        f"values (the KV cache is grouped along it); pick one of {choices}"
    )


class QuantizedKVLayer(DynamicLayer):
    """One attention layer's cache: quantized keys and values, dequantized on every read."""

    is_croppable = False

    def __init__(self, config: KVCacheConfig) -> None:
        super().__init__()
        self.config = config
        self.cumulative_length = 0
        self._reset_stores()

    def _reset_stores(self) -> None:
        config = self.config
        self.key_store = self.value_store = None
        self.residual: Tensor | None = None  # (batch, heads, < token_block, head_dim) keys not yet in a block
        if config.quantized:
            self.value_store = make_store(config.value_scheme)
            self.key_store = make_store(config.key_scheme, dim=-1 if config.channel_keys else -2)

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        head_dim = key_states.shape[-1]
        if not self.config.channel_keys:  # per-channel keys group tokens (checked against token_block)
            _check_head_dim(self.config.key_scheme, head_dim, "keys")
        _check_head_dim(self.config.value_scheme, head_dim, "values")

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """Store the new states (batch, heads, new_tokens, head_dim); return every cached token's states."""
        if not self.config.quantized:
            self.cumulative_length += key_states.shape[-2]
            return super().update(key_states, value_states, *args, **kwargs)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        self.value_store.append(value_states)
        if self.config.channel_keys:
            self._append_channel_keys(key_states)
        else:
            self.key_store.append(key_states)
        return self._read_keys(), self.value_store.read(self.device)

    def _append_channel_keys(self, key_states: Tensor) -> None:
        pending = key_states if self.residual is None else torch.cat([self.residual, key_states], dim=-2)
        block = self.config.token_block
        full = (pending.shape[-2] // block) * block
        for start in range(0, full, block):
            self.key_store.append(
                pending[..., start : start + block, :].transpose(-1, -2)
            )  # (b, h, d, block)
        self.residual = pending[..., full:, :] if full < pending.shape[-2] else None

    def _read_keys(self) -> Tensor:
        parts = []
        if self.key_store.numel:
            keys = self.key_store.read(self.device)
            parts.append(keys.transpose(-1, -2) if self.config.channel_keys else keys)
        if self.residual is not None:
            parts.append(self.residual)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def reset(self) -> None:
        super().reset()
        self.cumulative_length = 0
        self._reset_stores()

    # -- storage -----------------------------------------------------------------------------------
    def nbytes(self) -> int:
        if not self.config.quantized:
            return BASELINE_BYTES * (numel(self.keys) + numel(self.values))
        return self.key_store.nbytes() + self.value_store.nbytes() + BASELINE_BYTES * numel(self.residual)

    def fp16_nbytes(self) -> int:
        if not self.config.quantized:
            return self.nbytes()
        return BASELINE_BYTES * (self.key_store.numel + numel(self.residual) + self.value_store.numel)

    def resident_bytes(self) -> int:
        if not self.config.quantized:
            return tensor_bytes(self.keys) + tensor_bytes(self.values)
        stores = self.key_store.resident_bytes() + self.value_store.resident_bytes()
        return stores + tensor_bytes(self.residual)

    # -- operations a quantized history cannot undo ------------------------------------------------
    def _unsupported(self, what: str) -> None:
        raise KVCacheError(
            f"the quantized KV cache does not support {what} (beam search, assisted decoding); "
            "use greedy or sampled generation, or no KV quantization"
        )

    def crop(self, tokens_to_remove: int) -> None:
        self._unsupported("crop")

    def reorder_cache(self, beam_idx: Tensor) -> None:
        self._unsupported("reorder_cache")

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._unsupported("batch_repeat_interleave")

    def batch_select_indices(self, indices: Tensor) -> None:
        self._unsupported("batch_select_indices")

    def offload(self) -> None:
        self._unsupported("offloading")

    def prefetch(self) -> None:
        self._unsupported("offloading")


class QuantizedKVCache(Cache):
    """A transformers Cache of QuantizedKVLayer, one per decoder layer (full attention only)."""

    def __init__(self, model_config, config: KVCacheConfig) -> None:
        text_config = model_config.get_text_config(decoder=True)
        layer_types, _ = get_layer_types_and_kwargs(text_config)
        other = sorted(set(layer_types) - {"full_attention"})
        if other:
            raise KVCacheError(
                f"the quantized KV cache supports full-attention layers only; this model also has {', '.join(other)} "
                "layers (sliding window, chunked or shared KV)"
            )
        super().__init__(layers=[QuantizedKVLayer(config) for _ in layer_types])
        self.config = config

    def nbytes(self) -> int:
        """Bytes stored: codes at `bits` bits, scales and zero points (NVFP4: plus 4 bytes per layer and
        side for its float32 scale), unquantized elements at 16 bits; keys and values each at their own."""
        return sum(layer.nbytes() for layer in self.layers)

    def fp16_nbytes(self) -> int:
        """Bytes a 16-bit cache would hold for the same tokens."""
        return sum(layer.fp16_nbytes() for layer in self.layers)

    def resident_bytes(self) -> int:
        """Bytes the cache's tensors occupy in this process (codes one per byte)."""
        return sum(layer.resident_bytes() for layer in self.layers)


def make_kv_cache(model_config, scheme: QuantScheme | KVCacheConfig | None) -> QuantizedKVCache:
    """A fresh cache for one sequence; a QuantScheme quantizes keys and values per token."""
    return QuantizedKVCache(model_config, as_kv_config(scheme))
