"""Plotly figures. Each takes plain values from the engine and returns a figure; no computation here."""

from __future__ import annotations

import plotly.express as px
import plotly.graph_objects as go

from engine.analysis.blocks import BlockPicture

LEVEL_COLOR = "rgba(220, 60, 60, 0.55)"
VALUE_COLOR = "#1f77b4"
CLIP_COLOR = "#d62728"


def layout(
    figure: go.Figure,
    title: str,
    x: str,
    y: str,
    height: int = 340,
    *,
    legend_below: bool = False,
    top: int = 50,
    bargap: float | None = 0.02,
) -> go.Figure:
    """Every chart's frame: title, axis titles, height, tight margins and a horizontal legend, above the
    plot on the right or (`legend_below`, for many series) under the x axis, where it cannot cover the title."""
    legend = (
        dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0)
        if legend_below
        else dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1)
    )
    figure.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        height=height,
        margin=dict(l=10, r=10, t=top, b=10),
        legend=legend,
    )
    if bargap is not None:
        figure.update_layout(bargap=bargap)
    return figure


def block_histogram(picture: BlockPicture, label: str) -> go.Figure:
    """Histogram of the block's values with every quantization level drawn as a vertical line."""
    values = picture.values.numpy()
    figure = go.Figure()
    figure.add_histogram(
        x=values, nbinsx=min(120, max(20, len(values) // 4)), name="values", marker_color=VALUE_COLOR
    )
    many = len(picture.levels) > 64
    for level in picture.levels.tolist():
        figure.add_vline(x=level, line_color=LEVEL_COLOR, line_width=1 if many else 1.5)
    figure.add_scatter(
        x=[None], y=[None], mode="lines", line_color=LEVEL_COLOR, name=f"{len(picture.levels)} levels"
    )
    clipped = values[picture.clipped.numpy()]
    if len(clipped):
        figure.add_scatter(
            x=clipped,
            y=[0] * len(clipped),
            mode="markers",
            marker=dict(color=CLIP_COLOR, size=10, symbol="x"),
            name=f"clipped ({len(clipped)})",
        )
    return layout(figure, picture.description, "value", "count")


def mapping_staircase(xs, qs, picture: BlockPicture) -> go.Figure:
    """real -> code -> real: the staircase, the identity line, and the block's values on it."""
    figure = go.Figure()
    figure.add_scatter(
        x=xs.numpy(), y=xs.numpy(), mode="lines", line=dict(dash="dot", color="gray"), name="identity"
    )
    figure.add_scatter(
        x=xs.numpy(), y=qs.numpy(), mode="lines", line=dict(color=CLIP_COLOR, shape="hv"), name="q(x)"
    )
    values, back = picture.values.numpy(), picture.dequantized.numpy()
    clipped = picture.clipped.numpy()
    figure.add_scatter(
        x=values[~clipped],
        y=back[~clipped],
        mode="markers",
        marker=dict(color=VALUE_COLOR, size=5),
        name="values",
    )
    if clipped.any():
        figure.add_scatter(
            x=values[clipped],
            y=back[clipped],
            mode="markers",
            marker=dict(color=CLIP_COLOR, size=9, symbol="x"),
            name="clipped",
        )
    return layout(figure, "Mapping real → code → real", "original value", "dequantized value")


def error_histogram(errors, block_errors) -> go.Figure:
    figure = go.Figure()
    figure.add_histogram(
        x=errors, nbinsx=100, name="whole tensor", histnorm="probability", marker_color="#7f7f7f"
    )
    figure.add_histogram(
        x=block_errors,
        nbinsx=60,
        name="this block",
        histnorm="probability",
        marker_color=VALUE_COLOR,
        opacity=0.7,
    )
    figure.update_layout(barmode="overlay")
    return layout(figure, "Error distribution (original − dequantized)", "error", "share of values")


def pareto(rows: list[dict], chosen: str) -> go.Figure:
    """SQNR against bits per weight for every scheme; the chosen one stands out."""
    usable = [row for row in rows if row["sqnr_db"] == row["sqnr_db"]]  # drop NaN rows
    figure = go.Figure()
    for fmt in sorted({row["format"] for row in usable}):
        subset = [row for row in usable if row["format"] == fmt]
        figure.add_scatter(
            x=[row["bits/weight"] for row in subset],
            y=[min(row["sqnr_db"], 99.0) for row in subset],
            mode="markers",
            name=fmt,
            text=[row["scheme"] for row in subset],
            hovertemplate="%{text}<br>%{x:.3f} bits/weight<br>SQNR %{y:.1f} dB<extra></extra>",
            marker=dict(size=9),
        )
    best = [row for row in usable if row["scheme"] == chosen]
    if best:
        figure.add_scatter(
            x=[best[0]["bits/weight"]],
            y=[min(best[0]["sqnr_db"], 99.0)],
            mode="markers",
            marker=dict(size=20, symbol="star", color="gold", line=dict(color="black", width=1)),
            name="chosen",
        )
    return layout(
        figure,
        "Quality vs size: SQNR (dB, capped at 99) against bits per weight",
        "bits per weight",
        "SQNR (dB)",
    )


def parameters_by_kind(by_kind: dict[str, int], total: int) -> go.Figure:
    """Horizontal bars, largest first: parameters per module type (embeddings, attention, mlp, ...)."""
    kinds = sorted(by_kind.items(), key=lambda item: -item[1])
    figure = px.bar(
        x=[count / 1e6 for _, count in kinds],
        y=[kind for kind, _ in kinds],
        orientation="h",
        labels={"x": "parameters (millions)", "y": ""},
        title="Parameters by module type",
        text=[f"{count / total:.1%}" for _, count in kinds],
    )
    figure.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10), yaxis=dict(autorange="reversed"))
    return figure
