"""The Evaluate page's results: the grid's table (with its CSV), its charts and the study's findings."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.evaluation.study import CellResult, findings
from ui.pages import evaluate_charts


def table_rows(results: list[CellResult]) -> list[dict]:
    """The reference row, then one per cell."""
    first = results[0]
    reference = dict(
        cell="W16 / KV16",
        axis="reference",
        perplexity=first.reference_perplexity,
        relative_change=0.0,
        mean_kl=0.0,
        max_kl=0.0,
        top1_agreement=1.0,
        tokens=first.tokens,
        seconds=0.0,
    )
    fields = (
        "axis",
        "perplexity",
        "relative_change",
        "mean_kl",
        "max_kl",
        "top1_agreement",
        "tokens",
        "seconds",
    )
    return [reference] + [dict(cell=r.cell, **{f: getattr(r, f) for f in fields}) for r in results]


def results_ui(rows: list[dict], results: list[CellResult]) -> None:
    st.plotly_chart(evaluate_charts.grid_heatmap(rows), width="stretch", key="evaluate_heatmap")
    table = pd.DataFrame(rows)
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "perplexity": st.column_config.NumberColumn(format="%.3f"),
            "relative_change": st.column_config.NumberColumn("Δ perplexity", format="percent"),
            "mean_kl": st.column_config.NumberColumn("mean KL", format="%.4f"),
            "max_kl": st.column_config.NumberColumn("max KL", format="%.2f"),
            "top1_agreement": st.column_config.NumberColumn("top-1 agreement", format="percent"),
            "seconds": st.column_config.NumberColumn(format="%.1f"),
        },
    )
    st.download_button(
        "Download CSV",
        table.to_csv(index=False).encode(),
        file_name="quantization-grid.csv",
        mime="text/csv",
        key="evaluate_csv",
    )
    reference = rows[0]["perplexity"]
    st.plotly_chart(evaluate_charts.perplexity_bars(results, reference), width="stretch", key="evaluate_bars")


def findings_ui(results: dict[str, CellResult]) -> None:
    st.subheader("What the study found, and what our numbers say")
    st.caption(
        "Qllm-Eval (Li et al., 2024) evaluated 11 model families: weights and the KV cache tolerate 8 and 4 "
        "bits, W4A4 and 2-bit settings collapse. Each line below is checked against the cells run here."
    )
    for finding in findings(results):
        icon = ":material/check_circle:" if finding.agrees else ":material/cancel:"
        body = f"**{finding.claim}** Ours: {finding.ours}."
        (st.success if finding.agrees else st.warning)(
            body + ("" if finding.agrees else " Small models are more fragile than the study's 7B–70B ones."),
            icon=icon,
        )
