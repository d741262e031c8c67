"""Observers: calibrate activation ranges for *static* quantization.

Feed batches with `obs.update(x)`, read `obs.range() -> (lo, hi)` and turn it into quantization
parameters with `obs.qparams(scheme)`, which plug straight into the primitives:

    obs = PercentileObserver(99.99)
    for batch in calibration: obs.update(hidden_states)
    y = fake_quantize(x, scheme, *obs.qparams(scheme))      # static: scales fixed in advance
    y = fake_quantize(x, scheme)                            # dynamic: scales from each x

Granularity. Dynamic "channel" means one scale per row (per token), which cannot be calibrated in
advance, so a static per-channel range is one per *feature* of the last dim (PyTorch's
`PerChannelMinMaxObserver(ch_axis=-1)`): a per-tensor observer serves granularity "tensor", a
`per_channel=True` observer serves granularity "channel" and returns scales of shape (features,).

Departures from torch.ao.quantization observers:
- MovingAverageMinMaxObserver's `momentum` is the weight of the new batch (torch calls it
  `averaging_constant`, default 0.01); the first batch sets the range.
- The histogram observers keep one fixed-size histogram that is re-binned (by bin centre) when a batch
  widens the range, instead of torch's upsample-and-merge; percentiles are read at bin edges, so the
  clipped range is accurate to one bin width ((hi - lo) / bins) and never narrower than the true one.
- MSEObserver scores candidate clip ratios by the fake-quantization error of the histogram's bin
  centres weighted by their counts (torch's HistogramObserver searches the L2 error analytically
  over bin intervals, for int8 only); any scheme works, nf4 and fp8 included.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from engine.quant import formats
from engine.quant.primitives import QParams, qparams_from_range
from engine.quant.schemes import QuantScheme


class Observer:
    """Base class: tracks a (lo, hi) range; subclasses decide how."""

    per_channel: bool = False

    def update(self, x: Tensor) -> None:
        raise NotImplementedError

    def range(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def qparams(self, scheme: QuantScheme) -> QParams:
        """Static scale (and zero point) for `scheme` from the calibrated range."""
        self._check_scheme(scheme)
        lo, hi = self.range()
        return qparams_from_range(lo, hi, scheme)

    def _check_scheme(self, scheme: QuantScheme) -> None:
        name = type(self).__name__
        if scheme.granularity == "group":
            raise ValueError(
                f"{name} calibrates per-tensor or per-feature ranges; static group-wise activation "
                "scales are not supported, use granularity 'tensor' or 'channel'"
            )
        if scheme.double_quant:
            raise ValueError("double_quant applies to per-block weight scales; turn it off for activations")
        wanted = "channel" if self.per_channel else "tensor"
        if scheme.granularity != wanted:
            fix = "per_channel=True" if scheme.granularity == "channel" else "per_channel=False"
            raise ValueError(
                f"{name}(per_channel={self.per_channel}) gives {wanted} ranges but the scheme asks for "
                f"granularity {scheme.granularity!r}; use {fix} or granularity {wanted!r}"
            )

    def _require_data(self, seen: bool) -> None:
        if not seen:
            raise ValueError(f"{type(self).__name__} has seen no data; call update(x) first")


def _batch_range(x: Tensor, per_channel: bool) -> tuple[Tensor, Tensor]:
    x = x.detach().float()
    if per_channel:
        rows = x.reshape(-1, x.shape[-1])  # amin + amax beat torch.aminmax along a dim on CPU
        return rows.amin(dim=0), rows.amax(dim=0)  # (features,) each
    return torch.aminmax(x)


class MinMaxObserver(Observer):
    """Running minimum and maximum: never clips calibration data, so one outlier sets the scale."""

    def __init__(self, per_channel: bool = False) -> None:
        self.per_channel = per_channel
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None

    def update(self, x: Tensor) -> None:
        lo, hi = _batch_range(x, self.per_channel)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            if lo.shape != self.lo.shape:
                raise ValueError(
                    f"feature count changed from {self.lo.numel()} to {lo.numel()} between batches"
                )
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)

    def range(self) -> tuple[Tensor, Tensor]:
        self._require_data(self.lo is not None)
        return self.lo.clone(), self.hi.clone()


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of each batch's min and max: one odd batch moves it only a little."""

    def __init__(self, momentum: float = 0.01, per_channel: bool = False) -> None:
        if not 0.0 < momentum <= 1.0:
            raise ValueError(
                f"momentum must be in (0, 1] (got {momentum}); it is the weight of each new batch"
            )
        super().__init__(per_channel)
        self.momentum = momentum

    def update(self, x: Tensor) -> None:
        lo, hi = _batch_range(x, self.per_channel)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = torch.lerp(self.lo, lo, self.momentum)
            self.hi = torch.lerp(self.hi, hi, self.momentum)


class _HistogramObserver(Observer):
    """A fixed number of bins over the running [lo, hi] of every value seen (per tensor only)."""

    def __init__(self, bins: int = 2048) -> None:
        if bins < 16:
            raise ValueError(f"bins must be at least 16 (got {bins})")
        self.bins = bins
        self.hist: Tensor | None = None  # (bins,) float64 counts
        self.lo = 0.0
        self.hi = 0.0

    def update(self, x: Tensor) -> None:
        x = x.detach().float().reshape(-1)
        lo, hi = (float(v) for v in torch.aminmax(x))
        if self.hist is None:
            if lo == hi:
                lo, hi = lo - 0.5, hi + 0.5
            self.lo, self.hi = lo, hi
            self.hist = torch.zeros(self.bins, dtype=torch.float64)
        elif lo < self.lo or hi > self.hi:
            new_lo, new_hi = min(lo, self.lo), max(hi, self.hi)
            centres = self._centres()
            self.hist = torch.histogram(
                centres.float(), bins=self.bins, range=(new_lo, new_hi), weight=self.hist.float()
            ).hist.double()
            self.lo, self.hi = new_lo, new_hi
        self.hist += torch.histc(x, bins=self.bins, min=self.lo, max=self.hi).double()

    def _centres(self) -> Tensor:
        width = (self.hi - self.lo) / self.bins
        return self.lo + width * (torch.arange(self.bins, dtype=torch.float64) + 0.5)  # (bins,)

    def _percentile_range(self, percentile: float) -> tuple[float, float]:
        self._require_data(self.hist is not None)
        cdf = torch.cumsum(self.hist, 0) / self.hist.sum()  # (bins,)
        tail = 1.0 - percentile / 100.0
        width = (self.hi - self.lo) / self.bins
        first = int(torch.searchsorted(cdf, torch.tensor([tail], dtype=torch.float64), right=True))
        last = int(torch.searchsorted(cdf, torch.tensor([1.0 - tail], dtype=torch.float64), right=False))
        first, last = min(first, self.bins - 1), min(last, self.bins - 1)
        return self.lo + first * width, self.lo + (last + 1) * width

    def _check_scheme(self, scheme: QuantScheme) -> None:
        if scheme.granularity == "channel":
            raise ValueError(
                f"{type(self).__name__} keeps one histogram per tensor; use granularity 'tensor', "
                "or MinMaxObserver(per_channel=True) for per-feature ranges"
            )
        super()._check_scheme(scheme)


class PercentileObserver(_HistogramObserver):
    """Keep the central mass: lo at the (100 - p)th percentile, hi at the pth (e.g. 99.99); rare outliers clip."""

    def __init__(self, percentile: float = 99.99, bins: int = 2048) -> None:
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100] (got {percentile}); 100 keeps the full range")
        super().__init__(bins)
        self.percentile = percentile

    def range(self) -> tuple[Tensor, Tensor]:
        lo, hi = self._percentile_range(self.percentile)
        return torch.tensor(lo), torch.tensor(hi)


DEFAULT_RATIOS = tuple(round(0.2 + 0.01 * i, 2) for i in range(81))  # 0.20, 0.21, ..., 1.00


class MSEObserver(_HistogramObserver):
    """Pick the clip ratio whose fake quantization of the calibration data has the lowest MSE.

    `range()` reports the best clipped range for the scheme given at construction (int8 per-tensor
    by default); `qparams(scheme)` searches again for the scheme it is given, ignoring its clip_ratio.
    """

    def __init__(
        self,
        scheme: QuantScheme | None = None,
        bins: int = 2048,
        ratios: tuple[float, ...] = DEFAULT_RATIOS,
    ) -> None:
        super().__init__(bins)
        self.scheme = scheme or QuantScheme(bits=8, granularity="tensor")
        self._check_scheme(self.scheme)
        if not ratios or not all(0.0 < r <= 1.0 for r in ratios):
            raise ValueError("ratios must be a non-empty sequence of clip ratios in (0, 1]")
        self.ratios = tuple(ratios)

    def errors(self, scheme: QuantScheme) -> dict[float, float]:
        """Estimated MSE of fake-quantizing the calibration data at each candidate clip ratio."""
        self._require_data(self.hist is not None)
        centres = self._centres().float()  # (bins,)
        weights = self.hist / self.hist.sum()  # (bins,)
        lo, hi = torch.tensor(self.lo), torch.tensor(self.hi)
        out = {}
        for ratio in self.ratios:
            candidate = dataclasses.replace(scheme, clip_ratio=ratio)
            scale, zero = qparams_from_range(lo, hi, candidate)
            err = formats.fake(centres, scale, zero, candidate) - centres  # (bins,)
            out[ratio] = float(torch.sum(weights * err.double() ** 2))
        return out

    def best_ratio(self, scheme: QuantScheme) -> float:
        errors = self.errors(scheme)
        return min(errors, key=lambda r: (errors[r], -r))  # ties go to the wider range

    def range(self) -> tuple[Tensor, Tensor]:
        ratio = self.best_ratio(self.scheme)
        return torch.tensor(self.lo * ratio), torch.tensor(self.hi * ratio)

    def qparams(self, scheme: QuantScheme) -> QParams:
        self._check_scheme(scheme)
        best = dataclasses.replace(scheme, clip_ratio=self.best_ratio(scheme))
        return qparams_from_range(torch.tensor(self.lo), torch.tensor(self.hi), best)
