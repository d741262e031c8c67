"""Drift statistics of a candidate against its reference, as llama.cpp's `perplexity --kl-divergence` prints them.

`evaluate_against_reference` (engine.evaluation.perplexity) already computes, at every scored position, the
KL divergence KL(P_ref || P_cand) of the two next-token distributions, both models' log-probability of the
actual next token, and both argmaxes. `DriftParts` keeps those per-position values (float32 / bool, four
numbers a position: 1k positions of a 4 x 256 evaluation take 13 kB) instead of only summing them, and
`drift_stats` turns them into `DriftStats`: the numbers llama.cpp prints at the end of a KL run, named and
defined as in ggml-org/llama.cpp, tools/perplexity/perplexity.cpp (`kl_divergence`):

- "Mean PPL(Q)/PPL(base)" and "Mean ln(PPL(Q)/PPL(base))": the log of the ratio is the difference of the
  two mean negative log-likelihoods; its uncertainty combines both standard errors and their covariance,
  the ratio's is the ratio times it. "Cor(ln(PPL(Q)), ln(PPL(base)))": that covariance over the product of
  the two standard errors.
- "KLD": mean ± standard error, maximum, 99.9 / 99 / 95 / 90 % percentiles, median, 10 / 5 / 1 / 0.1 %,
  minimum, over positions.
- "Δp" = p_Q(next token) - p_base(next token) per position (a probability difference; llama.cpp prints it
  in percent, the fields here are fractions: 0.01 is 1%): mean ± standard error, maximum (the largest
  signed value, as llama.cpp's sorted list gives it), 99.9 / 99 / 95 / 90 / 75 %, median, 25 / 10 / 5 / 1
  / 0.1 %, minimum, and "RMS Δp" = sqrt(mean Δp²) ± its uncertainty.
- "Same top p": the share of positions where both models' most likely token is the same (top-1
  agreement) ± sqrt(p (1 - p) / (n - 1)).

Standard errors are llama.cpp's: sqrt((mean(x²) - mean(x)²) / (n - 1)), the standard error of the mean.
Percentiles are llama.cpp's rule: sort, index = fraction x (n - 1) in float32, interpolate linearly between
the two neighbouring values; the median is the middle value, or the mean of the two middle ones.

Where we depart from llama.cpp: (1) every position of every window is scored (llama.cpp scores only the
second half of each chunk, so each token has at least half a context behind it); (2) the reference's
distribution is exact float32 (llama.cpp stores it as 16-bit log-probabilities and drops tokens below
e⁻¹⁶ from the KL sum); (3) with 10 positions or fewer an uncertainty is NaN (llama.cpp prints 0, meaning
"not estimated"), and llama.cpp prints no final statistics under 100 positions while we always compute
them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

MIN_FOR_UNCERTAINTY = 11  # llama.cpp estimates a standard error from more than 10 values only


@dataclass(frozen=True, eq=False)
class TokenDrift:
    """Per-position values of one comparison, in window order (CPU tensors of shape (positions,))."""

    kl: Tensor  # float32, nats: KL(P_ref || P_cand) of the next-token distributions
    reference_logp: Tensor  # float32: ln p_ref(actual next token)
    candidate_logp: Tensor  # float32: ln p_cand(actual next token)
    same_top: Tensor  # bool: both models' argmax is the same token

    def __len__(self) -> int:
        return int(self.kl.numel())

    @property
    def p_diff(self) -> Tensor:
        """Δp per position: p_cand(next token) - p_ref(next token), float32 (llama.cpp's p_diff)."""
        return self.candidate_logp.exp() - self.reference_logp.exp()


class DriftParts:
    """Collects `TokenDrift` chunk by chunk during the comparison pass (copies to CPU float32)."""

    def __init__(self) -> None:
        self._chunks: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    def add(self, kl: Tensor, reference_logp: Tensor, candidate_logp: Tensor, same_top: Tensor) -> None:
        """One chunk's (rows,) values."""
        kept = (t.detach().reshape(-1) for t in (kl, reference_logp, candidate_logp, same_top))
        self._chunks.append(
            tuple(t.cpu() if t.dtype == torch.bool else t.to("cpu", torch.float32) for t in kept)
        )

    @staticmethod
    def join(parts: list[DriftParts]) -> TokenDrift:
        """All chunks of all parts, in order."""
        chunks = [chunk for part in parts for chunk in part._chunks]
        if not chunks:
            empty = torch.empty(0)
            return TokenDrift(empty, empty, empty, torch.empty(0, dtype=torch.bool))
        return TokenDrift(*(torch.cat(column) for column in zip(*chunks, strict=True)))


@dataclass(frozen=True)
class DriftStats:
    """llama.cpp's `--kl-divergence` summary (see the module docstring); probabilities as fractions."""

    positions: int
    ppl_ratio: float  # Mean PPL(Q)/PPL(base)
    ppl_ratio_unc: float
    ln_ppl_ratio: float  # Mean ln(PPL(Q)/PPL(base))
    ln_ppl_ratio_unc: float
    ln_ppl_correlation: float  # Cor(ln(PPL(Q)), ln(PPL(base))), -1..1 (llama.cpp prints it in percent)
    kl_mean: float  # nats
    kl_mean_unc: float
    kl_max: float
    kl_p999: float
    kl_p99: float
    kl_p95: float
    kl_p90: float
    kl_median: float
    kl_p10: float
    kl_p5: float
    kl_p1: float
    kl_p01: float
    kl_min: float
    p_diff_mean: float  # Δp, fractions of probability
    p_diff_mean_unc: float
    p_diff_max: float
    p_diff_p999: float
    p_diff_p99: float
    p_diff_p95: float
    p_diff_p90: float
    p_diff_p75: float
    p_diff_median: float
    p_diff_p25: float
    p_diff_p10: float
    p_diff_p5: float
    p_diff_p1: float
    p_diff_p01: float
    p_diff_min: float
    p_diff_rms: float  # RMS Δp
    p_diff_rms_unc: float
    same_top: float  # Same top p
    same_top_unc: float
    per_token: TokenDrift | None = field(default=None, compare=False, repr=False)  # for histograms

    def lines(self) -> list[str]:
        """The statistics as llama.cpp prints them (its labels; Δp and same top p in percent)."""
        pct = 100.0
        out = [
            f"Mean PPL(Q)/PPL(base)         : {self.ppl_ratio:10.6f} ± {self.ppl_ratio_unc:10.6f}",
            f"Mean ln(PPL(Q)/PPL(base))     : {self.ln_ppl_ratio:10.6f} ± {self.ln_ppl_ratio_unc:10.6f}",
            f"Cor(ln(PPL(Q)), ln(PPL(base))): {pct * self.ln_ppl_correlation:6.2f}%",
            f"Mean    KLD: {self.kl_mean:10.6f} ± {self.kl_mean_unc:10.6f}",
            f"Maximum KLD: {self.kl_max:10.6f}",
        ]
        for label, name in KL_PERCENTILES:
            out.append(f"{label:<8}KLD: {getattr(self, name):10.6f}")
        out += [f"Minimum KLD: {self.kl_min:10.6f}", ""]
        out += [
            f"Mean    Δp: {pct * self.p_diff_mean:6.3f} ± {pct * self.p_diff_mean_unc:5.3f} %",
            f"Maximum Δp: {pct * self.p_diff_max:6.3f}%",
        ]
        for label, name in P_DIFF_PERCENTILES:
            out.append(f"{label:<8}Δp: {pct * getattr(self, name):6.3f}%")
        out += [
            f"Minimum Δp: {pct * self.p_diff_min:6.3f}%",
            f"RMS Δp    : {pct * self.p_diff_rms:6.3f} ± {pct * self.p_diff_rms_unc:5.3f} %",
            f"Same top p: {pct * self.same_top:6.3f} ± {pct * self.same_top_unc:5.3f} %",
        ]
        return out


# (label as llama.cpp prints it, DriftStats field, fraction); "Median" uses the middle-value rule instead
KL_LEVELS = (("99.9%", "kl_p999", 0.999), ("99.0%", "kl_p99", 0.99), ("95.0%", "kl_p95", 0.95),
             ("90.0%", "kl_p90", 0.90), ("Median", "kl_median", None), ("10.0%", "kl_p10", 0.10),
             (" 5.0%", "kl_p5", 0.05), (" 1.0%", "kl_p1", 0.01), (" 0.1%", "kl_p01", 0.001))  # fmt: skip
P_DIFF_LEVELS = (("99.9%", "p_diff_p999", 0.999), ("99.0%", "p_diff_p99", 0.99), ("95.0%", "p_diff_p95", 0.95),
                 ("90.0%", "p_diff_p90", 0.90), ("75.0%", "p_diff_p75", 0.75), ("Median", "p_diff_median", None),
                 ("25.0%", "p_diff_p25", 0.25), ("10.0%", "p_diff_p10", 0.10), (" 5.0%", "p_diff_p5", 0.05),
                 (" 1.0%", "p_diff_p1", 0.01), (" 0.1%", "p_diff_p01", 0.001))  # fmt: skip
KL_PERCENTILES = tuple((label, name) for label, name, _ in KL_LEVELS)
P_DIFF_PERCENTILES = tuple((label, name) for label, name, _ in P_DIFF_LEVELS)


def percentile(ordered: Tensor, fraction: float) -> float:
    """llama.cpp's percentile of ascending float32 values: index fraction x (n - 1) computed in float32,
    linear interpolation between its two neighbours; the ends for fractions outside (0, 1)."""
    if fraction <= 0:
        return float(ordered[0])
    if fraction >= 1:
        return float(ordered[-1])
    position = torch.tensor(fraction, dtype=torch.float32) * (ordered.numel() - 1)  # float32, as in C
    index = int(position)
    weight = position - index
    upper = ordered[min(index + 1, ordered.numel() - 1)]
    return float((1 - weight) * ordered[index] + weight * upper)


def median(ordered: Tensor) -> float:
    """The middle value, or the mean of the two middle ones (llama.cpp's median)."""
    n = ordered.numel()
    if n % 2:
        return float(ordered[n // 2])
    return float(0.5 * (ordered[n // 2] + ordered[n // 2 - 1]))


def mean_and_uncertainty(values: Tensor) -> tuple[float, float]:
    """Mean and its standard error sqrt((mean(x²) - mean(x)²) / (n - 1)); NaN error below 11 values."""
    x = values.double()
    n = x.numel()
    mean = float(x.mean())
    if n < MIN_FOR_UNCERTAINTY:
        return mean, math.nan
    variance = float((x * x).mean()) - mean * mean
    return mean, math.sqrt(variance / (n - 1)) if variance > 0 else 0.0


def _levels(ordered: Tensor, levels) -> dict[str, float]:
    return {name: median(ordered) if f is None else percentile(ordered, f) for _, name, f in levels}


def drift_stats(tokens: TokenDrift) -> DriftStats:
    """llama.cpp's summary of the per-position values (at least one position)."""
    n = len(tokens)
    if n == 0:
        raise ValueError("drift statistics need at least one scored position")
    nll, nll_base = -tokens.candidate_logp.double(), -tokens.reference_logp.double()
    log_ppl, log_ppl_se = mean_and_uncertainty(nll)
    log_base, log_base_se = mean_and_uncertainty(nll_base)
    covariance = math.nan
    if n >= MIN_FOR_UNCERTAINTY:  # llama.cpp: mean(ab) - mean(a) mean(b), over n - 1
        covariance = (float((nll * nll_base).mean()) - log_ppl * log_base) / (n - 1)
    ln_ratio = log_ppl - log_base
    ln_ratio_unc = math.sqrt(max(log_ppl_se**2 + log_base_se**2 - 2 * covariance, 0.0))
    if math.isnan(covariance):
        ln_ratio_unc = math.nan
    spread = log_ppl_se * log_base_se
    correlation = covariance / spread if spread > 0 else math.nan
    kl_sorted = torch.sort(tokens.kl).values
    kl_mean, kl_unc = mean_and_uncertainty(tokens.kl)
    p_diff = tokens.p_diff
    p_sorted = torch.sort(p_diff).values
    p_mean, p_unc = mean_and_uncertainty(p_diff)
    squared = p_diff.double() ** 2
    mse, mse_unc = mean_and_uncertainty(squared)
    rms = math.sqrt(mse)
    rms_unc = 0.5 * mse_unc / rms if rms > 0 else (math.nan if math.isnan(mse_unc) else 0.0)
    same = float(tokens.same_top.double().mean())
    same_unc = math.sqrt(same * (1 - same) / (n - 1)) if n > 1 else math.nan
    return DriftStats(
        positions=n,
        ppl_ratio=math.exp(ln_ratio),
        ppl_ratio_unc=math.exp(ln_ratio) * ln_ratio_unc,
        ln_ppl_ratio=ln_ratio,
        ln_ppl_ratio_unc=ln_ratio_unc,
        ln_ppl_correlation=correlation,
        kl_mean=kl_mean,
        kl_mean_unc=kl_unc,
        kl_max=float(kl_sorted[-1]),
        kl_min=float(kl_sorted[0]),
        **_levels(kl_sorted, KL_LEVELS),
        p_diff_mean=p_mean,
        p_diff_mean_unc=p_unc,
        p_diff_max=float(p_sorted[-1]),
        p_diff_min=float(p_sorted[0]),
        **_levels(p_sorted, P_DIFF_LEVELS),
        p_diff_rms=rms,
        p_diff_rms_unc=rms_unc,
        same_top=same,
        same_top_unc=same_unc,
        per_token=tokens,
    )
