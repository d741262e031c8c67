"""The Quantization grid page's cached calls: a weight (or synthetic / activation tensor) by key, its
prior grid, the scheme table and the block view under a scheme."""

from __future__ import annotations

from typing import NamedTuple

import streamlit as st
import torch

from engine.analysis import blocks as grid_engine
from engine.analysis.priorgrid import PriorGrid, detect_prior_grid
from engine.analysis.tensors import WeightInfo, get_weight, synthetic_tensor, weight_tensors
from engine.models.sources import ModelSource
from ui import state
from ui.cache.models import load

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

    stats_key: tuple  # ui.cache.outliers.StatsKey
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
        from ui.cache import outliers as outlier_cache

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
