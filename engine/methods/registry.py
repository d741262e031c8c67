"""The method registry: one entry point, dispatching on the config's type (torchao's `quantize_` shape).

Each method registers its config type with the facts the rest of the app needs about it, as a
`MethodInfo`: its display name, what it does with calibration data, and the type of the per-layer
`detail` its reports carry (a frozen dataclass, e.g. `GPTQDetail`). The UI draws from tables keyed by
those types, never from `if name == ...` chains.

`quantize_model` never touches the model it is given: the cached reference model is shared by every
browser session, so each method works on a deep copy and returns it with a per-layer report.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from torch import nn

from engine._types import NotEnoughMemoryError, Progress, require_free

__all__ = [
    "Calibration",
    "LayerReport",
    "MethodInfo",
    "NotEnoughMemoryError",
    "Progress",
    "QuantizedModel",
    "check_room_for_copy",
    "method_info",
    "methods",
    "quantize_model",
    "register",
]


class Calibration(Enum):
    """What a method does with `calib` (token windows)."""

    NONE = "none"  # ignores it (RTN)
    OPTIONAL_ERRORS = "optional: measures each layer's output error on it"  # bitsandbytes
    OPTIONAL_REPORT = "optional: its report (e.g. LLM.int8's kept dims) is measured on it"
    OPTIONAL_IMPORTANCE = "optional: an importance matrix is collected on it when asked"  # GGUF imatrix
    REQUIRED = "required"  # SmoothQuant, GPTQ, AWQ
    TRAIN_AND_HELD_OUT = "required: trains on it; (train, held_out) pairs measure the loss"  # QAT


@dataclass(frozen=True)
class LayerReport:
    name: str  # module path, e.g. model.layers.3.mlp.down_proj
    bits_per_weight: float  # storage bits including scales and zero points
    weight_sqnr_db: float  # SQNR of the quantized weight against the original
    output_error: float | None = None  # relative error of the layer's output on calibration inputs
    seconds: float = 0.0
    detail: object | None = None  # the method's own frozen dataclass (its MethodInfo.detail_type), or None


@dataclass(frozen=True)
class MethodInfo:
    config_type: type  # the config dataclass quantize_model dispatches on
    handler: Callable  # handler(model copy, config, calib, progress) -> list[LayerReport]
    name: str  # display name, e.g. "GPTQ"
    calibration: Calibration  # what it does with calib
    detail_type: type | None  # type of LayerReport.detail in its reports (None: no detail)


def weight_count(module: nn.Module) -> int:
    """Weights of a (replaced) linear: in x out whatever its storage holds (packed codes, bnb's params); an
    embedding's numel."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features) * int(module.out_features)
    return module.weight.numel()


@dataclass
class QuantizedModel:
    model: nn.Module  # a new model; the input model is untouched
    config: object  # the config it was built from (hashable: a cache key)
    layers: list[LayerReport]
    seconds: float
    weight_counts: tuple[int, ...] = ()  # weights of each reported layer (quantize_model fills it)

    @property
    def bits_per_weight(self) -> float:
        """Mean over the quantized layers weighted by their weight counts (in x out), so it is what the
        packed weights take per weight: GGUF's Q4_K on SmolLM2 (30 Q4_K + 180 Q5_0 tensors) is 5.25, not
        the layers' plain mean 5.36. Without counts, the plain mean; 16.0 when nothing was quantized. The
        counts are taken when the model is built, so this holds after `.model` is dropped."""
        if not self.layers:
            return 16.0
        counts = self.weight_counts or (1,) * len(self.layers)
        return sum(r.bits_per_weight * n for r, n in zip(self.layers, counts, strict=True)) / sum(counts)


_METHODS: dict[type, MethodInfo] = {}


def model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def check_room_for_copy(model: nn.Module, headroom: float = 1.3) -> None:
    """Refuse before copying when the copy (plus transients) would not fit in free memory."""
    require_free(
        int(model_bytes(model) * headroom),
        next(model.parameters()).device,
        "Quantizing makes a copy of the model",
        "Close other quantized variants (they are evicted oldest first), use a smaller model, or load it "
        "in a 16-bit dtype.",
    )


def register(
    config_type: type,
    name: str | None = None,
    calibration: Calibration = Calibration.NONE,
    detail_type: type | None = None,
) -> Callable:
    """Decorator registering `handler(model, config, calib, progress)` for `config_type`.

    `name` defaults to the config's class name without "Config" (PackedRTNConfig -> "PackedRTN").
    """

    def decorator(handler: Callable) -> Callable:
        display = name or config_type.__name__.removesuffix("Config")
        _METHODS[config_type] = MethodInfo(config_type, handler, display, calibration, detail_type)
        return handler

    return decorator


def method_info(config_or_type) -> MethodInfo:
    """The registry entry of a config (or config type); ValueError naming the known ones otherwise."""
    config_type = config_or_type if isinstance(config_or_type, type) else type(config_or_type)
    info = _METHODS.get(config_type)
    if info is None:
        known = ", ".join(sorted(t.__name__ for t in _METHODS))
        raise ValueError(f"no quantization method registered for {config_type.__name__}; known: {known}")
    return info


def methods() -> list[MethodInfo]:
    """Every registered method, in registration order."""
    return list(_METHODS.values())


def quantize_model(model: nn.Module, config, calib=None, progress: Progress | None = None) -> QuantizedModel:
    """Quantize a deep copy of `model` with the method `config` names; `calib`: token batches if needed."""
    info = method_info(config)
    check_room_for_copy(model)
    start = time.perf_counter()
    copied = copy.deepcopy(model)
    copied.eval()
    layers = info.handler(copied, config, calib, progress)
    counts = tuple(weight_count(copied.get_submodule(report.name)) for report in layers)
    return QuantizedModel(copied, config, layers, time.perf_counter() - start, counts)
