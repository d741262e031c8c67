"""The Memory page's checkpoint recipes: how a checkpoint stores each part of the model (a format per module
kind), picked from the published layouts or set by hand, and the table that prices it. Plain values in and
out; pages/memory.py places them."""

from __future__ import annotations

import streamlit as st

from engine.quant.gguf import GGUFType
from engine.quant.schemes import QuantScheme
from engine.sizing.checkpoints import (
    CHECKPOINT_RECIPES,
    MODULE_LABELS,
    CheckpointBytes,
    CheckpointRecipe,
    as_format,
    checkpoint_bytes,
    module_counts,
    published_checkpoint,
)
from engine.sizing.parameters import ConfigError
from engine.sizing.presets import PRESETS, WeightPreset
from ui.errors import show_error

SAME = "One format for the whole model (the weights format above)"
CUSTOM = "Custom: a format per module kind"
GIB = 1024**3
UNQUANTIZED_KINDS = ("embeddings", "head", "norms", "other")  # 16-bit unless the user says otherwise


def _options(sidebar: WeightPreset | None) -> dict[str, WeightPreset]:
    """Every preset by name, and the sidebar's format first when there is one."""
    options = {} if sidebar is None else {sidebar.name: sidebar}
    return options | {name: preset for name, preset in PRESETS.items() if name not in options}


def _custom_recipe(config, sidebar: WeightPreset | None) -> CheckpointRecipe:
    """One selectbox per module kind the model has; linear kinds start at the sidebar's format."""
    options = _options(sidebar)
    names = list(options)
    linear_default = sidebar.name if sidebar is not None else "bf16"
    formats = {}
    columns = st.columns(3)
    for index, kind in enumerate(module_counts(config)):
        default = "bf16" if kind in UNQUANTIZED_KINDS else linear_default
        chosen = columns[index % 3].selectbox(
            MODULE_LABELS[kind].capitalize(),
            names,
            index=names.index(default),
            format_func=lambda name: options[name].label,
            key=f"memory_recipe_kind_{kind}",
        )
        formats[kind] = options[chosen]
    return CheckpointRecipe("custom", "Custom", formats, note="A format per module kind, set by hand.")


def recipe_picker(
    config, sidebar_preset: WeightPreset | QuantScheme | GGUFType | str | None = None
) -> CheckpointRecipe | None:
    """How the checkpoint stores each part of the model: None keeps one format for the whole model (the
    page's weights format), else a published layout or one set per module kind."""
    sidebar = None if sidebar_preset is None else as_format(sidebar_preset)
    choices = [SAME, *CHECKPOINT_RECIPES, CUSTOM]
    labels = {SAME: SAME, CUSTOM: CUSTOM} | {key: r.label for key, r in CHECKPOINT_RECIPES.items()}
    choice = st.selectbox(
        "Checkpoint layout",
        choices,
        format_func=labels.get,
        key="memory_recipe_choice",
        help="Published checkpoints often mix formats: gpt-oss keeps its experts in MXFP4 and the rest in "
        "bf16; DeepSeek-V3 ships FP8 linears with bf16 embeddings and head.",
    )
    if choice == SAME:
        return None
    if choice == CUSTOM:
        try:
            return _custom_recipe(config, sidebar)
        except ConfigError as exc:
            show_error(exc, prefix="Cannot size this config: ")
            return None
    recipe = CHECKPOINT_RECIPES[choice]
    st.caption(f"{recipe.note} Source: {recipe.source}" if recipe.source else recipe.note)
    return recipe


def recipe_rows(priced: CheckpointBytes) -> list[dict]:
    """One row per module kind, then the total: parameters, format, bits per weight and GiB."""
    rows = [
        {
            "part": MODULE_LABELS[kind],
            "parameters": priced.parameters[kind],
            "format": priced.formats[kind],
            "bits/weight": round(priced.bits(kind), 3),
            "GiB": priced.by_kind[kind] / GIB,
        }
        for kind in priced.by_kind
    ]
    rows.append(
        {
            "part": "total",
            "parameters": sum(priced.parameters.values()),
            "format": priced.recipe.label,
            "bits/weight": round(priced.bits_per_weight, 3),
            "GiB": priced.total / GIB,
        }
    )
    return rows


def recipe_table(config, recipe: CheckpointRecipe, slug: str | None = None) -> CheckpointBytes | None:
    """The checkpoint priced part by part; for a catalog model (`slug`) with a published checkpoint in the
    same layout, ours against the published size. Returns the pricing (None after saying what is wrong)."""
    try:
        priced = checkpoint_bytes(config, recipe)
    except (ConfigError, ValueError) as exc:
        show_error(exc, prefix="Cannot price this checkpoint: ")
        return None
    st.dataframe(
        recipe_rows(priced),
        hide_index=True,
        column_config={
            "parameters": st.column_config.NumberColumn("parameters", format="localized"),
            "GiB": st.column_config.NumberColumn("GiB", format="%.2f"),
        },
        width="stretch",
    )
    if priced.unclassified:
        st.caption(
            "Not recognized, priced as other: "
            + ", ".join(priced.unclassified[:5])
            + (f" and {len(priced.unclassified) - 5} more" if len(priced.unclassified) > 5 else "")
        )
    published = published_checkpoint(slug)
    if published is not None and published.recipe == priced.recipe.name:
        gap = priced.total / published.bytes - 1
        st.caption(
            f"Ours {priced.total / GIB:,.2f} GiB, published {published.bytes / GIB:,.2f} GiB "
            f"({gap:+.1%}; {published.source})."
        )
    return priced
