"""Quantized variants of the loaded model, shared by the Compare, Evaluate and Methods pages.

A variant is (the reference's key, a method config): `quantize_model` always returns a new model, so a
variant is immutable once built and can be shared by every session like the reference. Only
MAX_VARIANTS are kept (each is a full copy of the model); evicting one frees its memory. Evaluation
grid cells are cached per (model, text, windows) so a rerun of the Evaluate page is instant.
"""

from __future__ import annotations

import streamlit as st

from engine.evaluation.study import CellResult
from engine.methods import QuantizedModel, quantize_model
from engine.models.loading import LoadedModel
from ui import state
from ui.cache.registry import LruRegistry
from ui.progress import progress_bar

MAX_VARIANTS = 3  # quantized copies kept at once across all sessions


@st.cache_resource
def variants() -> LruRegistry:
    return LruRegistry(MAX_VARIANTS)


@st.cache_resource
def grid_results() -> dict:
    """(model key, text fingerprint, window spec, group size) -> {cell name: CellResult}; small, kept."""
    return {}


def model_key() -> tuple:
    return state.selection()


def variant(loaded: LoadedModel, config, where=st) -> QuantizedModel:
    """The loaded model quantized with `config`, any method config the registry knows (a recipe's
    `method`, a Methods lab config); built once, with a progress bar."""
    key = (model_key(), config)
    registry = variants()
    if (held := registry.get(key)) is not None:
        return held
    update, clear = progress_bar(where)
    try:
        return registry.get_or_create(key, lambda: quantize_model(loaded.model, config, progress=update))
    finally:
        clear()


def cached_cells(key: tuple) -> dict[str, CellResult]:
    return grid_results().setdefault(key, {})
