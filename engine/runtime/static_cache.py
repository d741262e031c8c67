"""A transformers StaticCache whose full-attention layers share one position tensor (issue 16).

transformers' StaticLayer keeps a fill level per layer and, per layer and per step, builds the write
position as `arange(kv_length) + cumulative_length`, advances its level (`add_`), and writes keys and
values with two `index_copy_`: five ops per layer where a DynamicCache spends two `cat`. At 30 layers
that is 90 launches more per token than the dynamic cache, and each is a kernel launch on a GPU.

Here every full-attention layer's `cumulative_length` IS one 0-d tensor (`SharedPositionCache.position`)
on the model's device: a one-token step writes keys and values at it with just the two `index_copy_`
(a 0-d index needs no `arange`), and the cache advances it once per forward, after the last attention
layer has written. The same storage serves as the step's `position_ids` (`position.view(1, 1)`), so
the decode loop keeps no position of its own.

What stays as in transformers:
- `get_seq_length()` is the tokens held (the shared tensor, 0 before the first write), `get_mask_sizes`
  is `(max_cache_len, 0)`, `reset()` zeroes keys, values and the position; so transformers' mask
  functions and `generate` see a StaticCache (it is one: a subclass).
- Sliding-window, chunked, linear-attention and other layer kinds keep transformers' own classes and
  their own fill levels; only "full_attention" layers share the position.
- A prompt (several tokens) is written at `arange(tokens) + position`, as StaticLayer does.

The one difference: the position advances after the last attention layer, not per layer, so in the
middle of a forward the layers already written still report the old length. Nothing in transformers'
models reads the length there (masks and positions are built before the first layer).
"""

from __future__ import annotations

import torch
from transformers import StaticCache
from transformers.cache_utils import (
    STATIC_LAYER_TYPE_MAPPING,
    Cache,
    CacheLayerMixin,
    StaticLayer,
    get_layer_types_and_kwargs,
)

FULL_ATTENTION = "full_attention"


class SharedPositionLayer(StaticLayer):
    """A StaticLayer whose fill level is the cache's shared position, which the cache advances."""

    def __init__(self, max_cache_len: int, position: torch.Tensor) -> None:
        super().__init__(max_cache_len=max_cache_len)
        self.cumulative_length = position  # shared by every full-attention layer; 0-d, on the device

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        if key_states.device != self.cumulative_length.device:
            raise ValueError(
                f"the cache was built for {self.cumulative_length.device} but the model runs on "
                f"{key_states.device}: build SharedPositionCache with the model's device"
            )
        super().lazy_initialization(key_states, value_states)  # `.to` of the position is a no-op: shared

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (batch, heads, tokens, dim) keys and values at the shared position; it is not advanced
        here (the cache does that once per forward)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        tokens = key_states.shape[-2]
        if tokens == 1:
            where = self.cumulative_length  # 0-d: index_copy_ writes one slot
        else:
            where = torch.arange(tokens, device=self.device) + self.cumulative_length
        self.keys.index_copy_(2, where, key_states)
        self.values.index_copy_(2, where, value_states)
        return self.keys, self.values


class SharedPositionCache(StaticCache):
    """A StaticCache of `max_cache_len` tokens on `device` whose full-attention layers share `position`.

    `position` (0-d long, on `device`) is the number of tokens held, which is where the next token is
    written and its position id; the cache advances it by the tokens written after the last attention
    layer's update, once per forward.
    """

    def __init__(self, config, max_cache_len: int, device: torch.device | str = "cpu") -> None:
        layer_types, per_layer_kwargs = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
        self.position = torch.zeros((), dtype=torch.long, device=device)
        layers = [
            SharedPositionLayer(max_cache_len, self.position)
            if kind == FULL_ATTENTION
            else STATIC_LAYER_TYPE_MAPPING[kind](max_cache_len=max_cache_len, **kwargs)
            for kind, kwargs in zip(layer_types, per_layer_kwargs, strict=True)
        ]
        attention = [i for i, layer in enumerate(layers) if isinstance(layer, CacheLayerMixin)]
        if not attention:
            raise ValueError("the model has no attention layers: a static KV cache has nothing to hold")
        Cache.__init__(self, layers=layers)  # StaticCache.__init__ would build transformers' own layers
        self._advance_at = attention[-1]  # the last layer whose update writes keys and values
        self.all_full_attention = all(isinstance(layer, SharedPositionLayer) for layer in layers)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.layers[layer_idx].update(key_states, value_states, *args, **kwargs)
        if layer_idx == self._advance_at:
            self.position.add_(key_states.shape[-2])  # once per forward: every layer has written
        return keys, values

    def reset(self) -> None:
        super().reset()  # zeroes keys and values (and the shared position, once per layer)
        self.position.zero_()
