"""Plotly figures for the Outliers page's massive-activation and super-weight tabs; plain values in, no maths."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from ui.charts import CLIP_COLOR, VALUE_COLOR, layout

MEDIAN_COLOR = "#7f7f7f"


def residual_peaks(
    peak: list[float],
    median: list[float],
    labels: dict[int, str],
    first_layer: int | None,
    ratio: float,
) -> go.Figure:
    """Per layer: the largest |value| of the residual stream and its median |value| (log y), the
    `ratio` x median line a massive value must clear, `labels` ({layer: "#507"}) on the peaks, and the
    layer where massive values first appear."""
    layers = list(range(len(peak)))
    figure = go.Figure()
    figure.add_scatter(
        x=layers,
        y=peak,
        mode="lines+markers",
        name="largest |x|",
        line_color=VALUE_COLOR,
        hovertemplate="layer %{x}<br>largest |x| %{y:,.4g}<extra></extra>",
    )
    figure.add_scatter(
        x=layers,
        y=median,
        mode="lines",
        name="median |x|",
        line_color=MEDIAN_COLOR,
        hovertemplate="layer %{x}<br>median |x| %{y:.3g}<extra></extra>",
    )
    figure.add_scatter(
        x=layers,
        y=[ratio * value for value in median],
        mode="lines",
        name=f"{ratio:,.0f} × median",
        line=dict(color=MEDIAN_COLOR, dash="dot"),
        hoverinfo="skip",
    )
    for layer, text in labels.items():
        figure.add_annotation(
            x=layer,
            y=_log10(peak[layer]),
            text=text,
            showarrow=True,
            arrowhead=0,
            ay=-24,
            font_color=CLIP_COLOR,
        )
    if first_layer is not None:
        figure.add_vline(
            x=first_layer,
            line_dash="dash",
            line_color=CLIP_COLOR,
            annotation_text=f"first massive: layer {first_layer}",
            annotation_position="bottom right",
        )
    figure.update_yaxes(type="log")
    figure.update_xaxes(dtick=1 if len(layers) <= 32 else None)
    return layout(figure, "Residual stream after each layer: largest vs median |x|", "layer", "|x| (log)")


def _log10(value: float) -> float:
    return math.log10(value) if value > 0 else 0.0  # log axes place annotations in log10


def sink_heatmap(attention: list[list[float]]) -> go.Figure:
    """Attention weight on the first token, heads (rows) by layers (columns), 0 to 1."""
    layers = list(range(len(attention)))
    heads = list(range(len(attention[0]) if attention else 0))
    by_head = [[row[head] for row in attention] for head in heads]  # (heads, layers)
    figure = go.Figure(
        go.Heatmap(
            z=by_head,
            x=layers,
            y=heads,
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            colorbar=dict(title="share", thickness=12, tickformat=".0%"),
            hovertemplate="layer %{x}, head %{y}<br>%{z:.0%} of the attention on the first token<extra></extra>",
        )
    )
    figure.update_yaxes(autorange="reversed", dtick=1)
    figure.update_xaxes(dtick=1 if len(layers) <= 32 else None)
    return layout(
        figure,
        "Attention on the first token, per layer and head",
        "layer",
        "head",
        height=120 + 22 * len(heads),
    )


def perplexity_bars(labels: list[str], perplexities: list[float]) -> go.Figure:
    """One horizontal bar per variant, log x, the perplexity written on each bar."""
    figure = go.Figure(
        go.Bar(
            x=perplexities,
            y=labels,
            orientation="h",
            marker_color=[
                CLIP_COLOR if value > 10 * min(perplexities) else VALUE_COLOR for value in perplexities
            ],
            text=[f"{value:,.1f}" for value in perplexities],
            textposition="auto",
            hovertemplate="%{y}<br>perplexity %{x:,.1f}<extra></extra>",
        )
    )
    figure.update_xaxes(type="log")
    figure.update_yaxes(autorange="reversed")
    return layout(
        figure, "Perplexity on the held-out text (log scale)", "perplexity", "", height=80 + 45 * len(labels)
    )
