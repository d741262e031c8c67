"""Round to nearest (RTN): every linear weight quantized independently, optionally with dynamic per-token
activation quantization (W8A8, W4A8, W4A4 in the Qllm-Eval study's WA axis).

The baseline every other method is measured against: no calibration, no error compensation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from engine.methods.registry import Calibration, LayerReport, register
from engine.quant.linear import fake_quant_linear, linear_names, replace_linears
from engine.quant.metrics import sqnr_db
from engine.quant.schemes import QuantScheme, check_shape


@dataclass(frozen=True)
class RTNConfig:
    weights: QuantScheme | None  # None keeps weights as they are (KV- or activation-only studies)
    activations: QuantScheme | None = None  # per-token dynamic quantization of every linear's input

    def __post_init__(self) -> None:
        if self.activations is not None and self.activations.granularity == "group":
            raise ValueError("activation quantization is per token (channel) or per tensor, not per group")

    @property
    def label(self) -> str:
        w = f"W{self.weights.bits}" if self.weights else "W16"
        return f"{w}A{self.activations.bits}" if self.activations else w


@register(RTNConfig, name="RTN", calibration=Calibration.NONE)
def rtn(model, config: RTNConfig, calib, progress) -> list[LayerReport]:
    for name in linear_names(model):  # check every shape before touching anything: fail fast
        if config.weights is not None:
            try:
                check_shape(config.weights, tuple(model.get_submodule(name).weight.shape))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from exc
    reports: list[LayerReport] = []

    def make(linear, name):
        start = time.perf_counter()
        quantized = fake_quant_linear(linear, config.weights, config.activations)
        with torch.no_grad():
            sqnr = (
                sqnr_db(linear.weight.float(), quantized.weight.float()) if config.weights else float("inf")
            )
        reports.append(
            LayerReport(name, quantized.bits_per_weight, sqnr, seconds=time.perf_counter() - start)
        )
        return quantized

    replace_linears(model, make, progress=progress)
    return reports
