"""Cached engine calls for the Outliers page's "where the outliers come from" tabs: massive activations,
super weights, and the ablation and protection experiments on them.

The scans (`massive_activations`, `find_super_weights`) run on the page's token windows (the ones its
statistics were collected on) and report progress, so they run outside `st.cache_*` and their small results
live in a process-wide LRU keyed by the page's `StatsKey` (model, corpus, windows, tokens per window), shared
by every session like the statistics themselves. The experiments score copies of the model on held-out
windows of the same text; their tables and the reference cache (one reference forward per window for every
variant; not thread-safe) belong to one session, in `OriginSession`, and start empty when the model or the
page's text changes (the pattern of ui/cache/planner.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import streamlit as st
from torch import Tensor

from engine.analysis.massive import MassiveActivations, massive_activations
from engine.analysis.super_weights import (
    SuperWeightCandidate,
    VariantTable,
    WeightCoordinate,
    compare_ablations,
    find_super_weights,
    protect,
)
from engine.evaluation.perplexity import ReferenceCache
from engine.models.data import WindowSpec, load_text, token_windows
from engine.quant.weight_formats import Format
from ui.cache.models import load
from ui.cache.outliers import StatsKey
from ui.cache.registry import LruRegistry
from ui.progress import progress_bar

SCANS_KEPT = 8  # scan results kept process-wide (a few hundred kB each)
HELD_OUT_WINDOWS = 4  # at most this many held-out windows score the experiments (the Evaluate page's default)
SESSION = "outliers_origin_session"  # session key: OriginSession


class Protection(NamedTuple):
    """One choice of the protect experiment: the rounding and where it applies."""

    label: str  # in the UI's words
    scheme: Format
    all_linears: bool  # every linear but the head, else only the tensors holding the super weights


@st.cache_resource
def _registry() -> LruRegistry:
    return LruRegistry(SCANS_KEPT)


def calibration_windows(key: StatsKey, text: str | None) -> Tensor:
    """The page's windows: the ones its statistics were collected on (`ui.cache.outliers._collect`)."""
    loaded = load(key.source, key.device, key.dtype)
    text = load_text(key.corpus) if text is None else text
    return token_windows(loaded.tokenizer, text, WindowSpec(window=key.window, count=key.windows))


def held_out_windows(key: StatsKey, text: str | None) -> Tensor:
    """Up to HELD_OUT_WINDOWS windows of the text's held-out half, as long as the page's windows."""
    loaded = load(key.source, key.device, key.dtype)
    text = load_text(key.corpus) if text is None else text
    count = min(key.windows, HELD_OUT_WINDOWS)
    return token_windows(loaded.tokenizer, text, WindowSpec(key.window, count, split="evaluation"))


def held_out_count(key: StatsKey) -> int:
    return min(key.windows, HELD_OUT_WINDOWS)


def _run(registry_key: tuple, compute, where) -> object:
    update, clear = progress_bar(where)
    try:
        return _registry().get_or_create(registry_key, lambda: compute(update))
    finally:
        clear()


def massive(key: StatsKey) -> MassiveActivations | None:
    """Massive activations already found for `key` (in any session), else None."""
    return _registry().get(("massive", key))


def find_massive(key: StatsKey, text: str | None, where=st) -> MassiveActivations:
    """Run the scan with a progress bar (ValueError / DataError with the reason)."""
    model = load(key.source, key.device, key.dtype).model
    return _run(
        ("massive", key),
        lambda update: massive_activations(model, calibration_windows(key, text), update),
        where,
    )


def super_weights(key: StatsKey) -> list[SuperWeightCandidate] | None:
    """Super-weight candidates already found for `key` (in any session; may be empty), else None."""
    return _registry().get(("super", key))


def find_super(key: StatsKey, text: str | None, where=st) -> list[SuperWeightCandidate]:
    """Run the scan with a progress bar (ValueError / DataError with the reason)."""
    model = load(key.source, key.device, key.dtype).model
    return _run(
        ("super", key),
        lambda update: find_super_weights(model, calibration_windows(key, text), progress=update),
        where,
    )


@dataclass
class OriginSession:
    """One session's experiments for one model and one text; keyed by the weights they touch."""

    key: StatsKey  # the page's model and text these results belong to
    reference: ReferenceCache = field(default_factory=ReferenceCache)
    ablations: dict[tuple[WeightCoordinate, ...], VariantTable] = field(default_factory=dict)
    protections: dict[tuple[tuple[WeightCoordinate, ...], Protection], VariantTable] = field(
        default_factory=dict
    )


def session(key: StatsKey) -> OriginSession:
    current = st.session_state.get(SESSION)
    if current is None or current.key != key:
        current = st.session_state[SESSION] = OriginSession(key)
    return current


def _reference(held: OriginSession, model) -> ReferenceCache:
    """The session's reference cache, new when the model was loaded again (evicted, then reloaded)."""
    if held.reference.reference_id not in (None, id(model)):
        held.reference = ReferenceCache()
    return held.reference


def ablation(key: StatsKey, coordinates: tuple[WeightCoordinate, ...]) -> VariantTable | None:
    return session(key).ablations.get(coordinates)


def _scored(key: StatsKey, text: str | None, experiment, where) -> VariantTable:
    """`experiment(model, windows, tokenizer, reference_cache, progress)` on the held-out windows of the
    page's text, with a progress bar and this session's reference cache."""
    held = session(key)
    loaded = load(key.source, key.device, key.dtype)
    windows = held_out_windows(key, text)
    update, clear = progress_bar(where)
    try:
        return experiment(loaded.model, windows, loaded.tokenizer, _reference(held, loaded.model), update)
    finally:
        clear()


def run_ablation(
    key: StatsKey, text: str | None, coordinates: tuple[WeightCoordinate, ...], top_k: int, where=st
) -> VariantTable:
    """Zero them vs random weights of the same size vs the largest others, with a progress bar."""

    def experiment(model, windows, tokenizer, reference, update):
        return compare_ablations(
            model, coordinates, windows, tokenizer, top_k=top_k, reference_cache=reference, progress=update
        )

    table = session(key).ablations[coordinates] = _scored(key, text, experiment, where)
    return table


def protection(
    key: StatsKey, coordinates: tuple[WeightCoordinate, ...], choice: Protection
) -> VariantTable | None:
    return session(key).protections.get((coordinates, choice))


def run_protection(
    key: StatsKey, text: str | None, coordinates: tuple[WeightCoordinate, ...], choice: Protection, where=st
) -> VariantTable:
    """Round with and without the weights kept in 16-bit, with a progress bar."""

    def experiment(model, windows, tokenizer, reference, update):
        return protect(
            model,
            choice.scheme,
            coordinates,
            windows,
            choice.all_linears,
            tokenizer,
            reference_cache=reference,
            progress=update,
        )

    table = session(key).protections[(coordinates, choice)] = _scored(key, text, experiment, where)
    return table
