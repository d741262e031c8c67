"""Quantization grid: one tensor, one scheme, every level and every error in plain sight."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.analysis.blocks import block_count
from engine.analysis.tensors import SYNTHETIC_KINDS
from ui import cache, charts, page, state
from ui.cache import outliers as outlier_cache
from ui.errors import show_error

page.start(
    "Quantization grid",
    "Pick a tensor and see the chosen scheme's levels laid over its values, the real → code → real mapping, "
    "what gets clipped, and how every standard scheme ranks on the same tensor.",
)
scheme = state.scheme()
if scheme is None:
    st.warning("Pick a valid scheme in the sidebar first.", icon=":material/tune:")
    st.stop()

source_kind = st.segmented_control(
    "Tensor",
    ["Model weight", "Activation", "Synthetic"],
    default="Model weight",
    key="grid_source",
    width="stretch",
)
row_label = "Row (output channel)"
if source_kind == "Activation":
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
    tensor_key = cache.ActivationKey(stats_key, site.name)
    row_label = "Row (token)"
    st.caption(
        f"The first {site.sample.shape[0]} tokens of the first window of {stats_key.corpus!r} "
        f"({stats.tokens:,} tokens collected). Per-channel granularity here means one scale per token, the "
        "dynamic per-token activation quantization of W8A8 / LLM.int8()."
    )
    prior = None
elif source_kind == "Synthetic":
    cols = st.columns(6)
    kind = cols[0].selectbox("Distribution", SYNTHETIC_KINDS, key="grid_syn_kind")
    rows = cols[1].number_input("Rows", 1, 1024, 64, key="grid_syn_rows")
    columns = cols[2].number_input("Columns", 8, 4096, 512, step=64, key="grid_syn_cols")
    outliers = cols[3].number_input("Outliers", 0, 64, 1, key="grid_syn_outliers")
    magnitude = cols[4].slider("Outlier size (σ)", 2.0, 100.0, 20.0, key="grid_syn_magnitude")
    seed = cols[5].number_input("Seed", 0, 10_000, 0, key="grid_syn_seed")
    tensor_key = cache.SyntheticKey(kind, int(rows), int(columns), int(outliers), float(magnitude), int(seed))
    st.caption(
        "A unit-variance tensor with planted outliers: switch the sidebar granularity between *tensor* and "
        "*group* to see one outlier stretch the scale of everything that shares it."
    )
    prior = None
else:
    loaded = cache.current_model_or_stop()
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
    tensor_key = cache.WeightKey(*state.selection(), picked.name)
    prior = cache.prior_grid(tensor_key)

try:
    shape = cache.tensor_shape(tensor_key)
    n_rows, n_blocks = block_count(shape, scheme)
except ValueError as exc:
    show_error(exc, prefix=f"{scheme.label} does not fit this tensor: ")
    st.stop()

if prior is not None and prior.detected:
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

cols = st.columns(2)
row = cols[0].slider(row_label, 0, n_rows - 1, 0, key="grid_row") if n_rows > 1 else 0
block = cols[1].slider("Group in the row", 0, n_blocks - 1, 0, key="grid_block") if n_blocks > 1 else 0
if n_rows == 1 and n_blocks == 1:
    cols[0].caption("Per-tensor: every value shares one scale, so there is only one block to show.")
elif n_blocks == 1:
    cols[1].caption("Per-channel: each row is one block.")

picture, curve, errors, block_errors, summary = cache.grid_view(tensor_key, scheme, row, block)
st.markdown(f"**{scheme.label}** on this tensor")
metrics = st.columns(5)
metrics[0].metric(
    "SQNR", f"{summary['sqnr_db']:.1f} dB", help="Signal-to-quantization-noise ratio, whole tensor"
)
metrics[1].metric("MSE", f"{summary['mse']:.3g}")
metrics[2].metric("Max abs error", f"{summary['max_abs_err']:.3g}")
metrics[3].metric(
    "Bits per weight", f"{summary['bits/weight']:.3f}", help="Codes plus scales and zero points"
)
metrics[4].metric("Clipped in block", f"{int(picture.clipped.sum())} / {picture.block_elements}")

left, right = st.columns(2)
left.plotly_chart(charts.block_histogram(picture, scheme.label), width="stretch")
left.caption(
    "Red lines are the values this block's codes can represent. Dense levels where values crowd mean low "
    "error; values beyond the outer lines are clipped."
)
right.plotly_chart(charts.mapping_staircase(*curve, picture), width="stretch")
right.caption(
    f"Scale {picture.scale:.4g}"
    + (
        ""
        if picture.zero_point is None
        else f", minimum offset {picture.zero_point:.4g}"
        if scheme.zero_kind == "float"
        else f", zero point {picture.zero_point:.0f}"
    )
    + ". Each step is one code: every value on a step comes back as the same number."
)
st.plotly_chart(charts.error_histogram(errors, block_errors), width="stretch")

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
table_col.dataframe(
    shown.style.apply(
        lambda r: [
            "background-color: rgba(255, 215, 0, 0.35)" if r["scheme"] == scheme.label else "" for _ in r
        ],
        axis=1,
    ).format({"bits/weight": "{:.3f}", "sqnr_db": "{:.1f}", "mse": "{:.3g}", "max_abs_err": "{:.3g}"}),
    hide_index=True,
    height=420,
    width="stretch",
)
if scheme.label not in set(table["scheme"]):
    table_col.caption(
        f"Your scheme ({scheme.label}) is not in the standard set; its numbers are in the metrics above."
    )
