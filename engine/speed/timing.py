"""Wall-clock timing helpers shared by the microbenchmarks, the bandwidth probe and the decode loops.

A GPU runs asynchronously, so every timed call is fenced with a device synchronize; each figure is the
median of `repeats` calls after `warmup`, which shrugs off the odd slow call (a page fault, another
process on a shared core) that a mean would carry.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on a CPU, which runs synchronously)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(calls: list[Callable[[], object]], repeats: int, warmup: int, device: str) -> float:
    """Median wall time of one call, rotating over `calls` (one per weight copy)."""
    for index in range(warmup):
        calls[index % len(calls)]()
    sync(device)
    samples = []
    for index in range(repeats):
        start = time.perf_counter()
        calls[index % len(calls)]()
        sync(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)
