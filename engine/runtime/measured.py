"""Generation with its memory measured: what the Compare page shows under each column.

Memory is measured, not estimated: the real bytes of the model's parameters and buffers
(`engine.sizing.estimate.measured_bytes`) plus the KV cache's tensors after generation, read from a cache
we build (`engine.runtime.kv_cache`, which with no scheme reproduces transformers' DynamicCache); on CUDA
also the allocator's peak during the generation (the CPU allocator keeps no peak). Models whose layers
our cache cannot hold (sliding-window and other layer kinds) run on transformers' own cache, unweighed.

Held is not stored: a fake-quantized variant keeps its weights dequantized in the model's float dtype, so
it holds about as much as the reference. Beside what the process holds, `MemoryUse` carries what the
format takes packed (`engine.sizing.packed.packed_weight_bytes`: quantized linears at their exact bits
per weight, the rest at the model's dtype; a quantized KV cache at its packed `nbytes`). Pass the
`QuantizedModel` rather than its `.model` so its layers' bits are known; a plain model's packed is held.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from engine.methods.registry import QuantizedModel
from engine.runtime.generation import GenerationResult, GenerationSettings, generate
from engine.runtime.kv_cache import KVCacheConfig, KVCacheError, make_kv_cache
from engine.sizing.estimate import measured_bytes
from engine.sizing.packed import packed_weight_bytes


@dataclass(frozen=True)
class MemoryUse:
    weight_bytes: int  # real bytes of parameters and buffers (tied weights once)
    kv_bytes: int | None  # KV cache tensors resident after generation; None when the cache is not ours
    kv_packed_bytes: int | None  # what the cache stores with codes densely packed (quantized caches)
    cuda_peak_bytes: int | None  # allocator peak during this generation; None on CPU
    weight_packed_bytes: int | None = None  # the weights stored packed (exact bits); None: as held
    weight_dtype: str = ""  # the float dtype the held weights are in ("float32")

    @property
    def total(self) -> int:
        """What this process holds: weights and KV cache tensors as they are in memory."""
        return self.weight_bytes + (self.kv_bytes or 0)

    @property
    def packed_weights(self) -> int:
        return self.weight_bytes if self.weight_packed_bytes is None else self.weight_packed_bytes

    @property
    def packed_total(self) -> int:
        """What the format takes packed: weights at their bits per weight, a quantized cache packed."""
        kv = self.kv_packed_bytes if self.kv_packed_bytes is not None else (self.kv_bytes or 0)
        return self.packed_weights + kv

    @property
    def held_exceeds_packed(self) -> bool:
        """Whether the process holds more than the format needs (fake-quantized weights or cache)."""
        return self.total > self.packed_total


def float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (what fake-quantized weights are held in)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def generate_measured(
    model: nn.Module | QuantizedModel,
    tokenizer,
    prompt: str,
    settings: GenerationSettings,
    kv: KVCacheConfig | None = None,
    on_token: Callable[[int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[GenerationResult, MemoryUse]:
    """`generate` on a cache we can weigh; raises GenerationError / KVCacheError with reasons.

    `model` may be a QuantizedModel: it runs its `.model` and sizes its weights packed from its layers."""
    packed = packed_weight_bytes(model)
    model = model.model if isinstance(model, QuantizedModel) else model
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
        kv_packed_bytes=None if cache is None or kv is None or not kv.quantized else cache.nbytes(),
        cuda_peak_bytes=peak,
        weight_packed_bytes=packed,
        weight_dtype=str(float_dtype(model)).removeprefix("torch."),
    )
    return result, memory
