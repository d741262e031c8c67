"""Generation with its memory measured: what the Compare page shows under each column.

Memory is measured, not estimated: the real bytes of the model's parameters and buffers
(`engine.sizing.estimate.measured_bytes`) plus the KV cache's tensors after generation, read from a cache
we build (`engine.runtime.kv_cache`, which with no scheme reproduces transformers' DynamicCache); on CUDA
also the allocator's peak during the generation (the CPU allocator keeps no peak). Models whose layers
our cache cannot hold (sliding-window and other layer kinds) run on transformers' own cache, unweighed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.runtime.generation import GenerationResult, GenerationSettings, generate
from engine.runtime.kv_cache import KVCacheConfig, KVCacheError, make_kv_cache
from engine.sizing.estimate import measured_bytes


@dataclass(frozen=True)
class MemoryUse:
    weight_bytes: int  # real bytes of parameters and buffers (tied weights once)
    kv_bytes: int | None  # KV cache tensors resident after generation; None when the cache is not ours
    kv_packed_bytes: int | None  # what the cache stores with codes densely packed (quantized caches)
    cuda_peak_bytes: int | None  # allocator peak during this generation; None on CPU

    @property
    def total(self) -> int:
        return self.weight_bytes + (self.kv_bytes or 0)


def generate_measured(
    model,
    tokenizer,
    prompt: str,
    settings: GenerationSettings,
    kv: KVCacheConfig | None = None,
    on_token: Callable[[int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[GenerationResult, MemoryUse]:
    """`generate` on a cache we can weigh; raises GenerationError / KVCacheError with reasons."""
    try:
        cache = make_kv_cache(model.config, kv)  # scheme None reproduces transformers' DynamicCache
    except KVCacheError:
        if kv is not None:
            raise
        cache = None  # sliding-window or other layer kinds: transformers' own cache, not weighed
    device = next(model.parameters()).device
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    result = generate(
        model, tokenizer, prompt, settings, on_token=on_token, should_stop=should_stop, past_key_values=cache
    )
    peak = torch.cuda.max_memory_allocated(device) if on_cuda else None
    memory = MemoryUse(
        weight_bytes=sum(measured_bytes(model).values()),
        kv_bytes=None if cache is None else cache.resident_bytes(),
        kv_packed_bytes=None if cache is None or kv is None or kv.scheme is None else cache.nbytes(),
        cuda_peak_bytes=peak,
    )
    return result, memory
