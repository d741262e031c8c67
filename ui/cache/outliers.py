"""Cached engine calls for the Outliers page (DESIGN rule 3).

Collecting statistics reports progress, so it runs outside any `st.cache_*` function, in a background job
(`ui.jobs`, `collect_in`) that other clicks leave running, and its results live in a small process-wide
LRU keyed by (model, corpus, windows, tokens per window), the pattern `ui.cache.load` uses for models. A `Stats` is a few tens of MB and is never mutated, so every session
shares it. Weight statistics depend on the model only (`st.cache_resource`). Sensitivity depends on the
sidebar scheme too and is small (`st.cache_data`, keyed by StatsKey and scheme; the Stats itself is an
unhashed `_stats` argument).
"""

from __future__ import annotations

from typing import NamedTuple

import streamlit as st

from engine.analysis import outliers
from engine.analysis.stats import Stats, collect_stats
from engine.models.data import WindowSpec, load_text, text_fingerprint, token_windows
from engine.models.sources import ModelSource
from engine.quant.gguf import GGUFType
from engine.quant.weight_formats import Format
from ui import state
from ui.cache.models import load
from ui.cache.registry import LruRegistry
from ui.jobs import Job

FORMAT_HASH = {GGUFType: lambda t: t.name}  # a GGUF type is its name (its codec functions need no hash)

STATS_KEPT = 4  # collections kept in memory at once (~40 MB each for a 135M model)


class StatsKey(NamedTuple):
    source: ModelSource
    device: str
    dtype: str
    corpus: str  # a name from engine.models.data.CORPORA, or "upload:<fingerprint>"
    windows: int
    window: int  # tokens per window


def stats_key(corpus: str, windows: int, window: int, text: str | None = None) -> StatsKey:
    """The key for the sidebar's model; uploads are keyed by a fingerprint of their text."""
    name = f"upload:{text_fingerprint(text)}" if text is not None else corpus
    return StatsKey(*state.selection(), name, int(windows), int(window))


@st.cache_resource
def _registry() -> LruRegistry:
    return LruRegistry(STATS_KEPT)


def cached(key: StatsKey) -> Stats | None:
    """Statistics already collected for `key` (in any session), else None."""
    registry = _registry()
    return registry.get(key)


def latest_for_current_model() -> tuple[StatsKey, Stats] | None:
    """The most recently used statistics collected for the sidebar's model, if any."""
    selection = tuple(state.selection())
    for key in reversed(_registry().keys()):
        if tuple(key[:3]) == selection and (stats := cached(key)) is not None:
            return key, stats
    return None


def registry() -> LruRegistry:
    """The process-wide statistics registry; fetched in the script thread and handed to `collect_in`."""
    return _registry()


def collect_in(job: Job, stats: LruRegistry, key: StatsKey, loaded, text: str | None = None) -> Stats:
    """A collection job's work, in its own thread (no Streamlit): collect (or fetch) statistics for `key`
    with `loaded` (the model `key` names) into the registry `stats`; raises DataError / StatsError with
    reasons, or `Stopped` on Stop (nothing is kept then)."""
    return stats.get_or_create(key, lambda: _collect(loaded, key, text, job.progress))


def _collect(loaded, key: StatsKey, text: str | None, progress) -> Stats:
    if text is None:
        progress(0.0, f"Reading the {key.corpus} text")
        text = load_text(key.corpus)
    ids = token_windows(loaded.tokenizer, text, WindowSpec(window=key.window, count=key.windows))
    return collect_stats(loaded.model, ids, progress=progress)


@st.cache_resource(show_spinner="Measuring every linear weight (once per model)")
def _weights(source: ModelSource, device: str, dtype: str) -> list[outliers.WeightStats]:
    return outliers.weight_stats(load(source, device, dtype).model)


def weights() -> list[outliers.WeightStats]:
    return _weights(*state.selection())


@st.cache_data(
    show_spinner="Quantizing every tensor with the sidebar scheme", max_entries=16, hash_funcs=FORMAT_HASH
)
def sensitivity(key: StatsKey, scheme: Format, _stats: Stats) -> list[dict]:
    model = load(key.source, key.device, key.dtype).model
    return outliers.sensitivity(_stats, model, scheme)


@st.cache_data(show_spinner=False, max_entries=16)
def sample_tokens(key: StatsKey, _stats: Stats) -> list[str]:
    """The sampled tokens as short printable strings, for heatmap rows."""
    tokenizer = load(key.source, key.device, key.dtype).tokenizer
    return [repr(tokenizer.decode([token]))[1:-1][:12] for token in _stats.sample_ids.tolist()]
