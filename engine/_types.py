"""Types and checks every part of the engine shares, defined once.

- `Progress`: how long work reports back, `progress(fraction in [0, 1], message)`; the UI turns it into a
  progress bar, tests pass a list's `append`.
- `free_memory_bytes` / `require_free`: the one "will it fit" check. Every step that allocates a model-sized
  copy (loading, quantizing, training, a recast or synthetic model) asks it first and refuses with the
  numbers, so a user sees why and the app keeps working.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Progress = Callable[[float, str], None]
GIB = 1024**3


class NotEnoughMemoryError(MemoryError):
    """A step would need more memory than is free; the message has the numbers and what to do instead."""


def free_memory_bytes(device: str | torch.device) -> int:
    """Free bytes on `device`: every CUDA device's free memory together, or the host's available RAM."""
    device = str(device)
    if device.startswith("cuda"):
        return sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
    import psutil

    return int(psutil.virtual_memory().available)


def require_free(
    needed: int | float,
    device: str | torch.device,
    what: str,
    advice: str = "",
    error: type[MemoryError] = NotEnoughMemoryError,
) -> None:
    """Raise `error` when `needed` bytes are not free on `device`.

    `what` says what needs the memory ("Quantizing makes a copy of the model"); `advice` what to do
    instead. The message reads: "<what>: about 1.2 GiB, but only 0.8 GiB is free on cpu. <advice>".
    """
    free = free_memory_bytes(device)
    if needed > free:
        message = f"{what}: about {needed / GIB:.1f} GiB, but only {free / GIB:.1f} GiB is free on {device}."
        raise error(f"{message} {advice}".strip())
