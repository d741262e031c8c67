"""Figures for the Evaluate page: the grid as a heatmap strip per metric, and perplexity by cell."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from engine.evaluation.study import CellResult

AXIS_COLORS = {"reference": "#7f7f7f", "weights": "#1f77b4", "weight-activation": "#9467bd", "kv": "#ff7f0e"}


def _scaled(values: list[float]) -> list[float]:
    """log1p-scaled to [0, 1] per row, so one collapsed cell does not wash out the others."""
    logged = [math.log1p(max(v, 0.0)) if math.isfinite(v) else 50.0 for v in values]
    top = max(logged) or 1.0
    return [v / top for v in logged]


def change_label(change: float) -> str:
    """+4.9% for small changes, ×188 once perplexity has more than tenfold."""
    if not math.isfinite(change):
        return "diverged"
    return f"{change:+.1%}" if change < 9 else f"×{change + 1:,.0f}"


def grid_heatmap(rows: list[dict]) -> go.Figure:
    """rows: dicts with cell, perplexity change, mean KL, top-1 (reference rows included)."""
    cells = [r["cell"] for r in rows]
    metrics = [
        (
            "Δ perplexity",
            [r["relative_change"] for r in rows],
            change_label,
        ),
        ("mean KL (nats)", [r["mean_kl"] for r in rows], lambda v: f"{v:.3f}"),
        ("top-1 disagreement", [1 - r["top1_agreement"] for r in rows], lambda v: f"{v:.1%}"),
    ]
    figure = go.Figure(
        go.Heatmap(
            z=[_scaled(values) for _, values, _ in metrics],
            x=cells,
            y=[name for name, _, _ in metrics],
            text=[[fmt(v) for v in values] for _, values, fmt in metrics],
            texttemplate="%{text}",
            colorscale="RdYlGn_r",
            zmin=0,
            zmax=1,
            showscale=False,
            hovertemplate="%{x} · %{y}: %{text}<extra></extra>",
        )
    )
    figure.update_layout(
        title="Quality cost of each cell (greener is closer to the reference; colour is log-scaled per row)",
        height=300,
        margin=dict(l=10, r=10, t=50, b=10),
        yaxis=dict(autorange="reversed"),
    )
    return figure


def perplexity_bars(results: list[CellResult], reference: float) -> go.Figure:
    figure = go.Figure()
    figure.add_bar(
        x=[r.cell for r in results],
        y=[r.perplexity for r in results],
        marker_color=[AXIS_COLORS.get(r.axis, "#333") for r in results],
        text=[f"{r.perplexity:,.1f}" for r in results],
        textposition="outside",
        hovertemplate="%{x}: perplexity %{y:,.2f}<extra></extra>",
    )
    figure.add_hline(
        y=reference, line=dict(color="#2ca02c", dash="dash"), annotation_text=f"reference {reference:,.2f}"
    )
    values = [r.perplexity for r in results if math.isfinite(r.perplexity)] + [reference]
    low, high = math.log10(min(values) * 0.7), math.log10(max(values) * 4)  # room for the labels
    figure.update_yaxes(type="log", title="perplexity (log scale)", range=[low, high])
    figure.update_layout(
        title="Perplexity by cell (blue: weights, purple: weights + activations, orange: KV cache)",
        height=360,
        margin=dict(l=10, r=10, t=50, b=10),
        showlegend=False,
    )
    return figure
