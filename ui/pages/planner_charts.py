"""The planner page's figures: the recipe as a layer x module map coloured by bits, the Pareto chart of
measured KL against bits per weight, and predicted against measured KL."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from engine.planner import PlannedRecipe
from ui.cache.planner import Scored
from ui.charts import layout

KIND_STYLE = {  # series of the Pareto chart: marker and line
    "uniform": dict(symbol="circle", color="#636efa"),
    "heuristic": dict(symbol="square", color="#ef553b"),
    "planner": dict(symbol="star", color="#00cc96"),
    "loaded": dict(symbol="diamond", color="#ab63fa"),
}


def format_map(recipe: PlannedRecipe) -> go.Figure:
    """Decoder layers down, modules across; each cell the tensor's format, coloured by its bits."""
    modules = list(dict.fromkeys(t.module for t in recipe.tensors))
    layers = sorted({t.layer for t in recipe.tensors if t.layer is not None})
    bits = recipe.bits
    z = [[None] * len(modules) for _ in layers]
    text = [[""] * len(modules) for _ in layers]
    for tensor in recipe.tensors:
        if tensor.layer is None:
            continue
        row, col = layers.index(tensor.layer), modules.index(tensor.module)
        z[row][col] = bits[tensor.name] / tensor.numel
        text[row][col] = recipe.formats[tensor.name].label
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=modules,
            y=[f"layer {layer}" for layer in layers],
            text=text,
            texttemplate="%{text}",
            textfont=dict(size=10),
            colorscale="Viridis",
            colorbar=dict(title="bits/weight"),
            hovertemplate="%{y}, %{x}: %{text}<br>%{z:.3f} bits/weight<extra></extra>",
            xgap=1,
            ygap=1,
        )
    )
    figure.update_yaxes(autorange="reversed")
    height = max(300, 60 + 20 * len(layers))
    return layout(
        figure, f"{recipe.label}: format per tensor", "module", "decoder layer", height, bargap=None
    )


def pareto(scores: list[Scored]) -> go.Figure:
    """Measured mean KL (log scale) against bits per weight, one series per kind of recipe."""
    figure = go.Figure()
    for kind, style in KIND_STYLE.items():
        rows = sorted((s for s in scores if s.kind == kind), key=lambda s: s.bits_per_weight)
        if not rows:
            continue
        figure.add_scatter(
            x=[s.bits_per_weight for s in rows],
            y=[max(s.mean_kl, 1e-6) for s in rows],
            mode="lines+markers" if kind in ("uniform", "planner") else "markers",
            name=kind,
            text=[f"{s.label}<br>perplexity {s.perplexity:.2f}" for s in rows],
            marker=dict(size=11, **style),
            line=dict(color=style["color"]),
            hovertemplate="%{text}<br>%{x:.3f} bits/weight<br>mean KL %{y:.4f} nats<extra></extra>",
        )
    figure.update_yaxes(type="log")
    return layout(
        figure, "Measured KL against size", "bits per weight", "mean KL to the reference (nats)", 420
    )


def predicted_vs_measured(scores: list[Scored]) -> go.Figure | None:
    """Each recipe's predicted KL (the sum of its tensors' costs) against the KL measured on held-out text."""
    rows = [s for s in scores if s.predicted_kl is not None and s.predicted_kl > 0 and s.mean_kl > 0]
    if not rows:
        return None
    figure = go.Figure()
    for kind, style in KIND_STYLE.items():
        subset = [s for s in rows if s.kind == kind]
        if subset:
            figure.add_scatter(
                x=[s.predicted_kl for s in subset],
                y=[s.mean_kl for s in subset],
                mode="markers",
                name=kind,
                text=[s.label for s in subset],
                marker=dict(size=11, **style),
                hovertemplate="%{text}<br>predicted %{x:.4f}<br>measured %{y:.4f} nats<extra></extra>",
            )
    values = [v for s in rows for v in (s.predicted_kl, s.mean_kl)]
    low, high = min(values) / 1.5, max(values) * 1.5
    figure.add_scatter(
        x=[low, high], y=[low, high], mode="lines", name="equal", line=dict(dash="dot", color="gray")
    )
    figure.update_xaxes(type="log", range=[math.log10(low), math.log10(high)])
    figure.update_yaxes(type="log", range=[math.log10(low), math.log10(high)])
    return layout(figure, "Predicted against measured KL", "predicted KL (nats)", "measured KL (nats)", 380)
