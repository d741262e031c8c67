"""Every cached engine call lives here (DESIGN rule 3).

Models are kept in one process-wide LRU (`st.cache_resource` holds the registry itself). Loading happens
outside any `st.cache_*` function so that it can drive a live progress bar (Streamlit would otherwise try
to replay those elements). Models in the registry are shared by every browser session and never mutated:
quantizing always returns a new model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import NamedTuple

import streamlit as st
import torch

from engine.analysis import blocks as grid_engine
from engine.analysis.priorgrid import PriorGrid, detect_prior_grid
from engine.analysis.tensors import WeightInfo, get_weight, synthetic_tensor, weight_tensors
from engine.models.loading import ArchitectureSummary, LoadedModel, describe, load_model
from engine.models.sources import ModelSource, ModelSourceError
from engine.quant.metrics import error_summary
from engine.quant.primitives import fake_quantize
from engine.quant.schemes import QuantScheme, bits_per_weight
from ui import state
from ui.progress import progress_bar

MAX_MODELS = 2  # reference models kept in memory at once (each may be GBs)


class LruRegistry:
    """A small thread-safe LRU of expensive objects; one lock per key so a slow load blocks only its key."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}

    def get_or_create(self, key: Hashable, create: Callable[[], object]) -> object:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            value = create()
            with self._lock:
                self._items[key] = value
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
            return value

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


@st.cache_resource
def models() -> LruRegistry:
    return LruRegistry(MAX_MODELS)


def load(source: ModelSource, device: str, dtype: str, where=st) -> LoadedModel:
    """Load (or fetch from the registry) with a progress bar; raises ModelSourceError for bad sources."""
    key = (source, device, dtype)
    registry = models()
    if key in registry:
        return registry.get_or_create(key, lambda: None)
    update, clear = progress_bar(where)
    try:
        with st.spinner(f"Loading {source.label} on {device} ({dtype})"):
            return registry.get_or_create(key, lambda: load_model(source, device, dtype, progress=update))
    finally:
        clear()


def current_model() -> LoadedModel:
    """The model chosen in the sidebar (validated there, so this is normally a registry hit)."""
    return load(*state.selection())


def current_model_or_stop() -> LoadedModel:
    """For pages: the current model, or a clear error and an early stop of the page."""
    from ui.errors import show_error

    try:
        loaded = current_model()
    except ModelSourceError as exc:
        show_error(exc, prefix="The selected model could not be loaded. ")
        st.stop()
    if loaded.quantization is not None:
        st.info(
            f"This checkpoint is already quantized: **{loaded.quantization.label}**. Generation, evaluation "
            "and memory use it as it is; pages that quantize or inspect float weights see only its "
            "unquantized layers (embeddings, norms, head). Load its float original to quantize it here.",
            icon=":material/inventory_2:",
        )
    return loaded


@st.cache_data(show_spinner=False, max_entries=8)
def _describe(source: ModelSource, device: str, dtype: str) -> ArchitectureSummary:
    return describe(load(source, device, dtype))


def summary() -> ArchitectureSummary:
    current_model()
    return _describe(*state.selection())


# -- tensors for the grid page -------------------------------------------------------------------------
TABLE_MAX_ELEMENTS = 2_000_000  # beyond this the scheme table runs on a row sample (embeddings: 28M)
ERROR_SAMPLE = 50_000  # values drawn for the error histogram


class WeightKey(NamedTuple):
    source: ModelSource
    device: str
    dtype: str
    name: str


class SyntheticKey(NamedTuple):
    kind: str
    rows: int
    cols: int
    outliers: int
    outlier_scale: float
    seed: int


class ActivationKey(NamedTuple):
    """A (tokens, channels) sample kept by the Outliers page's statistics collection."""

    stats_key: tuple  # ui.outlier_cache.StatsKey
    site: str  # SiteStats.name


def weight_list() -> list[WeightInfo]:
    return _weight_list(*state.selection())


@st.cache_data(show_spinner=False, max_entries=8)
def _weight_list(source: ModelSource, device: str, dtype: str) -> list[WeightInfo]:
    return weight_tensors(load(source, device, dtype).model)


def tensor(key: WeightKey | SyntheticKey | ActivationKey) -> torch.Tensor:
    if isinstance(key, SyntheticKey):
        return synthetic_tensor(*key)
    if isinstance(key, ActivationKey):
        from ui import outlier_cache

        stats = outlier_cache.cached(key.stats_key)
        if stats is None:
            raise ValueError(
                "Those statistics are no longer in memory; collect them again on the Outliers page."
            )
        return next(site.sample for site in stats.sites if site.name == key.site)
    return get_weight(load(key.source, key.device, key.dtype).model, key.name)


def tensor_shape(key: WeightKey | SyntheticKey | ActivationKey) -> tuple[int, ...]:
    return tuple(tensor(key).shape)


@st.cache_data(show_spinner="Looking for a grid the weights already sit on", max_entries=64)
def prior_grid(key: WeightKey) -> PriorGrid:
    return detect_prior_grid(tensor(key))


def _row_sample(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """At most TABLE_MAX_ELEMENTS values: whole rows, seeded, always including the row of the absmax."""
    if x.numel() <= TABLE_MAX_ELEMENTS:
        return x, False
    keep = max(1, TABLE_MAX_ELEMENTS // x.shape[-1])
    rows = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:keep]
    peak_row = int(x.abs().argmax()) // x.shape[-1]
    return x[torch.cat([rows, torch.tensor([peak_row])]).unique()], True


@st.cache_data(show_spinner="Measuring every standard scheme on this tensor", max_entries=64)
def scheme_table(key: WeightKey | SyntheticKey | ActivationKey) -> list[dict]:
    x, sampled = _row_sample(tensor(key))
    rows = grid_engine.scheme_table(x, grid_engine.standard_schemes())
    if sampled:
        for row in rows:
            row["note"] = (
                row["note"] + " " if row["note"] else ""
            ) + f"measured on {x.shape[0]} sampled rows"
    return rows


@st.cache_data(show_spinner="Quantizing", max_entries=32)
def grid_view(key: WeightKey | SyntheticKey | ActivationKey, scheme: QuantScheme, row: int, block: int):
    """(block picture, staircase curve, sampled errors, block errors, summary) for the grid page."""
    x = tensor(key)
    picture = grid_engine.block_picture(x, scheme, row, block)
    curve = grid_engine.mapping_curve(picture, scheme)
    sample, _ = _row_sample(x)
    quantized = fake_quantize(sample, scheme)
    summary = error_summary(sample, quantized)
    summary["bits/weight"] = bits_per_weight(scheme, x.shape[-1], x.numel() // x.shape[-1])
    errors = (sample - quantized).reshape(-1)
    if errors.numel() > ERROR_SAMPLE:
        errors = errors[
            torch.randperm(errors.numel(), generator=torch.Generator().manual_seed(0))[:ERROR_SAMPLE]
        ]
    return picture, curve, errors.numpy(), (picture.values - picture.dequantized).numpy(), summary
