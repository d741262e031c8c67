"""The Quantization grid page's tensor pickers and its all-schemes table.

Each picker draws its widgets and returns a `TensorChoice` of plain values: the cache key of the tensor
(ui/cache/tensors.py), how its rows are called, and the prior-grid check of a model weight. The page file
(pages/grid.py) chooses the picker, then draws the block view and `scheme_table_section`.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd
import streamlit as st

from engine.analysis.priorgrid import PriorGrid
from engine.analysis.tensors import SYNTHETIC_KINDS
from engine.quant.gguf import GGUFType
from engine.quant.schemes import QuantScheme
from engine.quant.shapes import CANDIDATE_GROUP_SIZES, or_list
from ui import cache, charts, state
from ui.cache import outliers as outlier_cache
from ui.widgets import NumberBoxes

HIGHLIGHT = "background-color: rgba(255, 215, 0, 0.35)"  # the sidebar scheme's row in the table


class TensorChoice(NamedTuple):
    key: cache.WeightKey | cache.SyntheticKey | cache.ActivationKey
    row_label: str  # what a row of this tensor is, for the row slider
    prior: PriorGrid | None  # model weights only: does it already sit on a low-bit grid?


def activation_tensor() -> TensorChoice:
    """A sampled activation from the Outliers page's latest statistics; stops the page when there are none."""
    collected = outlier_cache.latest_for_current_model()
    if collected is None:
        st.info(
            "Activations come from real text: press **Collect statistics** on the Outliers page first, then "
            "come back to see any layer's inputs, residual stream, keys or values under this scheme.",
            icon=":material/scatter_plot:",
        )
        st.stop()
    stats_key, stats = collected
    sites = [site for site in stats.sites if site.sample.numel()]
    layer_names = sorted({site.layer for site in sites})
    cols = st.columns([1, 2])
    act_layer = cols[0].selectbox(
        "Layer", layer_names, index=min(1, len(layer_names) - 1), key="grid_act_layer"
    )
    in_layer = {site.name: site for site in sites if site.layer == act_layer}  # names: SiteStats hold tensors
    site = in_layer[
        cols[1].selectbox(
            "Tensor",
            list(in_layer),
            format_func=lambda name: (
                f"{in_layer[name].label}  ({in_layer[name].sample.shape[0]} tokens × "
                f"{in_layer[name].sample.shape[1]} channels)"
            ),
            key="grid_act_site",
        )
    ]
    st.caption(
        f"The first {site.sample.shape[0]} tokens of the first window of {stats_key.corpus!r} "
        f"({stats.tokens:,} tokens collected). Per-channel granularity here means one scale per token, the "
        "dynamic per-token activation quantization of W8A8 / LLM.int8()."
    )
    return TensorChoice(cache.ActivationKey(stats_key, site.name), "Row (token)", None)


def synthetic_tensor() -> TensorChoice:
    number = NumberBoxes()
    cols = st.columns(6)
    kind = cols[0].selectbox("Distribution", SYNTHETIC_KINDS, key="grid_syn_kind")
    rows = number(cols[1], "Rows", 1, 1024, 64, key="grid_syn_rows")
    columns = number(cols[2], "Columns", 8, 4096, 512, step=64, key="grid_syn_cols")
    outliers = number(cols[3], "Outliers", 0, 64, 1, key="grid_syn_outliers")
    magnitude = cols[4].slider("Outlier size (σ)", 2.0, 100.0, 20.0, key="grid_syn_magnitude")
    seed = number(cols[5], "Seed", 0, 10_000, 0, key="grid_syn_seed")
    st.caption(
        "A unit-variance tensor with planted outliers: switch the sidebar granularity between *tensor* and "
        "*group* to see one outlier stretch the scale of everything that shares it."
    )
    if number.show():
        st.stop()
    key = cache.SyntheticKey(kind, int(rows), int(columns), int(outliers), float(magnitude), int(seed))
    return TensorChoice(key, "Row (output channel)", None)


def model_weight() -> TensorChoice:
    """A weight of the sidebar's model, picked by layer; stops the page while no model is loaded."""
    cache.current_model_or_stop()
    weights = cache.weight_list()
    layers = sorted({w.layer for w in weights if w.layer is not None})
    choices = ["embeddings / head"] + [f"layer {index}" for index in layers]
    cols = st.columns([1, 2])
    layer_choice = cols[0].selectbox("Layer", choices, index=1 if len(choices) > 1 else 0, key="grid_layer")
    wanted = None if layer_choice == choices[0] else int(layer_choice.split()[1])
    in_layer = [w for w in weights if w.layer == wanted]
    picked = cols[1].selectbox(
        "Weight",
        in_layer,
        format_func=lambda w: f"{w.module}  ({w.shape[0]}×{w.shape[1]})",
        key="grid_weight",
    )
    key = cache.WeightKey(*state.selection(), picked.name)
    return TensorChoice(key, "Row (output channel)", cache.prior_grid(key))


def keep_in_range(key: str, highest: int) -> None:
    """Bring slider `key`'s value (set by a click-through or a link) within 0..highest before it is drawn."""
    value = st.session_state.get(key)
    if isinstance(value, int) and not 0 <= value <= highest:
        st.session_state[key] = min(max(value, 0), highest)


def prior_grid_warning(prior: PriorGrid | None) -> None:
    if prior is None or not prior.detected:
        return
    st.warning(
        f"**This tensor already sits on a low-bit grid.** {prior.description} Re-quantizing to a matching or "
        "finer grid shows (near) zero error that says nothing about the original float model"
        + (
            " — here `int4 asym_min g32` (llama.cpp's Q4_1 layout) reproduces the weights exactly."
            if prior.bits == 4 and prior.group_size == 32
            else "."
        ),
        icon=":material/grid_4x4:",
    )


def group_size_fits_or_stop(shape: tuple[int, ...], scheme: QuantScheme) -> None:
    """Stop the page when the scheme's groups do not divide this tensor's rows, naming the sizes the sidebar
    offers that do (the sidebar offers what fits every layer of the model; a synthetic tensor or another
    width may still need a size that divides its own rows)."""
    width = shape[-1]
    if scheme.granularity != "group" or width % scheme.group_size == 0:
        return
    fit = state.group_sizes()
    offered = fit.sizes if fit is not None else CANDIDATE_GROUP_SIZES
    dividing = [size for size in offered if width % size == 0]
    if dividing:
        advice = f"Sizes in the sidebar that do: {or_list(dividing)}; or pick per-channel granularity."
    else:
        advice = (
            "No size in the sidebar does: pick per-channel or per-tensor granularity (or, for a synthetic "
            f"tensor, a number of columns that is a multiple of {min(offered)})."
        )
    st.error(
        f"Group size {scheme.group_size} does not divide this tensor's rows of {width:,} values, so its "
        f"last group would be partial. {advice}",
        icon=":material/error:",
    )
    st.stop()


def scheme_table_section(tensor_key, scheme: QuantScheme | GGUFType) -> None:
    """Every standard scheme on this tensor: a Pareto chart of SQNR vs bits and the table behind it."""
    st.subheader("All schemes on this tensor")
    table = pd.DataFrame(cache.scheme_table(tensor_key))
    chart_col, table_col = st.columns([2, 3])
    chart_col.plotly_chart(charts.pareto(table.to_dict("records"), scheme.label), width="stretch")
    chart_col.caption(
        "Up and to the left is better: more signal-to-noise for fewer bits. The star is your scheme."
    )
    shown = table.sort_values("sqnr_db", ascending=False, na_position="last")[
        ["scheme", "bits/weight", "sqnr_db", "mse", "max_abs_err", "note"]
    ]
    table_col.dataframe(  # five narrow columns fit the page's right column at 1280 px; notes go below
        shown.drop(columns="note")
        .style.apply(lambda r: [HIGHLIGHT if r["scheme"] == scheme.label else "" for _ in r], axis=1)
        .format({"bits/weight": "{:.3f}", "sqnr_db": "{:.1f}", "mse": "{:.3g}", "max_abs_err": "{:.3g}"}),
        hide_index=True,
        height=420,
        width="stretch",
        column_config={
            "scheme": st.column_config.Column("scheme", width=150),
            "bits/weight": st.column_config.Column(
                "bits/w", width=60, help="bits per weight, scales included"
            ),
            "sqnr_db": st.column_config.Column(
                "SQNR dB", width=70, help="signal-to-quantization-noise ratio"
            ),
            "mse": st.column_config.Column("MSE", width=75, help="mean squared error"),
            "max_abs_err": st.column_config.Column("max error", width=75, help="largest absolute error"),
        },
    )
    for row in shown[shown["note"].fillna("") != ""].itertuples():
        table_col.caption(f"**{row.scheme}** does not apply here: {row.note}")
    if scheme.label not in set(table["scheme"]):
        table_col.caption(
            f"Your scheme ({scheme.label}) is not in the standard set; its numbers are in the metrics above."
        )
