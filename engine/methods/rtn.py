"""Round to nearest (RTN): every linear weight quantized independently, optionally with dynamic per-token
activation quantization (W8A8, W4A8, W4A4 in the Qllm-Eval study's WA axis).

The baseline every other method is measured against: no calibration (but for the importance matrix below), no
error compensation.

Importance matrix (`imatrix=True`, as `GGUFConfig(imatrix=True)` and `llama-quantize --imatrix`): llama.cpp's
importance matrix is first collected on the calibration windows (engine.methods.imatrix: mean x_j^2 per input
channel of every linear, on the float model), then each linear's weight is rounded with every block's scale
searched for the least importance-weighted error (engine.quant.weighted). The model computes with exactly
those values, and the report's SQNR and bits describe them. Activations stay plain dynamic rounding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.methods.calibration import check_calibration, one_thread, scaled
from engine.methods.imatrix import collect_importance
from engine.methods.registry import Calibration, LayerReport, register
from engine.quant.linear import (
    FakeQuantLinear,
    fake_quant_linear,
    keeps_scales,
    linear_names,
    replace_linears,
)
from engine.quant.metrics import sqnr_db
from engine.quant.primitives import QParams
from engine.quant.schemes import QuantScheme, check_shape
from engine.quant.weighted import weighted_quantize


@dataclass(frozen=True)
class RTNConfig:
    weights: QuantScheme | None  # None keeps weights as they are (KV- or activation-only studies)
    # dynamic quantization of every linear's input, computed on each call: one scale per token row
    # ("channel"), per call ("tensor"), or per block of the input dim within each token ("group": how
    # MXFP4 / NVFP4 / MXFP8 hardware quantizes activations, blocks of 32 or 16 with NVFP4's per-call
    # tensor scale on top); a "block" scheme runs in 1 x g groups of each token, as DeepSeek-V3's FP8
    # (engine.quant.primitives.fake_quantize_tokens)
    activations: QuantScheme | None = None
    # weight each block's scale search by llama.cpp's importance matrix, collected on `calib` first
    # (engine.methods.imatrix, engine.quant.weighted): the calibration windows become required
    imatrix: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.imatrix, bool):
            raise ValueError(f"imatrix must be True or False (got {self.imatrix!r})")
        if self.imatrix and self.weights is None:
            raise ValueError("an importance matrix weights the rounding of weights; pick a weight format")
        if self.imatrix and self.weights.double_quant:
            raise ValueError(
                "an importance matrix picks each block's scale on its own, and double quantization "
                "re-quantizes the scales together; turn double quantization off or the importance matrix"
            )

    @property
    def label(self) -> str:
        """W4, W8A8, and the format where it is not int: "W4A4 nvfp4", "W8A8 mxfp8_e4m3", and its blocks
        where they are 2-D: "W8A8 fp8_e4m3 block128"; " + imatrix" when the rounding is weighted."""
        return self._wa_label + (" + imatrix" if self.imatrix else "")

    @property
    def _wa_label(self) -> str:
        w = f"W{self.weights.bits}" if self.weights else "W16"
        if self.activations is None:
            return w
        act = self.activations
        fmt = "" if act.format == "int" else f" {act.label.split()[0]}"
        if act.granularity == "block":
            fmt += f" block{act.group_size}"
        return f"{w}A{act.bits}{fmt}"


@torch.no_grad()
def weighted_linear(
    linear: nn.Linear, scheme: QuantScheme, act_scheme: QuantScheme | None, importance: Tensor
) -> FakeQuantLinear:
    """`fake_quant_linear` with the weight's block scales searched for the least importance-weighted error
    (engine.quant.weighted); keeps the scales where plain rounding keeps them (integer grids). One CPU thread:
    the search is many mid-sized ops, which OpenMP's barrier waits made several times slower with two
    threads on a busy CPU."""
    weight = linear.weight.detach()
    bias = None if linear.bias is None else linear.bias.detach().clone()
    with one_thread(weight.device):
        qt = weighted_quantize(weight, scheme, importance)
    values = qt.dequantize().to(weight.dtype)
    qparams = QParams(qt.scale, qt.zero_point) if keeps_scales(scheme) else None
    return FakeQuantLinear(values, bias, scheme, act_scheme, qparams)


# Calibration: used only with `imatrix=True`, to collect the importance matrix.
@register(RTNConfig, name="RTN", calibration=Calibration.OPTIONAL_IMPORTANCE)
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
    importance = None
    if config.imatrix:  # on the float model, before any weight changes (llama-imatrix's order)
        check_calibration(calib, "RTN with an importance matrix")
        importance = collect_importance(model, calib, scaled(progress, 0.0, 0.5))
        progress = scaled(progress, 0.5, 1.0)
    reports: list[LayerReport] = []

    def make(linear, name):
        start = time.perf_counter()
        row = importance.get(name) if importance is not None else None  # None: a linear it did not see
        if row is None:
            quantized = fake_quant_linear(linear, config.weights, config.activations)
        else:
            quantized = weighted_linear(linear, config.weights, config.activations, row)
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
