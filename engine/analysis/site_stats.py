"""The finished statistics of a collection (`SiteStats` per tensor, `Stats` for the model) and the running
reducer that builds them from a stream of (tokens, channels) tensors.

`_Accumulator` keeps, per channel, the abs-max, the mean and the 2nd/3rd/4th central moments merged across
batches with Pébay's formulas, a fixed log-binned histogram of |x| and the abs-max of every token, plus the
first `sample_tokens` rows as a (tokens, channels) sample for heatmaps and sensitivity. Kurtosis is
Pearson's (3 for a Gaussian). `engine.analysis.stats` runs the model and feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

TARGETS = ("activations", "residual", "kv")
HIST_LOG2_RANGE = (-20, 20)  # histogram of |x| from 2^-20 (1e-6) to 2^20 (1e6) ...
HIST_BINS = 160  # ... in quarter-octave bins (plus one bin for zeros and anything smaller)
KIVI_BITS = (8, 4, 2)
KIVI_LAYOUTS = ("per-channel", "per-token")
KV_KINDS = ("key", "value")
MAX_TOKENS_PER_FORWARD = 2048  # windows are batched up to this many tokens per forward
CHUNK_ELEMENTS = 1 << 18  # ~1 MB of float32 per step of the statistics (see _Accumulator)


class StatsError(ValueError):
    """Statistics that cannot be collected (no decoder layers, no tokens, bad targets); for the user."""


@dataclass
class SiteStats:
    """Finished statistics of one tensor seen during collection; channel vectors are (channels,)."""

    name: str  # "model.layers.3.self_attn.q_proj" (first reader), "model.layers.3" (residual), ".../key"
    kind: str  # activation | residual | key | value
    layer: int  # decoder layer index
    label: str  # short row label: "q_proj·k_proj·v_proj in", "residual", "key"
    consumers: tuple[str, ...]  # full names of the linears that read this tensor (activations only)
    tokens: int  # tokens seen
    absmax: Tensor  # (channels,) max |x|
    mean: Tensor  # (channels,)
    std: Tensor  # (channels,)
    kurtosis: Tensor  # (channels,) Pearson kurtosis, 3 for a Gaussian
    histogram: Tensor  # (HIST_BINS + 1,) counts of |x| between consecutive histogram_edges()
    token_absmax: Tensor  # (tokens,) max |x| over channels, per token, in collection order
    sample: Tensor  # (sample_tokens, channels) float32, first tokens of the first window
    tensor_kurtosis: float  # kurtosis of all values of the tensor together
    heads: int = 1  # key/value: KV heads (channels = heads * head_dim)

    @property
    def channels(self) -> int:
        return int(self.absmax.numel())

    @property
    def head_dim(self) -> int:
        return self.channels // self.heads


@dataclass
class Stats:
    """Everything `collect_stats` measured; read it through engine.analysis.outliers."""

    sites: list[SiteStats]
    layers: int
    hidden_size: int
    tokens: int  # tokens run through the model
    windows: int
    window: int  # tokens per window
    sample_ids: Tensor  # (sample_tokens,) ids of the sampled tokens
    input_token_max: Tensor | None  # (tokens, hidden) float16: max over layers of |linear inputs| that
    #                                 read the residual stream (q/k/v, gate/up), for LLM.int8()
    kivi_sqnr: Tensor | None  # (layers, 2 key/value, 2 layouts, len(KIVI_BITS), kv_heads) dB
    kivi_block: int = 0  # tokens per per-channel block in kivi_sqnr
    kivi_tokens: int = 0  # tokens kivi_sqnr was measured on
    seconds: float = 0.0
    targets: tuple[str, ...] = TARGETS

    def by_kind(self, kind: str) -> list[SiteStats]:
        return [site for site in self.sites if site.kind == kind]

    def site(self, name: str) -> SiteStats:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(f"no statistics for {name!r}; known sites start with {self.sites[0].name!r}")

    def nbytes(self) -> int:
        tensors = [self.sample_ids, self.input_token_max, self.kivi_sqnr]
        for site in self.sites:
            tensors += [site.absmax, site.mean, site.std, site.kurtosis]
            tensors += [site.histogram, site.token_absmax, site.sample]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class _Accumulator:
    """Running per-channel statistics of a stream of (tokens, channels) tensors.

    Speed on CPU: the work runs over row chunks of ~1 MB, so its temporaries are recycled from malloc's
    heap instead of costing fresh pages (a page fault per 4 KB, slow in VMs) for every tensor; sums over
    tokens are (1, rows) @ (rows, channels) products, which run at memory speed where `sum(0)` over a
    row-major tensor does not.
    """

    def __init__(self, sample_tokens: int) -> None:
        self.sample_tokens = sample_tokens
        self.n = 0
        self.mean = self.m2 = self.m3 = self.m4 = self.absmax = self.histogram = None
        self.token_absmax: list[Tensor] = []
        self.sample: Tensor | None = None

    def update(self, x: Tensor, sample: Tensor | None = None) -> None:
        """x: (tokens, channels); sample: (tokens, channels) rows to keep (first call only)."""
        x = x.detach().float()
        if self.sample is None and sample is not None:
            self.sample = sample.detach().float()[: self.sample_tokens].cpu().clone()
        tokens, channels = x.shape
        mean_b = (torch.ones(1, tokens, dtype=x.dtype, device=x.device) @ x)[0] / tokens  # (channels,)
        sums = torch.zeros(3, channels, dtype=torch.float64, device=x.device)  # central m2, m3, m4
        absmax_b = torch.zeros(channels, device=x.device)
        counts = torch.zeros(HIST_BINS, device=x.device)
        rows = max(1, CHUNK_ELEMENTS // channels)
        ones = torch.ones(1, rows, dtype=x.dtype, device=x.device)
        for start in range(0, tokens, rows):
            chunk = x[start : start + rows]  # (rows, channels)
            ones_c = ones[:, : chunk.shape[0]]
            d = chunk - mean_b
            d2 = d * d
            sums[0] += (ones_c @ d2)[0]
            sums[1] += (ones_c @ d.mul_(d2))[0]  # d now holds d^3
            sums[2] += (ones_c @ d2.square_())[0]  # d2 now holds d^4
            ax = torch.abs(chunk, out=d)
            torch.maximum(absmax_b, ax.amax(0), out=absmax_b)
            self.token_absmax.append(ax.amax(1).cpu())
            counts += torch.histc(ax.log2_(), HIST_BINS, *HIST_LOG2_RANGE)  # zeros -> -inf: not counted
        below = torch.tensor([x.numel()], device=x.device) - counts.sum()  # zeros and tiny values
        counts = torch.cat([below, counts]).double()
        m2_b, m3_b, m4_b = sums[0], sums[1], sums[2]
        if self.n == 0:
            self.n, self.absmax, self.histogram = tokens, absmax_b, counts
            self.mean, self.m2, self.m3, self.m4 = mean_b.double(), m2_b, m3_b, m4_b
            return
        self.absmax = torch.maximum(self.absmax, absmax_b)
        self.histogram += counts
        self._merge(tokens, mean_b.double(), m2_b, m3_b, m4_b)

    def _merge(self, nb: int, mean_b: Tensor, m2_b: Tensor, m3_b: Tensor, m4_b: Tensor) -> None:
        """Pébay (2008): combine central moments of two partitions without revisiting data."""
        na, n = self.n, self.n + nb
        delta = mean_b - self.mean
        m2_a, m3_a = self.m2, self.m3
        self.m4 = (
            self.m4
            + m4_b
            + delta**4 * na * nb * (na * na - na * nb + nb * nb) / n**3
            + 6 * delta**2 * (na * na * m2_b + nb * nb * m2_a) / n**2
            + 4 * delta * (na * m3_b - nb * m3_a) / n
        )
        self.m3 = (
            m3_a + m3_b + delta**3 * na * nb * (na - nb) / n**2 + 3 * delta * (na * m2_b - nb * m2_a) / n
        )
        self.m2 = m2_a + m2_b + delta**2 * na * nb / n
        self.mean = self.mean + delta * nb / n
        self.n = n

    def finish(self, **info) -> SiteStats:
        n = self.n
        variance = (self.m2 / n).clamp_min(0)  # (channels,)
        kurtosis = torch.where(variance > 0, (self.m4 / n) / variance**2, torch.zeros_like(variance))
        centre = self.mean.mean()
        delta = self.mean - centre  # shift every channel's moments to the tensor mean
        m2_all = (self.m2 + n * delta**2).sum()
        m4_all = (self.m4 + 4 * delta * self.m3 + 6 * delta**2 * self.m2 + n * delta**4).sum()
        total = n * delta.numel()
        tensor_kurtosis = float((m4_all / total) / (m2_all / total) ** 2) if m2_all > 0 else 0.0
        return SiteStats(
            tokens=n,
            absmax=self.absmax.cpu(),
            mean=self.mean.float().cpu(),
            std=variance.sqrt().float().cpu(),
            kurtosis=kurtosis.float().cpu(),
            histogram=self.histogram.round().long().cpu(),
            token_absmax=torch.cat(self.token_absmax),
            sample=self.sample if self.sample is not None else torch.zeros(0, self.absmax.numel()),
            tensor_kurtosis=tensor_kurtosis,
            **info,
        )


def histogram_edges() -> Tensor:
    """(HIST_BINS + 2,) bin edges of SiteStats.histogram; bin 0 holds zeros and values below 2^-20."""
    inner = torch.logspace(HIST_LOG2_RANGE[0], HIST_LOG2_RANGE[1], HIST_BINS + 1, base=2.0)
    return torch.cat([torch.zeros(1), inner])
