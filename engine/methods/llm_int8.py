"""LLM.int8() (Dettmers et al. 2022): vector-wise int8 with a mixed-precision decomposition of outliers.

Weights are quantized once, per output row (absmax / 127, bitsandbytes' `CB` codes and fp32 `SCB`
absmax). At every call the input is split by feature dimension: the dims where any token has
|x| >= threshold (6.0 in the paper) are the outlier features and run in high precision against their
weight columns; every other dim is quantized per token (absmax / 127) and multiplied int8 x int8 with
int32 accumulation. Outlier dims are found anew for every forward, as bitsandbytes does.

`LLMInt8Linear` also records, while `recording` is on, how often each dim was kept; the method does
this over the calibration windows (when given), one window per forward as at inference, and reports
the kept dims of every layer, along with the relative error of each layer's output against the
original weights on the first `ERROR_WINDOWS` windows.

The calibration pass (`run_calibration`) and the output-error hooks (`OutputErrors`) are shared with
SmoothQuant and bitsandbytes, in engine/methods/calibration.py.

Where we depart from the paper and from bitsandbytes:
- The per-token absmax is taken over the int8 part only (the paper's decomposition); bitsandbytes
  zeroes only the outlier elements before its absmax, so non-outlier values of an outlier column still
  set the row scale there.
- The outlier part multiplies the input, in float32 (the paper's fp16), with the weight columns
  dequantized on the fly from the int8 codes (`CB * SCB / 127`, as bitsandbytes does: its CPU and GPU
  paths keep no 16-bit weights); the paper keeps those columns in fp16.
- Activations are quantized from the input's own dtype (float32 on CPU); bitsandbytes casts them to
  fp16 first. Codes are clamped to +-127 in both.
- The int8 product runs on `torch._int_mm` on AVX-512 CPUs (bitsandbytes' CPU choice) and as a float32
  matmul of the codes elsewhere: products are exact and sums exact below 2^24, so both agree.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from engine.methods.calibration import (
    OutputErrors,
    calibration_batches,
    first_windows,
    run_calibration,
    scaled,
)
from engine.methods.registry import Calibration, LayerReport, register
from engine.quant.linear import linear_names, replace_linears
from engine.quant.metrics import sqnr_db

INT8_MAX = 127
ERROR_WINDOWS = 2  # calibration windows on which each layer's output error is measured (a reference
#                   float matmul per layer: on CPUs with int8 dot products it costs more than int8 itself)
_FAST_CPU_INT_MM = torch.backends.cpu.get_cpu_capability() == "AVX512"  # bitsandbytes' guard, see above


@dataclass(frozen=True)
class LLMInt8Config:
    threshold: float = 6.0  # |x| at or above which an input dim is an outlier, kept 16-bit; inf: pure int8

    def __post_init__(self) -> None:
        value = self.threshold
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(
                f"threshold must be a positive number (got {value!r}); LLM.int8() uses 6.0, "
                "and float('inf') turns the outlier decomposition off"
            )
        object.__setattr__(self, "threshold", float(value))

    @property
    def label(self) -> str:
        return "LLM.int8()" if self.threshold == 6.0 else f"LLM.int8() t={self.threshold:g}"


@dataclass(frozen=True)
class LLMInt8Detail:
    """What LLM.int8() reports per linear (LayerReport.detail); the kept dims only when calibrated."""

    threshold: float  # |x| at or above which an input dim ran in 16-bit
    outlier_dims: list[int] = field(default_factory=list)  # input dims kept in 16-bit on some call
    outlier_tokens: list[int] = field(default_factory=list)  # per kept dim: tokens with |x| >= threshold
    max_abs: list[float] = field(default_factory=list)  # per kept dim: largest |x| seen
    fraction: float = 0.0  # share of input dims that ran in 16-bit
    tokens: int = 0  # calibration tokens seen; 0: no calibration ran, nothing was recorded


# -- the arithmetic ------------------------------------------------------------------------------------


def absmax(x: Tensor, dim: int) -> Tensor:
    """max |x| along `dim` (amax and amin: on CPU both together run ~10x faster than torch.aminmax)."""
    return torch.maximum(x.amax(dim), x.amin(dim).neg_())


def vectorwise_quantize(x: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 codes, float32 absmax per row) of a (rows, cols) tensor: codes = round(x * 127 / absmax)."""
    x = x.float()
    absmax_row = absmax(x, -1)  # (rows,)
    safe = torch.where(absmax_row > 0, absmax_row, torch.ones_like(absmax_row))  # zero rows: codes 0
    codes = torch.round(x * (INT8_MAX / safe).unsqueeze(-1)).clamp_(-INT8_MAX, INT8_MAX)
    return codes.to(torch.int8), absmax_row


def int8_matmul(a: Tensor, b: Tensor) -> Tensor:
    """(m, n) float32 of a (m, k) int8 @ b (n, k) int8 transposed, accumulated exactly as int32 would."""
    if a.device.type == "cpu" and _FAST_CPU_INT_MM:
        return torch._int_mm(a, b.t()).float()
    return a.float() @ b.float().t()


class LLMInt8Linear(nn.Module):
    """y = S * (Xq_regular @ Wq_regular^T) + X_outliers @ dequant(W_outliers)^T + b, outliers per call."""

    def __init__(self, codes: Tensor, absmax: Tensor, bias: Tensor | None, threshold: float) -> None:
        super().__init__()
        self.register_buffer("weight_codes", codes)  # (out_features, in_features) int8: bitsandbytes' CB
        self.register_buffer("weight_absmax", absmax.float())  # (out_features,) fp32: bitsandbytes' SCB
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.threshold = threshold
        self.out_features, self.in_features = codes.shape
        self.recording = False  # count kept dims per forward (calibration only: the model may be shared)
        self.register_buffer(
            "outlier_tokens", torch.zeros(self.in_features, dtype=torch.long), persistent=False
        )
        self.register_buffer("input_absmax", torch.zeros(self.in_features), persistent=False)
        self.tokens_seen = 0

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, threshold: float) -> LLMInt8Linear:
        codes, absmax = vectorwise_quantize(linear.weight.detach())
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(codes, absmax, bias, threshold)

    def dequantized_weight(self) -> Tensor:
        """(out_features, in_features) float32: what every int8 weight stands for."""
        return self.weight_codes.float() * (self.weight_absmax / INT8_MAX).unsqueeze(1)

    @property
    def bits_per_weight(self) -> float:
        return 8 + 32 / self.in_features  # int8 codes plus one fp32 absmax per output row

    def outlier_dims(self, x: Tensor) -> Tensor:
        """(kept,) int64 input dims where some token of x: (tokens, in_features) reaches the threshold."""
        if self.recording:
            self.tokens_seen += x.shape[0]
        if math.isinf(self.threshold):
            return torch.empty(0, dtype=torch.long, device=x.device)
        column_absmax = absmax(x, 0)  # (in_features,)
        dims = (column_absmax >= self.threshold).nonzero().flatten()
        if self.recording:
            self.outlier_tokens.index_add_(0, dims, (x[:, dims].abs() >= self.threshold).sum(0))
            torch.maximum(self.input_absmax, column_absmax, out=self.input_absmax)
        return dims

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features).float()  # (tokens, in_features)
        dims = self.outlier_dims(flat)  # (kept,)
        regular = flat.index_fill(1, dims, 0.0) if dims.numel() else flat  # the int8 part
        codes, row_absmax = vectorwise_quantize(regular)  # (tokens, in_features), (tokens,)
        out = int8_matmul(codes, self.weight_codes)  # (tokens, out_features), exact int32 sums
        out.mul_((row_absmax / INT8_MAX).unsqueeze(1)).mul_(self.weight_absmax / INT8_MAX)
        if dims.numel():
            columns = self.weight_codes.index_select(1, dims).float()  # (out_features, kept)
            columns.mul_((self.weight_absmax / INT8_MAX).unsqueeze(1))
            out.addmm_(flat.index_select(1, dims), columns.t())
        if self.bias is not None:
            out.add_(self.bias.float())
        return out.to(x.dtype).view(*shape[:-1], self.out_features)

    def kept_summary(self) -> LLMInt8Detail:
        """Recorded dims kept in 16-bit, how many tokens crossed the threshold in each, and their share."""
        dims = (self.outlier_tokens > 0).nonzero().flatten()
        return LLMInt8Detail(
            threshold=self.threshold,
            outlier_dims=dims.tolist(),
            outlier_tokens=self.outlier_tokens[dims].tolist(),
            max_abs=self.input_absmax[dims].tolist(),
            fraction=dims.numel() / self.in_features,
            tokens=self.tokens_seen,
        )

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, threshold={self.threshold:g}"


# -- the method ----------------------------------------------------------------------------------------


@register(
    LLMInt8Config, name="LLM.int8()", calibration=Calibration.OPTIONAL_REPORT, detail_type=LLMInt8Detail
)
def llm_int8(model, config: LLMInt8Config, calib, progress) -> list[LayerReport]:
    batches = None
    if calib is not None:  # one window per forward: outlier dims are found per call, as at inference
        window = calib.shape[-1] if isinstance(calib, Tensor) else 1
        batches = calibration_batches(calib, max_tokens=window)
    references: dict[str, tuple[Tensor, Tensor | None]] = {}
    built: dict[str, tuple[float, float]] = {}  # name -> (weight SQNR, seconds)

    def make(linear: nn.Linear, name: str) -> LLMInt8Linear:
        start = time.perf_counter()
        module = LLMInt8Linear.from_linear(linear, config.threshold)
        with torch.no_grad():
            sqnr = sqnr_db(linear.weight.detach().float(), module.dequantized_weight())
        if batches is not None:  # kept until the calibration pass has measured output errors
            references[name] = (linear.weight.detach(), None if linear.bias is None else linear.bias.detach())
        built[name] = (sqnr, time.perf_counter() - start)
        return module

    names = linear_names(model)
    replace_linears(model, make, progress=scaled(progress, 0.0, 0.1 if batches else 1.0))
    errors: dict[str, float] = {}
    if batches is not None:
        modules = [model.get_submodule(name) for name in names]
        for module in modules:
            module.recording = True
        measured, rest = first_windows(batches, ERROR_WINDOWS)
        share = 0.1 + 0.9 * len(measured) / (len(measured) + len(rest))
        try:
            with OutputErrors(model, references) as outputs:
                run_calibration(model, measured, scaled(progress, 0.1, share))
            errors = outputs.relative()
            references.clear()  # drop the float weights before the remaining windows
            run_calibration(model, rest, scaled(progress, share, 1.0))
        finally:
            for module in modules:
                module.recording = False
    reports = []
    for name in names:
        module = model.get_submodule(name)
        sqnr, seconds = built[name]
        detail = module.kept_summary() if batches is not None else LLMInt8Detail(config.threshold)
        reports.append(LayerReport(name, module.bits_per_weight, sqnr, errors.get(name), seconds, detail))
    return reports
