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
    # dynamic quantization of every linear's input, computed on each call: one scale per token row
    # ("channel"), per call ("tensor"), or per block of the input dim within each token ("group": how
    # MXFP4 / NVFP4 / MXFP8 hardware quantizes activations, blocks of 32 or 16 with NVFP4's per-call
    # tensor scale on top); a "block" scheme runs in 1 x g groups of each token, as DeepSeek-V3's FP8
    # (engine.quant.primitives.fake_quantize_tokens)
    activations: QuantScheme | None = None

    @property
    def label(self) -> str:
        """W4, W8A8, and the format where it is not int: "W4A4 nvfp4", "W8A8 mxfp8_e4m3", and its blocks
        where they are 2-D: "W8A8 fp8_e4m3 block128"."""
        w = f"W{self.weights.bits}" if self.weights else "W16"
        if self.activations is None:
            return w
        act = self.activations
        fmt = "" if act.format == "int" else f" {act.label.split()[0]}"
        if act.granularity == "block":
            fmt += f" block{act.group_size}"
        return f"{w}A{act.bits}{fmt}"


@register(RTNConfig, name="RTN", calibration=Calibration.NONE)
def rtn(model, config: RTNConfig, calib, progress) -> list[LayerReport]:
    for name in linear_names(model):  # check every shape before touching anything: fail fast
        shape = tuple(model.get_submodule(name).weight.shape)
        try:
            if config.weights is not None:
                check_shape(config.weights, shape)
            if config.activations is not None:  # its rows are tokens of in_features values
                check_shape(config.activations, (1, shape[1]))
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
