"""Packing as a method: round to nearest and pack onto the real kernels, or pack a method's result.

- `PackedRTNConfig`: round to nearest (our primitives' grid), then pack every linear but the output head
  into an engine.kernels `QuantLinear`, so `quantize_model(model, PackedRTNConfig(scheme))` returns a new
  model that runs real low-bit kernels (and never touches the one given), with a per-layer report.
- `pack_quantized_model`: a method's fake-quantized model (RTN, GPTQ, AWQ, QAT, SmoothQuant) packed from
  the integer codes the method chose; `pack_refusal` says, without building anything, why it would not.

These live with the methods, not in engine.kernels, because they register with (and report through) the
method registry; the kernels package stays below the methods and never imports them.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

from engine._types import Progress
from engine.kernels.linear import QuantLinear, check_linear_shapes, layer_refusal, packed_format
from engine.methods.registry import Calibration, LayerReport, register
from engine.quant.linear import FakeQuantLinear, replace_linears
from engine.quant.metrics import sqnr_db
from engine.quant.schemes import QuantScheme


@dataclass(frozen=True)
class PackedRTNConfig:
    weights: QuantScheme  # int4 group-wise or int8 per-channel symmetric (packed_format says which run)
    activations: QuantScheme | None = None  # int8 per-token symmetric for W8A8; None keeps 16-bit inputs

    def __post_init__(self) -> None:
        packed_format(self.weights, self.activations)  # fail at construction, with the reason

    @property
    def label(self) -> str:
        return f"{packed_format(self.weights, self.activations)} packed ({self.weights.label})"


@dataclass(frozen=True)
class PackedDetail:
    """What packing reports per linear (LayerReport.detail)."""

    format: str  # W4A16, W8A16 or W8A8
    layout: str  # how the bits are stored (engine.kernels.layouts)
    decode_kernel: str  # the kernel a one-token call runs on this device (engine.kernels.dispatch)


@register(PackedRTNConfig, name="Packed RTN", calibration=Calibration.NONE, detail_type=PackedDetail)
def packed_rtn(model, config: PackedRTNConfig, calib, progress) -> list[LayerReport]:
    check_linear_shapes(model, config.weights)  # check every shape before touching anything
    reports: list[LayerReport] = []

    def make(linear: nn.Linear, name: str) -> QuantLinear:
        start = time.perf_counter()
        packed = QuantLinear.from_linear(linear, config.weights, config.activations)
        with torch.no_grad():
            sqnr = sqnr_db(linear.weight.detach().float().cpu(), packed.dequantized_weight())
        detail = PackedDetail(packed.fmt, packed.layout, packed.kernel_for(1))
        reports.append(
            LayerReport(
                name, packed.bits_per_weight, sqnr, seconds=time.perf_counter() - start, detail=detail
            )
        )
        return packed

    replace_linears(model, make, progress=progress)
    return reports


def pack_refusal(model: nn.Module) -> str | None:
    """Why `pack_quantized_model` would refuse `model`, found without building anything: the first layer
    no kernel runs, and why; None when it packs."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    if not layers:
        kinds = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith("Linear")})
        return (
            "this model has no fake-quantized layers to pack (its linears are "
            f"{', '.join(kinds) or 'none'}); RTN, GPTQ, AWQ, QAT and SmoothQuant results can be packed"
        )
    for name, module in layers:
        reason = layer_refusal(module)
        if reason is not None:
            return f"{name}: {reason}"
    return None


def pack_quantized_model(model: nn.Module, progress: Progress | None = None) -> nn.Module:
    """A copy of a method's quantized model (RTN, GPTQ, AWQ, QAT, SmoothQuant: FakeQuantLinear layers that
    kept their scales) with every quantized layer packed from its own integer codes, so it runs the real
    kernels with the weights the method chose. `model` is left untouched. ValueError naming the first
    layer no kernel runs, and why (NF4, 3-bit, per-tensor, act-order without static groups, ...).
    """
    reason = pack_refusal(model)
    if reason is not None:
        raise ValueError(reason)
    names = [name for name, module in model.named_modules() if isinstance(module, FakeQuantLinear)]
    packed: dict[str, QuantLinear] = {}
    for index, name in enumerate(names):
        try:
            packed[name] = QuantLinear.from_fake_quant(model.get_submodule(name))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
        if progress:
            progress((index + 1) / len(names), f"packing {name} ({index + 1}/{len(names)})")
    # deepcopy everything else; the memo hands back the packed layer wherever a fake one would be copied
    memo = {id(model.get_submodule(name)): layer for name, layer in packed.items()}
    return copy.deepcopy(model, memo)
