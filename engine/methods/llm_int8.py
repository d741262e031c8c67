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

Also here, shared with the other calibrated methods: `calibration_batches` / `run_calibration` (run
token windows through the model's body, without the output head) and `OutputErrors` (forward hooks
comparing quantized layers with their full-precision weights on the same inputs).

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.analysis.stats import MAX_TOKENS_PER_FORWARD, StatsError, batched, decoder_layers
from engine.methods.registry import LayerReport, Progress, register
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

    def kept_summary(self) -> dict:
        """Recorded dims kept in 16-bit, how many tokens crossed the threshold in each, and their share."""
        dims = (self.outlier_tokens > 0).nonzero().flatten()
        return {
            "outlier_dims": dims.tolist(),
            "outlier_tokens": self.outlier_tokens[dims].tolist(),  # per kept dim: tokens with |x| >= t
            "max_abs": self.input_absmax[dims].tolist(),  # per kept dim: largest |x| seen
            "fraction": dims.numel() / self.in_features,  # share of input dims that ran in 16-bit
            "tokens": self.tokens_seen,
            "threshold": self.threshold,
        }

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, threshold={self.threshold:g}"


# -- calibration helpers (shared with SmoothQuant and bitsandbytes) --------------------------------------


def calibration_batches(
    calib: Tensor | Iterable[Tensor], max_tokens: int = MAX_TOKENS_PER_FORWARD
) -> list[Tensor]:
    """(batch, tokens) id batches from (count, window) ids, one (tokens,) window, or a list of either.

    Windows of a (count, window) tensor are batched up to `max_tokens` tokens per forward (at least one).
    """
    if isinstance(calib, Tensor):
        windows = calib.unsqueeze(0) if calib.dim() == 1 else calib
        batches = batched(windows, max_tokens)
    else:
        batches = [torch.as_tensor(b).reshape(1, -1) if torch.as_tensor(b).dim() < 2 else b for b in calib]
    batches = [b for b in batches if b.numel()]
    if not batches:
        raise ValueError("the calibration set is empty: pass (count, window) token ids")
    if any(b.dtype.is_floating_point or b.dtype == torch.bool for b in batches):
        raise ValueError("calibration windows must hold integer token ids")
    return batches


def scaled(progress: Progress | None, start: float, end: float) -> Progress | None:
    """A progress callback that maps [0, 1] onto [start, end] of `progress`."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (end - start) * fraction, message)


@torch.no_grad()
def run_calibration(model: nn.Module, batches: list[Tensor], progress: Progress | None = None) -> int:
    """Run the batches through the model's body (no output head, no cache); returns the tokens run.

    Progress is reported after every decoder layer of every batch (a batch of 2,048 tokens takes seconds
    on a CPU), through forward hooks that are always removed.
    """
    body = getattr(model, "base_model", model)
    device = next(model.parameters()).device
    handles, step = [], [0]
    try:
        _, layers = decoder_layers(model)
    except StatsError:
        layers = []
    total = len(batches) * max(len(layers), 1)

    def tick(message: str) -> None:
        step[0] += 1
        if progress:
            progress(min(step[0] / total, 1.0), message)

    tokens = 0
    try:
        for index, layer in enumerate(layers):
            handles.append(
                layer.register_forward_hook(lambda *_, i=index: tick(f"layer {i + 1} of {len(layers)}"))
            )
        for index, batch in enumerate(batches):
            body(input_ids=batch.to(device), use_cache=False)
            tokens += batch.numel()
            if not layers:
                tick(f"calibration batch {index + 1} of {len(batches)}")
    finally:
        for handle in handles:
            handle.remove()
    return tokens


def first_windows(batches: list[Tensor], count: int) -> tuple[list[Tensor], list[Tensor]]:
    """(batches holding the first `count` windows, batches holding the rest)."""
    head, tail, left = [], [], count
    for batch in batches:
        if left > 0:
            head.append(batch[:left])
            if batch.shape[0] > left:
                tail.append(batch[left:])
            left -= head[-1].shape[0]
        else:
            tail.append(batch)
    return head, tail


class OutputErrors:
    """`with OutputErrors(model, references) as errors: run ...; errors.relative()` -> {name: error}.

    Forward hooks on the named modules compare each output with linear(input, weight, bias) of the
    reference (weight, bias) given for it, on the very inputs the quantized model feeds that layer:
    the error is ||y_q - y|| / ||y|| summed over every call. Hooks are removed on exit.
    """

    def __init__(self, model: nn.Module, references: dict[str, tuple[Tensor, Tensor | None]]) -> None:
        self.model, self.references = model, references
        self.signal = dict.fromkeys(references, 0.0)
        self.noise = dict.fromkeys(references, 0.0)
        self._handles: list = []

    def __enter__(self) -> OutputErrors:
        try:
            for name in self.references:
                self._handles.append(self.model.get_submodule(name).register_forward_hook(self._hook(name)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        while self._handles:
            self._handles.pop().remove()

    def _hook(self, name: str) -> Callable:
        weight, bias = self.references[name]

        def hook(module, args, output):
            x = args[0]
            reference = nn.functional.linear(x.to(weight.dtype), weight, bias).float()  # (..., out)
            self.signal[name] += float(torch.linalg.vector_norm(reference)) ** 2
            self.noise[name] += float(torch.linalg.vector_norm(output.float() - reference)) ** 2

        return hook

    def relative(self) -> dict[str, float]:
        return {
            name: math.sqrt(self.noise[name] / self.signal[name]) if self.signal[name] > 0 else 0.0
            for name in self.references
        }


# -- the method ----------------------------------------------------------------------------------------


@register(LLMInt8Config)
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
        detail = module.kept_summary() if batches is not None else {"threshold": config.threshold}
        reports.append(LayerReport(name, module.bits_per_weight, sqnr, errors.get(name), seconds, detail))
    return reports
