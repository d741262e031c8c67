"""Massive activations in the residual stream, the tokens that carry them, and the attention sink.

`massive_activations(model, ids)` runs (windows, tokens) ids one window at a time and records, for every
decoder layer's output (the residual stream after the layer), its largest |value| with the channel, window,
position and token that hold it, the layer's median |value|, and every value that counts as massive. The
same forward measures the attention sink: per layer and head, the mean attention weight that queries put on
the first token of the window.

Definitions and where we depart from the papers:
- Massive activation (Sun et al. 2024, "Massive Activations in Large Language Models"): a hidden-state value
  with |x| > 100 that is also about 1,000 times the median |x| of its hidden state. We apply both thresholds
  (`absolute`, `ratio`) to each window's hidden state of one layer; `median` reports, per layer, the median
  over windows of those per-window medians (exact with one window).
- Attention on the first token: the mean over the window's queries, the first excluded (it can attend only
  to itself), of the attention probability on key 0, averaged over windows. The probabilities come from
  transformers' eager attention, run on a view of the model that shares its weights but not its config, so
  the shared model keeps its attention implementation (SDPA returns no probabilities).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from engine._types import Progress
from engine.analysis.stats import decoder_layers
from engine.hooks import forward_hooks

MASSIVE_ABSOLUTE = 100.0  # Sun et al.: |x| > 100 ...
MASSIVE_RATIO = 1000.0  # ... and about 1,000 times the median |x| of the hidden state


@dataclass(frozen=True)
class Carrier:
    """One token of one window that carries massive activations."""

    window: int
    position: int  # within the window; 0 is the first token
    token_id: int  # the UI turns it into text with the tokenizer
    layers: int  # how many layers' outputs hold a massive value on this token
    channels: tuple[int, ...]  # the channels where they sit, most frequent first
    peak: float  # the largest |value| it carries


@dataclass(frozen=True)
class MassiveActivations:
    """Per-layer residual-stream peaks, massive values and their carriers, and attention on the first token."""

    ids: Tensor  # (windows, tokens) the token ids that were run
    peak: Tensor  # (layers,) largest |value| of the layer's output over every window and token
    peak_channel: Tensor  # (layers,) its channel
    peak_window: Tensor  # (layers,) its window
    peak_position: Tensor  # (layers,) its position within the window
    median: Tensor  # (layers,) median |value| of the layer's output (median over windows of each window's)
    channel_absmax: Tensor  # (layers, hidden) max |value| of each channel
    massive_count: Tensor  # (layers, hidden) how many tokens hold a massive value in each channel
    carriers: tuple[Carrier, ...]  # tokens carrying massive values, most layers first
    first_token_attention: Tensor  # (layers, heads) mean attention probability on the first token
    absolute: float  # the thresholds used: |x| > absolute and |x| > ratio x median
    ratio: float
    seconds: float

    @property
    def layers(self) -> int:
        return int(self.peak.numel())

    @property
    def peak_ratio(self) -> Tensor:
        """(layers,) largest |value| over the layer's median |value|."""
        return self.peak / self.median.clamp_min(1e-30)

    @property
    def peak_token(self) -> Tensor:
        """(layers,) token id holding each layer's largest value."""
        return self.ids[self.peak_window, self.peak_position]

    def massive_channels(self) -> list[int]:
        """Channels that hold a massive value in some layer, the most tokens-and-layers first."""
        totals = self.massive_count.sum(0)  # (hidden,)
        order = totals.argsort(descending=True)
        return [int(c) for c in order if totals[c] > 0]

    def massive_layers(self, channel: int) -> list[int]:
        """Layers whose output holds a massive value in `channel`."""
        return [int(i) for i in (self.massive_count[:, channel] > 0).nonzero().flatten()]

    def first_token_share(self) -> float:
        """Share of (layer, token) massive values that sit on the first token of a window (nan: none)."""
        total = sum(c.layers for c in self.carriers)
        first = sum(c.layers for c in self.carriers if c.position == 0)
        return first / total if total else float("nan")


def eager_view(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model's modules and config that shares every weight and buffer (no model-sized memory),
    switched to eager attention so attention modules return their probabilities. The original is untouched."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    view = copy.deepcopy(model, memo)
    if not hasattr(view, "set_attn_implementation"):
        raise ValueError(
            f"{type(model).__name__} cannot switch to eager attention, so its attention probabilities "
            "cannot be read; load a transformers model"
        )
    view.set_attn_implementation("eager")
    return view.eval()


def check_ids(ids: Tensor) -> Tensor:
    """(windows, tokens) int64 CPU ids; ValueError with the reason otherwise."""
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.numel() == 0:
        shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"token windows must be a non-empty (windows, tokens) tensor, got {shape}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"token ids must be integers, got {ids.dtype}")
    if ids.shape[1] < 2:
        raise ValueError("windows need at least 2 tokens to show attention on the first one")
    return ids.long().cpu()


@dataclass
class _Hit:
    layer: int
    window: int
    position: int
    channel: int
    value: float


@torch.no_grad()
def massive_activations(
    model: torch.nn.Module,
    ids: Tensor,
    progress: Progress | None = None,
    absolute: float = MASSIVE_ABSOLUTE,
    ratio: float = MASSIVE_RATIO,
) -> MassiveActivations:
    """Residual-stream peaks and massive values per layer, their carriers, and attention on the first token."""
    ids = check_ids(ids)
    if absolute < 0 or ratio < 1:
        raise ValueError(f"thresholds must be |x| >= 0 and ratio >= 1 (got {absolute}, {ratio})")
    start = time.perf_counter()
    view = eager_view(model)
    _, layers = decoder_layers(view)
    count, device = len(layers), next(model.parameters()).device
    windows, tokens = ids.shape
    attention_sum: list[Tensor | None] = [None] * count  # per layer: (heads,) summed over windows
    medians = torch.zeros(windows, count)
    peak = torch.zeros(count)
    where = torch.zeros(count, 3, dtype=torch.long)  # (layers, channel / window / position)
    channel_absmax: Tensor | None = None
    massive_count: Tensor | None = None
    hits: list[_Hit] = []
    state = {"window": 0}

    def residual_hook(index: int):
        def hook(module, args, output):
            nonlocal channel_absmax, massive_count
            hidden = (output[0] if isinstance(output, tuple) else output)[0].detach().float().abs().cpu()
            if channel_absmax is None:  # (tokens, hidden) from here on
                channel_absmax = torch.zeros(count, hidden.shape[-1])
                massive_count = torch.zeros(count, hidden.shape[-1], dtype=torch.long)
            window = state["window"]
            median = float(hidden.median())
            medians[window, index] = median
            torch.maximum(channel_absmax[index], hidden.amax(0), out=channel_absmax[index])
            value, flat = hidden.flatten().max(0)
            if float(value) > float(peak[index]):
                peak[index] = value
                position, channel = divmod(int(flat), hidden.shape[-1])
                where[index] = torch.tensor([channel, window, position])
            mask = (hidden > absolute) & (hidden > ratio * median)  # (tokens, hidden)
            massive_count[index] += mask.sum(0)
            signed = (output[0] if isinstance(output, tuple) else output)[0]
            for position, channel in mask.nonzero().tolist():
                hits.append(_Hit(index, window, position, channel, float(signed[position, channel])))

        return hook

    def attention_hook(index: int):
        def hook(module, args, output):
            probs = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if probs is None:
                raise ValueError("the attention returned no probabilities; eager attention is needed")
            first = probs[0, :, 1:, 0].float().mean(-1).cpu()  # (heads,) queries 1.. on key 0
            attention_sum[index] = first if attention_sum[index] is None else attention_sum[index] + first

        return hook

    pairs = [(layer, residual_hook(i)) for i, layer in enumerate(layers)]
    attention = [(getattr(layer, "self_attn", None), attention_hook(i)) for i, layer in enumerate(layers)]
    if any(module is None for module, _ in attention):
        raise ValueError(
            "this model's decoder layers have no self_attn module, so there is no attention to read"
        )
    base = getattr(view, "base_model", view)  # the decoder without the head: its logits are not needed
    with forward_hooks(pairs + attention):
        for window in range(windows):
            if progress:
                progress(window / windows, f"Window {window + 1} of {windows}")
            state["window"] = window
            base(input_ids=ids[window : window + 1].to(device), use_cache=False)
    if progress:
        progress(1.0, "Massive activations done")
    return MassiveActivations(
        ids=ids,
        peak=peak,
        peak_channel=where[:, 0].clone(),
        peak_window=where[:, 1].clone(),
        peak_position=where[:, 2].clone(),
        median=medians.median(0).values,
        channel_absmax=channel_absmax,
        massive_count=massive_count,
        carriers=_carriers(hits, ids),
        first_token_attention=torch.stack(attention_sum) / windows,
        absolute=absolute,
        ratio=ratio,
        seconds=time.perf_counter() - start,
    )


def _carriers(hits: list[_Hit], ids: Tensor) -> tuple[Carrier, ...]:
    by_token: dict[tuple[int, int], list[_Hit]] = {}
    for hit in hits:
        by_token.setdefault((hit.window, hit.position), []).append(hit)
    carriers = []
    for (window, position), group in by_token.items():
        channels: dict[int, int] = {}
        for hit in group:
            channels[hit.channel] = channels.get(hit.channel, 0) + 1
        carriers.append(
            Carrier(
                window=window,
                position=position,
                token_id=int(ids[window, position]),
                layers=len({hit.layer for hit in group}),
                channels=tuple(sorted(channels, key=lambda c: -channels[c])),
                peak=max(abs(hit.value) for hit in group),
            )
        )
    return tuple(sorted(carriers, key=lambda c: (-c.layers, -c.peak)))
