"""Plotly figures for the Memory page: stacked breakdowns, a context sweep with GPU lines, measured vs
estimated bytes. Inputs are the engine's plain values; sizes are drawn in GiB. Also the summary table's
click-through to the Speed page (`speed_on_click`)."""

from __future__ import annotations

import plotly.graph_objects as go

from engine.sizing.estimate import MemoryBreakdown
from ui import clickthrough
from ui.charts import layout

GIB = 1024**3
COMPONENT_COLORS = {
    "weights": "#1f77b4",
    "KV cache": "#ff7f0e",
    "activations": "#2ca02c",
    "overhead": "#9e9e9e",
}
GPU_LINE_COLORS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _layout(figure: go.Figure, title: str, x: str, y: str, height: int = 380) -> go.Figure:
    return layout(figure, title, x, y, height, top=60, bargap=None)


def stacked_breakdown(breakdowns: list[MemoryBreakdown], capacity: float | None, gpu_name: str) -> go.Figure:
    """One stacked bar per weight format: weights / KV cache / activations / overhead, GPU line on top."""
    labels = [b.weights_label for b in breakdowns]
    figure = go.Figure()
    for index, component in enumerate(COMPONENT_COLORS):
        values = [b.rows()[index][1] / GIB for b in breakdowns]
        figure.add_bar(
            x=labels,
            y=values,
            name=component,
            marker_color=COMPONENT_COLORS[component],
            hovertemplate=f"{component}: %{{y:.2f}} GiB<extra>%{{x}}</extra>",
        )
    totals = [b.total / GIB for b in breakdowns]
    figure.add_scatter(
        x=labels,
        y=totals,
        mode="text",
        text=[f"{t:,.1f} GiB" for t in totals],
        textposition="top center",
        showlegend=False,
        hoverinfo="skip",
    )
    if capacity:
        figure.add_hline(
            y=capacity / GIB,
            line=dict(color="#d62728", dash="dash"),
            annotation_text=f"{gpu_name}: {capacity / GIB:,.1f} GiB",
            annotation_position="top left",
        )
    figure.update_layout(barmode="stack")
    top = max([*totals, (capacity or 0) / GIB]) * 1.15
    figure.update_yaxes(range=[0, top])
    return _layout(figure, "Memory by component", "weight format", "GiB")


def context_sweep(
    contexts: list[int],
    totals: dict[str, list[float]],
    capacities: dict[str, float],
    max_positions: int | None,
) -> go.Figure:
    """Total memory vs context, one line per weight format, dashed horizontal lines for GPU capacities."""
    figure = go.Figure()
    for label, values in totals.items():
        figure.add_scatter(
            x=contexts,
            y=[v / GIB for v in values],
            mode="lines+markers",
            name=label,
            hovertemplate="%{x:,} tokens: %{y:.1f} GiB<extra>" + label + "</extra>",
        )
    for index, (name, capacity) in enumerate(capacities.items()):
        figure.add_hline(
            y=capacity / GIB,
            line=dict(color=GPU_LINE_COLORS[index % len(GPU_LINE_COLORS)], dash="dash", width=1),
            annotation_text=name,
            annotation_position="top left",
        )
    if max_positions:
        figure.add_vline(
            x=max_positions,
            line=dict(color="gray", dash="dot"),
            annotation_text="model's max context",
            annotation_position="top right",
        )
    figure.update_xaxes(type="log")
    return _layout(figure, "Total memory vs context length", "context (tokens, log scale)", "GiB")


def measured_vs_estimated(rows: list[tuple[str, float, float]]) -> go.Figure:
    """Grouped bars: estimate and measurement per component (bytes in, MiB drawn)."""
    names = [r[0] for r in rows]
    figure = go.Figure()
    figure.add_bar(x=names, y=[r[1] / 1024**2 for r in rows], name="estimated", marker_color="#1f77b4")
    figure.add_bar(x=names, y=[r[2] / 1024**2 for r in rows], name="measured", marker_color="#ff7f0e")
    figure.update_layout(barmode="group")
    return _layout(figure, "Loaded model: estimate vs measurement", "", "MiB", height=320)


# the summary table's rows can be clicked: the Speed page's measured decode for that format
SUMMARY_SELECTION = dict(key="memory_summary", on_select="rerun", selection_mode="single-row")


def speed_on_click(picked, breakdowns: list[MemoryBreakdown], presets: list) -> None:
    """A click on a summary row opens the Speed page on that format (where a kernel there runs it)."""
    rows = picked.selection.rows if picked is not None else []
    if rows:
        clickthrough.open_speed_for(
            presets[rows[0]].name, breakdowns[rows[0]].weights_label, "memory:summary"
        )
