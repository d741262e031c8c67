"""The method registry: one entry point, dispatching on the config's type (torchao's `quantize_` shape).

`quantize_model` never touches the model it is given: the cached reference model is shared by every
browser session, so each method works on a deep copy and returns it with a per-layer report.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

Progress = Callable[[float, str], None]
_HANDLERS: dict[type, Callable] = {}


@dataclass(frozen=True)
class LayerReport:
    name: str  # module path, e.g. model.layers.3.mlp.down_proj
    bits_per_weight: float  # storage bits including scales and zero points
    weight_sqnr_db: float  # SQNR of the quantized weight against the original
    output_error: float | None = None  # relative error of the layer's output on calibration inputs
    seconds: float = 0.0
    detail: dict = field(default_factory=dict)  # method-specific (kept outlier dims, smoothing scales…)


@dataclass
class QuantizedModel:
    model: nn.Module  # a new model; the input model is untouched
    config: object  # the config it was built from (hashable: a cache key)
    layers: list[LayerReport]
    seconds: float

    @property
    def bits_per_weight(self) -> float:
        """Mean over quantized layers, weighted equally (the page also shows each layer)."""
        return sum(r.bits_per_weight for r in self.layers) / len(self.layers) if self.layers else 16.0


class NotEnoughMemoryError(MemoryError):
    """Quantizing would need more memory than is free; the message has the numbers."""


def model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def check_room_for_copy(model: nn.Module, headroom: float = 1.3) -> None:
    """Refuse before copying when the copy (plus transients) would not fit in free memory."""
    from engine.models.loading import free_memory_bytes

    device = next(model.parameters()).device
    needed = int(model_bytes(model) * headroom)
    free = free_memory_bytes(str(device))
    if needed > free:
        raise NotEnoughMemoryError(
            f"Quantizing makes a copy of the model: about {needed / 1024**3:.1f} GiB, but only "
            f"{free / 1024**3:.1f} GiB is free on {device}. Close other quantized variants (they are evicted "
            "oldest first), use a smaller model, or load it in a 16-bit dtype."
        )


def register(config_type: type) -> Callable:
    def decorator(handler: Callable) -> Callable:
        _HANDLERS[config_type] = handler
        return handler

    return decorator


def quantize_model(model: nn.Module, config, calib=None, progress: Progress | None = None) -> QuantizedModel:
    """Quantize a deep copy of `model` with the method `config` names; `calib`: token batches if needed."""
    handler = _HANDLERS.get(type(config))
    if handler is None:
        known = ", ".join(sorted(t.__name__ for t in _HANDLERS))
        raise ValueError(f"no quantization method registered for {type(config).__name__}; known: {known}")
    check_room_for_copy(model)
    start = time.perf_counter()
    copied = copy.deepcopy(model)
    copied.eval()
    layers = handler(copied, config, calib, progress)
    return QuantizedModel(copied, config, layers, time.perf_counter() - start)
