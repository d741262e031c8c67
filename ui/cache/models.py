"""The model registry: reference models loaded once, shared by every session, never mutated.

Loading happens outside any `st.cache_*` function so that it can drive a live progress bar (Streamlit
would otherwise try to replay those elements). Quantizing always returns a new model.
"""

from __future__ import annotations

import streamlit as st

from engine.models.loading import ArchitectureSummary, LoadedModel, describe, load_model
from engine.models.sources import ModelSource, ModelSourceError
from ui import state
from ui.cache.registry import LruRegistry
from ui.errors import show_error
from ui.progress import progress_bar

MAX_MODELS = 2  # reference models kept in memory at once (each may be GBs)


@st.cache_resource
def models() -> LruRegistry:
    return LruRegistry(MAX_MODELS)


def load(source: ModelSource, device: str, dtype: str, where=st) -> LoadedModel:
    """Load (or fetch from the registry) with a progress bar; raises ModelSourceError for bad sources."""
    key = (source, device, dtype)
    registry = models()
    if (held := registry.get(key)) is not None:
        return held
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
