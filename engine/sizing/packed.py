"""What a model's weights would take stored packed, beside what this process holds.

Most methods here fake-quantize: a quantized linear keeps its weight dequantized in the model's float
dtype (float32 on the CPU), plus the scales it was rounded with, so the process holds more bytes than the
float reference. The format itself stores each quantized linear at its exact bits per weight, scales and
zero points included (the `LayerReport.bits_per_weight` every method reports, `engine.quant.schemes
.bits_per_weight` for RTN), and everything else (embeddings, norms, the output head, biases) as the
model holds it. An unquantized model's packed bytes are its held bytes (`measured_bytes`).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import singledispatch

from torch import Tensor, nn

from engine.methods.registry import LayerReport, QuantizedModel, weight_count


def _storage_key(tensor: Tensor) -> tuple[int, int]:
    data = tensor.data if isinstance(tensor, nn.Parameter) else tensor
    return data.untyped_storage().data_ptr(), data.storage_offset()


def _nbytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _packed_bytes(model: nn.Module, layers: Iterable[LayerReport]) -> int:
    """Each reported layer at its bits per weight (plus its bias as held); every other tensor as held,
    shared storage (tied embeddings and head) counted once."""
    total = 0
    owned: set[tuple[int, int]] = set()  # storage of the reported layers: replaced by their packed size
    for report in layers:
        module = model.get_submodule(report.name)
        total += round(report.bits_per_weight * weight_count(module) / 8)
        bias = getattr(module, "bias", None)
        if isinstance(bias, Tensor):
            total += _nbytes(bias)
        owned.update(_storage_key(t) for t in [*module.parameters(), *module.buffers()])
    seen = set(owned)
    for tensor in [*model.parameters(), *model.buffers()]:
        if (key := _storage_key(tensor)) not in seen:
            seen.add(key)
            total += _nbytes(tensor)
    return total


@singledispatch
def packed_weight_bytes(model) -> int:
    """Bytes the weights take stored packed: a QuantizedModel's quantized linears at their bits per weight
    (scales and zeros included), the rest at the model's dtype; a plain model: what it holds."""
    raise TypeError(f"cannot size {type(model).__name__}: pass a QuantizedModel or a torch module")


@packed_weight_bytes.register
def _(model: QuantizedModel) -> int:
    return _packed_bytes(model.model, model.layers)


@packed_weight_bytes.register
def _(model: nn.Module) -> int:
    return _packed_bytes(model, ())
