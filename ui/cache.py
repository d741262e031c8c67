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

import streamlit as st

from engine.models import ArchitectureSummary, LoadedModel, describe, load_model
from engine.sources import ModelSource, ModelSourceError
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
        return current_model()
    except ModelSourceError as exc:
        show_error(exc, prefix="The selected model could not be loaded. ")
        st.stop()


@st.cache_data(show_spinner=False, max_entries=8)
def _describe(source: ModelSource, device: str, dtype: str) -> ArchitectureSummary:
    return describe(load(source, device, dtype))


def summary() -> ArchitectureSummary:
    current_model()
    return _describe(*state.selection())
