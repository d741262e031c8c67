"""Outliers before and after rotating: what rotation (engine.methods.rotation) does to the activations.

Per decoder layer, on calibration windows:
- the residual stream after the layer: each token's max |x| / RMS(x) (√hidden when one channel holds all
  the energy, about 3-4 for Gaussian-like rows), the largest over tokens and where it sits (window,
  position, token id). SmolLM2-135M's first token reaches several hundred; a rotation brings it down to
  a handful, which is what a per-token 4-bit scale needs;
- the residual's channel spread: each channel's max |x| over all tokens, the largest over the median
  (what a per-channel or per-tensor scale has to cover), and which channel holds it;
- the kurtosis E[(x - μ)⁴] / σ⁴ of each linear input (all values of the input, every token): 3 for a
  Gaussian, far more when a few channels or tokens dominate.

`rotation_stats(model, rotated, windows)` measures both models on the same windows; neither is changed
(hooks through engine.hooks always unhook).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.analysis.stats import decoder_layers
from engine.hooks import forward_hooks, pre_hooks

__all__ = ["LayerOutliers", "OutlierProfile", "RotationStats", "outlier_profile", "rotation_stats"]

# linear inputs measured per layer: (site shown to the user, linear path in a Llama decoder layer)
SITES = (
    ("attention input", "self_attn.q_proj"),
    ("attention output", "self_attn.o_proj"),
    ("MLP input", "mlp.gate_proj"),
    ("MLP down input", "mlp.down_proj"),
)


@dataclass(frozen=True)
class LayerOutliers:
    layer: int
    max_over_rms: float  # largest per-token max |x| / RMS(x) of the residual after this layer
    window: int  # where that token is: which calibration window,
    position: int  # its position in the window,
    token_id: int  # and its id
    channel_spread: float  # residual: largest per-channel max |x| over the median channel's (all tokens)
    top_channel: int  # the channel with that largest max |x| (SmolLM2-135M: 507 before rotating)
    input_kurtosis: dict[str, float]  # site (SITES' names) -> kurtosis of that linear's input


@dataclass(frozen=True)
class OutlierProfile:
    layers: tuple[LayerOutliers, ...]

    @property
    def largest_ratio(self) -> float:
        """The largest per-token max / RMS of the residual over every layer."""
        return max(layer.max_over_rms for layer in self.layers)

    @property
    def largest_spread(self) -> float:
        """The largest channel spread of the residual over every layer."""
        return max(layer.channel_spread for layer in self.layers)


@dataclass(frozen=True)
class RotationStats:
    before: OutlierProfile  # the model as given
    after: OutlierProfile  # its rotated copy

    @property
    def ratio_drop(self) -> float:
        """How many times smaller the largest per-token max / RMS became (at most √hidden / ~3: a rotation
        keeps each token's norm, so 24 / 4 ≈ 6 on a 576-wide residual)."""
        return self.before.largest_ratio / self.after.largest_ratio

    @property
    def spread_drop(self) -> float:
        """How many times smaller the largest channel spread became: what a per-channel scale sees."""
        return self.before.largest_spread / self.after.largest_spread


class _Moments:
    """Running sums of x, x², x³, x⁴ in float64: kurtosis without keeping the values."""

    def __init__(self) -> None:
        self.count, self.sums = 0, torch.zeros(4, dtype=torch.float64)

    def add(self, x: Tensor) -> None:
        x = x.detach().double().reshape(-1)
        self.count += x.numel()
        self.sums += torch.stack([x.sum(), x.pow(2).sum(), x.pow(3).sum(), x.pow(4).sum()]).cpu()

    def kurtosis(self) -> float:
        if self.count == 0:
            return float("nan")
        m1, m2, m3, m4 = (self.sums / self.count).tolist()
        variance = m2 - m1 * m1
        fourth = m4 - 4 * m1 * m3 + 6 * m1 * m1 * m2 - 3 * m1**4  # E[(x - μ)⁴]
        return fourth / variance**2 if variance > 0 else float("nan")


@torch.no_grad()
def outlier_profile(model: nn.Module, windows: Tensor) -> OutlierProfile:
    """Residual max / RMS per token and linear-input kurtosis, per decoder layer, on (n, tokens) ids."""
    windows = torch.as_tensor(windows)
    windows = windows.unsqueeze(0) if windows.dim() == 1 else windows
    _, layers = decoder_layers(model)
    device = next(model.parameters()).device
    best = [(0.0, 0, 0, 0)] * len(layers)  # (ratio, window, position, token id)
    channel_max: list[Tensor | None] = [None] * len(layers)  # (hidden,) max |x| per channel, all tokens
    moments = [{site: _Moments() for site, _ in SITES} for _ in layers]
    current = [0]  # the window being run

    def residual_hook(index: int):
        def hook(module, args, output):
            h = (output[0] if isinstance(output, tuple) else output).detach().float()  # (1, tokens, hidden)
            ratio = h.abs().amax(-1) / h.pow(2).mean(-1).sqrt().clamp(min=1e-30)  # (1, tokens)
            peak = h.abs().amax((0, 1))  # (hidden,)
            channel_max[index] = (
                peak if channel_max[index] is None else torch.maximum(channel_max[index], peak)
            )
            value, position = ratio[0].max(0)
            if float(value) > best[index][0]:
                row = current[0]
                best[index] = (float(value), row, int(position), int(windows[row, int(position)]))

        return hook

    def input_hook(index: int, site: str):
        def hook(module, args):
            moments[index][site].add(args[0])

        return hook

    inputs = [
        (layer.get_submodule(path), input_hook(i, site))
        for i, layer in enumerate(layers)
        for site, path in SITES
        if _has(layer, path)
    ]
    with forward_hooks((layer, residual_hook(i)) for i, layer in enumerate(layers)), pre_hooks(inputs):
        for row in range(windows.shape[0]):
            current[0] = row
            model(input_ids=windows[row : row + 1].to(device), use_cache=False)
    profile = []
    for i in range(len(layers)):
        peaks = channel_max[i]
        spread = float(peaks.max() / peaks.median().clamp(min=1e-30))
        kurtosis = {site: m.kurtosis() for site, m in moments[i].items() if m.count}
        profile.append(LayerOutliers(i, *best[i], spread, int(peaks.argmax()), kurtosis))
    return OutlierProfile(tuple(profile))


def _has(layer: nn.Module, path: str) -> bool:
    try:
        layer.get_submodule(path)
    except AttributeError:
        return False
    return True


def rotation_stats(model: nn.Module, rotated: nn.Module, windows: Tensor) -> RotationStats:
    """The outlier profile of `model` and of its rotated copy on the same windows."""
    return RotationStats(outlier_profile(model, windows), outlier_profile(rotated, windows))
