"""Plotly figures for the Outliers page's "Rotation" tab: outliers before and after rotating, and the
quantized copies' perplexity with and without the rotation. Plain values in, no maths."""

from __future__ import annotations

import plotly.graph_objects as go

from ui.charts import CLIP_COLOR, VALUE_COLOR, layout

BEFORE_COLOR = CLIP_COLOR  # the model as loaded
AFTER_COLOR = VALUE_COLOR  # its rotated copy
METHOD_COLORS = {
    "plain rounding (RTN)": "#d62728",
    "SmoothQuant": "#ff7f0e",
    "rotation + RTN": "#1f77b4",
    "rotation + GPTQ": "#2ca02c",
}
REFERENCE_COLOR = "#7f7f7f"


def _before_after(before: list[float], after: list[float], title: str, y: str, hover: str) -> go.Figure:
    layers = list(range(len(before)))
    figure = go.Figure()
    for name, values, color in (("before rotating", before, BEFORE_COLOR), ("after", after, AFTER_COLOR)):
        figure.add_scatter(
            x=layers,
            y=values,
            mode="lines+markers",
            name=name,
            line_color=color,
            hovertemplate=f"layer %{{x}}<br>{hover} %{{y:,.3g}}<extra>{name}</extra>",
        )
    figure.update_yaxes(type="log")
    figure.update_xaxes(dtick=1 if len(layers) <= 32 else None)
    return layout(figure, title, "layer", y)


def ratio_chart(before: list[float], after: list[float]) -> go.Figure:
    """Per layer: the residual stream's largest per-token max |x| / RMS(x), before and after (log y)."""
    return _before_after(
        before,
        after,
        "Residual stream after each layer: the largest per-token max / RMS",
        "max |x| / RMS (log)",
        "max / RMS",
    )


def kurtosis_chart(site: str, before: list[float], after: list[float]) -> go.Figure:
    """Per layer: the kurtosis of one linear input (`site`), before and after (log y; 3 for a Gaussian)."""
    figure = _before_after(before, after, f"Kurtosis of the {site}", "kurtosis (log)", "kurtosis")
    figure.add_hline(
        y=3,
        line_dash="dot",
        line_color=REFERENCE_COLOR,
        annotation_text="Gaussian: 3",
        annotation_position="bottom right",
    )
    return figure


def comparison_chart(rows: list[dict], reference: float | None) -> go.Figure:
    """Perplexity per setting (x), one bar per method (log y), the float model's as a line.
    `rows`: {"setting", "method", "perplexity"} in the order to draw."""
    figure = go.Figure()
    settings = list(dict.fromkeys(row["setting"] for row in rows))
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = {row["setting"]: row["perplexity"] for row in rows if row["method"] == method}
        figure.add_bar(
            x=settings,
            y=[mine.get(setting) for setting in settings],
            name=method,
            marker_color=METHOD_COLORS.get(method),
            hovertemplate=f"%{{x}}<br>perplexity %{{y:,.2f}}<extra>{method}</extra>",
        )
    if reference is not None:
        figure.add_hline(
            y=reference,
            line_dash="dash",
            line_color=REFERENCE_COLOR,
            annotation_text=f"float model: {reference:,.2f}",
            annotation_position="top left",
        )
    figure.update_yaxes(type="log")
    figure.update_layout(barmode="group")
    return layout(
        figure, "Perplexity after quantizing (lower is better)", "setting", "perplexity (log)", bargap=0.2
    )
