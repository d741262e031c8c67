"""Perplexity, and agreement with a reference model (KL divergence, top-1), over token windows.

- `perplexity` sums the negative log-likelihood of every scored token and divides once by the number of
  tokens (nanochat's `evaluate_bpb`), never averaging per-window means. A sequence longer than
  `max_length` is scored with Hugging Face's sliding-window recipe: spans of `max_length` tokens start
  every `stride` tokens, and a span scores only the tokens no earlier span scored (the rest are its
  context, label -100). The first token of a sequence is never scored (nothing predicts it); with
  stride == max_length the first token of every span goes unscored too, as in Hugging Face's guide.
- `kl_to_reference` is KL(P_ref || P_cand) of the next-token distributions in nats, per position,
  computed from float32 log-softmax in chunks of rows (the direction llama.cpp's `--kl-divergence`
  uses), plus the share of positions where both models pick the same top-1 token. Positions are those
  perplexity scores (every position but the last of each window). The same pass keeps the per-position
  values for llama.cpp's `--kl-divergence` statistics (`AgreementResult.drift`, engine.evaluation.drift).
- `evaluate_against_reference` does both in one pass per window and returns the reference's perplexity
  too. A `ReferenceCache` keeps what the reference's forward leaves behind so a grid of candidates runs
  the reference once per window (see its docstring for what it stores and why).
- `perplexity_gap` compares two models scored on the same windows, pairing them window by window so a
  gap smaller than the window-to-window noise is reported as such.

KV-cache quantization (`kv_scheme`) runs each span through a fresh `engine.runtime.kv_cache` cache in a single
forward: attention reads dequantized keys and values of every token, its own included (see that module
for where this departs from serving). Models run at batch 1 under `torch.inference_mode` on their own
device; windows move there.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from engine._types import Progress
from engine.evaluation.drift import DriftParts, DriftStats, drift_stats
from engine.hooks import forward_hooks
from engine.quant.schemes import QuantScheme
from engine.runtime.generation import max_context
from engine.runtime.kv_cache import KVCacheConfig, as_kv_config, make_kv_cache

KVSetting = QuantScheme | KVCacheConfig | None
ROWS_PER_CHUNK = 128  # log-softmax over 128 positions x 49k vocab at a time: 25 MB float32 temporaries


class EvaluationError(ValueError):
    """Windows or settings that cannot be evaluated (empty, too long, wrong vocabulary); for the user."""


@dataclass
class PerplexityResult:
    perplexity: float  # exp(nll_sum / token_count)
    nll_sum: float  # nats, summed over every scored token
    token_count: int  # tokens scored (each predicted from at least one earlier token)
    seconds: float  # wall time of this model's forwards and scoring
    window_nll: list[float] = field(default_factory=list)  # NLL sum (nats) of each input sequence
    window_tokens: list[int] = field(default_factory=list)  # tokens scored in each input sequence

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.token_count


@dataclass
class AgreementResult:
    mean_kl: float  # nats per position: KL(P_ref || P_cand) summed over positions, divided once
    max_kl: float  # the worst single position
    top1_agreement: float  # share of positions where both models rank the same token first
    token_count: int  # positions compared
    seconds: float  # wall time of the whole comparison (both models, scoring)
    window_kl: list[float] = field(default_factory=list)  # mean KL of each window
    drift: DriftStats | None = None  # llama.cpp's --kl-divergence statistics (engine.evaluation.drift)


@dataclass
class ComparisonResult:
    candidate: PerplexityResult  # seconds: the candidate's forwards only
    reference: PerplexityResult  # seconds: the reference's forwards, or its head alone when cached
    agreement: AgreementResult


@dataclass(frozen=True)
class PerplexityGap:
    """How far apart two models' perplexities on the same windows are, and whether the windows tell."""

    relative: float  # perplexity(a) / perplexity(b) - 1, over all windows
    spread: float | None  # standard error of that gap from the per-window differences; None: one window
    windows: int

    @property
    def resolved(self) -> bool:
        """True when the gap is more than twice its standard error (never with a single window)."""
        return self.spread is not None and abs(self.relative) > 2 * self.spread


def perplexity_gap(a: PerplexityResult, b: PerplexityResult) -> PerplexityGap:
    """a against b, paired window by window (both must have scored the same windows): the per-window
    differences of mean NLL give the standard error, so two methods whose gap is smaller than the
    window-to-window noise are reported as such. EvaluationError for different windows."""
    if a.window_tokens != b.window_tokens or not a.window_tokens:
        raise EvaluationError(
            "these two perplexities were scored on different windows; score both on the same"
        )
    diffs = [(na - nb) / t for na, nb, t in zip(a.window_nll, b.window_nll, a.window_tokens, strict=True)]
    relative = math.exp((a.nll_sum - b.nll_sum) / a.token_count) - 1
    if len(diffs) < 2:
        return PerplexityGap(relative, None, len(diffs))
    mean = math.fsum(diffs) / len(diffs)
    variance = math.fsum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return PerplexityGap(relative, math.expm1(math.sqrt(variance / len(diffs))), len(diffs))


def _perplexity_result(nll: list[float], tokens: list[int], seconds: float) -> PerplexityResult:
    nll_sum, count = math.fsum(nll), sum(tokens)
    return PerplexityResult(math.exp(nll_sum / count), nll_sum, count, seconds, nll, tokens)


# -- inputs ------------------------------------------------------------------------------------------


def sequences(windows: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """1-D int64 CPU token tensors from a (n, tokens) tensor, one (tokens,) tensor, or a list of them."""
    if isinstance(windows, Tensor):
        if windows.dim() == 1:
            rows = [windows]
        elif windows.dim() == 2:
            rows = list(windows)
        else:
            raise EvaluationError(f"windows must be (n_windows, tokens); got shape {tuple(windows.shape)}")
    else:
        rows = [torch.as_tensor(w).reshape(-1) for w in windows]
    if not rows:
        raise EvaluationError("No windows to evaluate: the text produced no tokens.")
    for i, row in enumerate(rows):
        if row.dtype.is_floating_point or row.dtype == torch.bool:
            raise EvaluationError(f"window {i} holds {row.dtype} values; token ids must be integers")
        if row.numel() < 2:
            raise EvaluationError(
                f"window {i} has {row.numel()} token(s); scoring needs at least 2 (one to predict from)"
            )
    return [row.long().cpu() for row in rows]


def _check_vocab(model, rows: list[Tensor]) -> None:
    embeddings = model.get_input_embeddings()
    vocab = getattr(embeddings, "num_embeddings", None)
    biggest = max(int(row.max()) for row in rows)
    smallest = min(int(row.min()) for row in rows)
    if smallest < 0 or (vocab is not None and biggest >= vocab):
        raise EvaluationError(
            f"token ids run from {smallest} to {biggest} but the model's vocabulary has {vocab} entries; "
            "were the windows made with another model's tokenizer?"
        )


def _check_fits(model, length: int, what: str) -> None:
    limit = max_context(model)
    if limit is not None and length > limit:
        raise EvaluationError(
            f"{what} is {length} tokens but the model's context is {limit}; use shorter windows "
            "(or, for perplexity, a max_length within the context and a stride)"
        )


def spans(length: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Hugging Face's sliding windows: (begin, end, new tokens) with every token in exactly one span's tail."""
    result, previous_end = [], 0
    for begin in range(0, length, stride):
        end = min(begin + max_length, length)
        result.append((begin, end, end - previous_end))
        previous_end = end
        if end == length:
            break
    return result


# -- model calls -------------------------------------------------------------------------------------


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _accepts_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _forward(model, ids: Tensor, keep: int, kv: KVCacheConfig | None) -> Tensor:
    """Logits (keep, vocab) of the last `keep` positions of one (tokens,) sequence."""
    kwargs: dict = {"use_cache": False}
    if kv is not None:
        kwargs = {"use_cache": True, "past_key_values": make_kv_cache(model.config, kv)}
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = keep
    logits = model(input_ids=ids.to(_device_of(model)).unsqueeze(0), **kwargs).logits[0]  # (<=tokens, vocab)
    return logits[-keep:]


def _nll_sum(logits: Tensor, labels: Tensor) -> float:
    """Sum of -log p(label) over rows of (rows, vocab) logits, float32 log-softmax in row chunks."""
    labels = labels.to(logits.device)
    total = 0.0
    for start in range(0, logits.shape[0], ROWS_PER_CHUNK):
        part = slice(start, start + ROWS_PER_CHUNK)
        total += float(F.cross_entropy(logits[part].float(), labels[part], reduction="sum").double())
    return total


# -- perplexity --------------------------------------------------------------------------------------


@torch.inference_mode()
def perplexity(
    model,
    windows: Tensor | Sequence[Tensor],
    stride: int | None = None,
    max_length: int | None = None,
    kv_scheme: KVSetting = None,
    progress: Progress | None = None,
) -> PerplexityResult:
    """Perplexity of `model` over token windows; sequences longer than max_length slide by `stride`.

    max_length defaults to the longest sequence (each scored in one forward); stride defaults to
    max_length. `kv_scheme` quantizes the KV cache (a QuantScheme, or a KVCacheConfig for KIVI keys).
    """
    rows = sequences(windows)
    _check_vocab(model, rows)
    longest = max(row.numel() for row in rows)
    max_length = longest if max_length is None else max_length
    if max_length < 2:
        raise EvaluationError(f"max_length must be at least 2 tokens (got {max_length})")
    _check_fits(model, max_length, "A window" if max_length == longest else "max_length")
    stride = max_length if stride is None else stride
    if not 1 <= stride <= max_length:
        raise EvaluationError(
            f"stride must be between 1 and max_length {max_length} (got {stride}); a larger stride "
            "would skip tokens"
        )
    kv = None if kv_scheme is None else as_kv_config(kv_scheme)
    plan = [spans(row.numel(), max_length, stride) for row in rows]
    total_calls, calls = sum(len(p) for p in plan), 0
    start = time.perf_counter()
    window_nll, window_tokens = [], []
    for row, row_spans in zip(rows, plan, strict=True):
        nll, scored = 0.0, 0
        for begin, end, new in row_spans:
            if progress:
                progress(calls / total_calls, f"Forward {calls + 1} of {total_calls}")
            ids = row[begin:end]
            first_scored = max(ids.numel() - new, 1)  # position 0 of a span has no context
            count = ids.numel() - first_scored
            if count > 0:
                logits = _forward(model, ids, count + 1, kv)[
                    :-1
                ]  # (count, vocab): predict ids[first_scored:]
                nll += _nll_sum(logits, ids[first_scored:])
                scored += count
            calls += 1
        window_nll.append(nll)
        window_tokens.append(scored)
    if progress:
        progress(1.0, "Perplexity done")
    return _perplexity_result(window_nll, window_tokens, time.perf_counter() - start)


# -- agreement with a reference ----------------------------------------------------------------------


class ReferenceCache:
    """The reference model's per-window leftovers, so many candidates need one reference forward per window.

    Exact KL needs the reference's whole next-token distribution at every position, and its logits are
    big: 512 positions x 49,152 tokens in float32 is 96 MiB per window (768 MiB for 8 windows). Halving
    that is not free: bfloat16 logits add ~2.5e-4 nats of KL by themselves (measured on SmolLM2-135M: an
    int8 KV cache's KL of 3.9e-4 reads 6.3e-4); float16 log-probs stay accurate but take 48 MiB a window.
    The cache keeps instead the input of the reference's output embedding (the last hidden state, after
    the final norm): (tokens - 1, hidden) per window, 1.1 MiB for 512 tokens of SmolLM2-135M's 576
    channels (18 MiB for 16 windows), and recomputes exact logits with the reference's own head, 128 rows
    at a time: a fraction of the forward it saves (timings in docs/benchmarks.md).

    On the first window the recomputed logits are checked against the forward's. A model that changes
    logits after its head (Gemma-2's soft-capping, Cohere's logit scale), or has no output-embedding
    module, fails the check and the cache keeps its logits instead (exact, 96 MiB per window as above).
    A cache belongs to one reference model and one list of windows; it is not thread-safe.
    """

    def __init__(self) -> None:
        self.windows: list[Tensor] = []  # (tokens,) ids of each window cached, in order
        self.stored: list[Tensor] = []  # (tokens - 1, hidden) head inputs, or (tokens - 1, vocab) logits
        self.store_logits: bool | None = None  # decided on the first window
        self.reference_id: int | None = None  # id() of the model the cache was built with

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.stored)

    def check(self, reference, rows: list[Tensor]) -> None:
        """Raise EvaluationError if this cache was built for another model or other windows."""
        if self.reference_id is not None and self.reference_id != id(reference):
            raise EvaluationError(
                "This reference cache was built with another reference model; make a new one."
            )
        for index, (seen, row) in enumerate(zip(self.windows, rows, strict=False)):  # a prefix may be cached
            if not torch.equal(seen, row):
                raise EvaluationError(
                    f"Window {index} differs from the one this reference cache holds; make a new "
                    "ReferenceCache for new text or window settings."
                )

    def reference_rows(self, reference, index: int, row: Tensor, keep: bool) -> Callable[[slice], Tensor]:
        """A function from a row slice to the reference's logits (rows, vocab) at those positions."""
        head = reference.get_output_embeddings()
        if index < len(self.stored):
            stored = self.stored[index]
            return (lambda part: stored[part]) if self.store_logits else (lambda part: head(stored[part]))
        captured: list[Tensor] = []
        capture = [] if head is None else [(head, lambda module, inputs, output: captured.append(inputs[0]))]
        with forward_hooks(capture):
            logits = _forward(reference, row, row.numel(), None)[:-1]  # (tokens - 1, vocab)
        if keep:
            hidden = captured[-1][0, : row.numel() - 1].clone() if captured else None  # (tokens - 1, hidden)
            if self.store_logits is None:
                self.store_logits = hidden is None or not _head_reproduces(head, hidden, logits)
            self.stored.append(logits if self.store_logits else hidden)
            self.windows.append(row)
            self.reference_id = id(reference)
        return lambda part: logits[part]


def _head_reproduces(head, hidden: Tensor, logits: Tensor, rows: int = 16) -> bool:
    """Whether head(hidden) gives the model's logits (within 1% of their range) on the first rows."""
    if hidden.shape[0] != logits.shape[0]:
        return False
    recomputed = head(hidden[:rows]).float()
    expected = logits[:rows].float()
    if recomputed.shape != expected.shape:
        return False
    tolerance = 1e-2 * float(expected.abs().max()) + 1e-6
    return float((recomputed - expected).abs().max()) <= tolerance


@dataclass
class _Tally:
    """Running sums over the positions of one window."""

    kl_sum: float = 0.0
    kl_max: float = 0.0
    agree: int = 0
    candidate_nll: float = 0.0
    reference_nll: float = 0.0
    drift: DriftParts = field(default_factory=DriftParts)  # the per-position values, kept


def _compare_rows(ref_logits: Tensor, cand_logits: Tensor, labels: Tensor, tally: _Tally) -> None:
    """Add one chunk of (rows, vocab) logits of both models to the tally."""
    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)  # (rows, vocab)
    cand_logp = torch.log_softmax(cand_logits.float().to(ref_logp.device), dim=-1)
    kl = torch.sum(ref_logp.exp() * (ref_logp - cand_logp), dim=-1)  # (rows,)
    labels = labels.to(ref_logp.device).unsqueeze(1)  # (rows, 1)
    tally.kl_sum += float(kl.double().sum())
    tally.kl_max = max(tally.kl_max, float(kl.max()))
    same = ref_logp.argmax(-1) == cand_logp.argmax(-1)
    cand_label, ref_label = cand_logp.gather(1, labels)[:, 0], ref_logp.gather(1, labels)[:, 0]
    tally.agree += int(same.sum())
    tally.candidate_nll -= float(cand_label.double().sum())
    tally.reference_nll -= float(ref_label.double().sum())
    tally.drift.add(kl, ref_label, cand_label, same)


@torch.inference_mode()
def evaluate_against_reference(
    reference,
    candidate,
    windows: Tensor | Sequence[Tensor],
    reference_cache: ReferenceCache | None = None,
    kv_scheme: KVSetting = None,
    progress: Progress | None = None,
) -> ComparisonResult:
    """Candidate perplexity, reference perplexity and KL / top-1 agreement, one pass per window.

    Each window is scored whole (it must fit the context). With a `reference_cache`, the reference's
    forward runs only for windows the cache has not seen; `kv_scheme` applies to the candidate only.
    """
    rows = sequences(windows)
    _check_vocab(candidate, rows)
    _check_fits(candidate, max(row.numel() for row in rows), "A window")
    kv = None if kv_scheme is None else as_kv_config(kv_scheme)
    cache = reference_cache if reference_cache is not None else ReferenceCache()
    cache.check(reference, rows)
    start = time.perf_counter()
    reference_seconds = candidate_seconds = 0.0
    tallies: list[_Tally] = []
    for index, row in enumerate(rows):
        if progress:
            progress(index / len(rows), f"Window {index + 1} of {len(rows)}")
        began = time.perf_counter()
        ref_rows = cache.reference_rows(reference, index, row, keep=reference_cache is not None)
        reference_seconds += time.perf_counter() - began
        began = time.perf_counter()
        cand_logits = _forward(candidate, row, row.numel(), kv)[:-1]  # (tokens - 1, vocab)
        candidate_seconds += time.perf_counter() - began
        tally, labels = _Tally(), row[1:]
        for begin in range(0, labels.numel(), ROWS_PER_CHUNK):
            part = slice(begin, begin + ROWS_PER_CHUNK)
            began = time.perf_counter()
            ref_logits = ref_rows(part)  # cached: the reference's head on stored hidden states
            reference_seconds += time.perf_counter() - began
            _compare_rows(ref_logits, cand_logits[part], labels[part], tally)
        tallies.append(tally)
    if progress:
        progress(1.0, "Comparison done")
    tokens = [row.numel() - 1 for row in rows]
    count = sum(tokens)
    agreement = AgreementResult(
        mean_kl=math.fsum(t.kl_sum for t in tallies) / count,
        max_kl=max(t.kl_max for t in tallies),
        top1_agreement=sum(t.agree for t in tallies) / count,
        token_count=count,
        seconds=time.perf_counter() - start,
        window_kl=[t.kl_sum / n for t, n in zip(tallies, tokens, strict=True)],
        drift=drift_stats(DriftParts.join([t.drift for t in tallies])),
    )
    return ComparisonResult(
        candidate=_perplexity_result([t.candidate_nll for t in tallies], tokens, candidate_seconds),
        reference=_perplexity_result([t.reference_nll for t in tallies], tokens, reference_seconds),
        agreement=agreement,
    )


def kl_to_reference(
    reference, candidate, windows: Tensor | Sequence[Tensor], progress: Progress | None = None
) -> AgreementResult:
    """KL(P_ref || P_cand) per position (mean and max, nats) and top-1 agreement over the windows."""
    return evaluate_against_reference(reference, candidate, windows, progress=progress).agreement
