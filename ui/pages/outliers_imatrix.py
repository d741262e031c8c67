"""The Outliers page's importance tab: llama.cpp's importance matrix statistics (`llama-imatrix --show-statistics`).

Derived from the statistics the page already collected (engine.methods.imatrix.importance_from_stats: the
mean squared input of every channel of every linear), so it costs no extra run: each tensor's mean importance,
its share of the whole matrix, and the share per decoder layer.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.analysis.site_stats import Stats
from engine.methods.imatrix import importance_from_stats


def importance_table(stats: Stats) -> pd.DataFrame:
    """One row per linear: layer, tensor, mean and max importance, its share of the total, input channels."""
    rows = importance_from_stats(stats).statistics()
    return pd.DataFrame(
        [
            {
                "layer": row.layer,
                "tensor": row.name.rsplit(".", 1)[-1],
                "mean importance": row.mean,
                "max importance": row.max,
                "share of total": row.share,
                "input channels": row.channels,
                "name": row.name,
            }
            for row in rows
        ]
    )


def importance_tab(stats: Stats) -> None:
    table = importance_table(stats)
    if table.empty:
        st.info("These statistics measured no linear layer inputs.")
        return
    st.caption(
        "llama.cpp's importance matrix: the mean squared input of each channel of each linear layer on this "
        f"text ({stats.tokens:,} tokens). Quantizing with it (the Methods lab's GGUF 'Importance matrix') "
        "rounds the weights that meet large inputs more carefully. A tensor with a large share dominates the "
        "model's output error."
    )
    per_layer = table.groupby("layer")["share of total"].sum()
    st.bar_chart(per_layer.rename("share of total"), x_label="layer", y_label="share of total importance")
    st.dataframe(
        table.sort_values("share of total", ascending=False)
        .drop(columns="name")
        .style.format({"mean importance": "{:.3g}", "max importance": "{:.3g}", "share of total": "{:.2%}"}),
        hide_index=True,
        width="stretch",
    )
