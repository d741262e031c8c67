"""Memory stays bounded over repeated work (issue 9): 20 quantize + evaluate cycles on the default model
through the same bounded registry the UI uses; resident memory plateaus once the registry is full."""

from __future__ import annotations

import ctypes
import gc
from contextlib import suppress

import psutil
import pytest
import torch

from engine.evaluation.perplexity import perplexity
from engine.methods import RTNConfig, quantize_model
from engine.quant.schemes import QuantScheme
from ui.cache import LruRegistry

CONFIGS = [
    RTNConfig(QuantScheme(8)),
    RTNConfig(QuantScheme(4, "int", True, "group", 64)),
    RTNConfig(QuantScheme(3, "int", True, "group", 64)),
    RTNConfig(QuantScheme(4, "int", False, "group", 32)),
    RTNConfig(QuantScheme(8), QuantScheme(8)),
]


def rss() -> int:
    """Resident memory once freed heap pages are handed back (glibc keeps them otherwise, so RSS measured
    how much the allocator held on to, not what is alive: the test passed or failed with its neighbours)."""
    gc.collect()
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return psutil.Process().memory_info().rss


@pytest.mark.slow
def test_twenty_cycles_stay_within_a_bound(default_loaded, single_thread):
    model = default_loaded.model
    registry = LruRegistry(3)  # what ui.cache.variants keeps
    window = torch.arange(1000, 1064).unsqueeze(0)  # (1, 64) tokens
    readings = []
    for cycle in range(20):
        config = CONFIGS[cycle % len(CONFIGS)]
        variant = registry.get_or_create(config, lambda config=config: quantize_model(model, config))
        perplexity(variant.model, window)
        del variant
        readings.append(rss())
    one_copy = sum(p.numel() * p.element_size() for p in model.parameters())
    plateau, last = readings[5], readings[-1]
    print(
        f"RSS after cycle 6: {plateau / 2**20:.0f} MiB, after 20: {last / 2**20:.0f} MiB (copy {one_copy / 2**20:.0f})"
    )
    assert len(registry.keys()) == 3
    assert last - plateau < 0.5 * one_copy, [r // 2**20 for r in readings]
