"""Figures for the Evaluate page: the grid as a heatmap strip per metric, perplexity by cell, and the
per-token KL histogram (also drawn by the Methods lab)."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import torch

from engine.evaluation.drift import DriftStats
from engine.evaluation.study import BAND_LIMITS, BANDS, CellResult, band
from ui import clickthrough
from ui.charts import decade_ticks, layout

AXIS_COLORS = {
    "reference": "#7f7f7f",
    "weights": "#1f77b4",
    "gguf": "#17becf",  # W4 Q4_1: a 4-bit weight cell in llama.cpp's layout
    "weight-activation": "#9467bd",
    "kv": "#ff7f0e",
    "formats": "#2ca02c",  # today's formats: MXFP4, NVFP4, MXFP8, int4 g32
}
BAND_COLORS = ("#1a9850", "#fee08b", "#f46d43", "#a50026")  # close, noticeable, bad, broken
METRICS = (  # (row label, BAND_LIMITS key, value from a table row)
    ("Δ perplexity", "relative_change", lambda r: r["relative_change"]),
    ("mean KL (nats)", "mean_kl", lambda r: r["mean_kl"]),
    ("top-1 disagreement", "disagreement", lambda r: 1 - r["top1_agreement"]),
)


def change_label(change: float) -> str:
    """+4.9% for small changes, ×188 once perplexity has more than tenfold."""
    if not math.isfinite(change):
        return "diverged"
    return f"{change:+.1%}" if change < 9 else f"×{change + 1:,.0f}"


FORMATS = {
    "relative_change": change_label,
    "mean_kl": lambda v: f"{v:.3f}",
    "disagreement": lambda v: f"{v:.1%}",
}


def _ppl(change: float) -> str:
    return f"+{change:.0%}" if change < 1 else f"×{change + 1:g}"


def band_legend() -> list[str]:
    """The colorbar's labels: each colour's name and its perplexity limit."""
    limits = BAND_LIMITS["relative_change"]
    labels = [f"{BANDS[0]}: Δppl ≤ {_ppl(limits[0])}"]
    labels += [f"{BANDS[i]}: ≤ {_ppl(limits[i])}" for i in range(1, len(limits))]
    return labels + [f"{BANDS[-1]}: > {_ppl(limits[-1])}"]


def band_caption() -> str:
    """What each colour means on every row, and why the limits sit where they do (under the heatmap)."""
    ppl, kl, top1 = (BAND_LIMITS[m] for m in ("relative_change", "mean_kl", "disagreement"))
    parts = []
    for index, name in enumerate(BANDS[:-1]):
        parts.append(
            f"**{name}** up to Δ perplexity {_ppl(ppl[index])}, mean KL {kl[index]:.2f} nats, "
            f"top-1 disagreement {top1[index]:.0%}"
        )
    return (
        "Colour is a fixed scale, the same on every run and for every cell: "
        + "; ".join(parts)
        + f"; **{BANDS[-1]}** beyond. +2% is about what int8 weights cost, +20% is where the study's "
        '"tolerated" ends (the findings below use it) and ×2 is where it calls a setting collapsed; the KL '
        "limits are the same in nats (ln 1.02, ln 1.2, ln 2); the disagreement limits are where this grid's "
        "cells on the default model land in the band their perplexity gives."
    )


def _discrete_colorscale() -> list:
    """Band i fills [i/n, (i+1)/n] of the scale, so z = band index maps to exactly one colour."""
    n = len(BAND_COLORS)
    scale = []
    for index, color in enumerate(BAND_COLORS):
        scale += [[index / n, color], [(index + 1) / n, color]]
    return scale


def grid_heatmap(rows: list[dict]) -> go.Figure:
    """rows: dicts with cell, perplexity change, mean KL, top-1 (reference rows included). Each cell is
    coloured by its own band (`engine.evaluation.study.band`): a fixed scale, not relative to the row."""
    cells = [r["cell"] for r in rows]
    values = [[value(r) for r in rows] for _, _, value in METRICS]
    n = len(BANDS)
    figure = go.Figure(
        go.Heatmap(
            z=[[band(key, v) + 0.5 for v in row] for (_, key, _), row in zip(METRICS, values, strict=True)],
            x=cells,
            y=[label for label, _, _ in METRICS],
            text=[[FORMATS[key](v) for v in row] for (_, key, _), row in zip(METRICS, values, strict=True)],
            customdata=[
                [BANDS[band(key, v)] for v in row] for (_, key, _), row in zip(METRICS, values, strict=True)
            ],
            texttemplate="%{text}",
            colorscale=_discrete_colorscale(),
            zmin=0,
            zmax=n,
            colorbar=dict(
                tickvals=[i + 0.5 for i in range(n)],
                ticktext=band_legend(),
                title=dict(text="distance from<br>the reference"),
                thickness=14,
            ),
            hovertemplate="%{x} · %{y}: %{text} (%{customdata})<extra></extra>",
        )
    )
    cells = [  # a click on a variant's cell opens it on Compare (the reference has none)
        (
            r["cell"],
            label,
            [clickthrough.VARIANT_TAG, r["cell"], FORMATS[key](value(r)), BANDS[band(key, value(r))]],
        )
        for r in rows
        if r.get("axis") != "reference"
        for label, key, value in METRICS
    ]
    clickthrough.selectable_cells(
        figure,
        cells,
        "%{x} · %{y}: %{customdata[2]} (%{customdata[3]})<br>click to compare it<extra></extra>",
    )
    figure.update_layout(
        title="Quality cost of each cell (colour: a fixed scale, from close to the reference to broken)",
        height=320,
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
    return decade_ticks(figure)


def _quantizes_activations(result: CellResult) -> bool:
    """W4A4, W8A8 MXFP8, ...: the recipe's name carries an activation width after its weight width."""
    head = result.cell.split()[0]
    return head.startswith("W") and "A" in head[1:]


def quality_vs_bits(results: list[CellResult]) -> go.Figure:
    """Mean KL to the reference (log) against bits per weight: one labelled point per cell that quantizes
    weights, weight-only cells and cells that quantize activations too in their own colours."""
    shown = [r for r in results if r.bits_per_weight is not None]
    figure = go.Figure()
    for name, activations, color in (
        ("weights only", False, AXIS_COLORS["weights"]),
        ("weights and activations", True, AXIS_COLORS["weight-activation"]),
    ):
        rows = [r for r in shown if _quantizes_activations(r) == activations]
        if rows:
            figure.add_scatter(
                x=[r.bits_per_weight for r in rows],
                y=[max(r.mean_kl, 1e-5) for r in rows],  # an exact cell (KL 0) sits on the floor
                mode="markers+text",
                text=[r.cell for r in rows],
                textposition="top center",
                name=name,
                marker=dict(size=10, color=color),
                hovertemplate="%{text}: %{x:.3f} bits/weight, mean KL %{y:.4f} nats<extra></extra>",
            )
    figure.update_yaxes(type="log")
    return layout(
        figure,
        "Quality vs size: mean KL to the reference against bits per weight",
        "bits per weight (quantized linears, scales included)",
        "mean KL (nats, log scale; 0 drawn at 10⁻⁵)",
        height=400,
        bargap=None,
    )


KL_FLOOR = 1e-6  # nats: KL at or below this (0, or float rounding just under it) is drawn at the floor
BINS_PER_DECADE = 8


def kl_histogram(drift: DriftStats, name: str) -> go.Figure:
    """How the per-token KL divergence spreads: positions per bin of log-spaced width on a log x axis (a
    filled step outline), with the median, 99th and 99.9th percentiles marked as llama.cpp prints them."""
    kl = drift.per_token.kl.double().clamp(min=KL_FLOOR)
    low = math.floor(math.log10(KL_FLOOR if float(kl.min()) <= KL_FLOOR else float(kl.min())))
    high = max(math.ceil(math.log10(float(kl.max()))), low + 1)
    bins = (high - low) * BINS_PER_DECADE
    edges = [10 ** (low + i / BINS_PER_DECADE) for i in range(bins + 1)]
    counts = torch.histc(kl.log10(), bins=bins, min=low, max=high).long().tolist()
    floored = int((drift.per_token.kl <= KL_FLOOR).sum())
    figure = go.Figure(
        go.Scatter(
            x=edges,
            y=[*counts, counts[-1]],
            mode="lines",
            line=dict(shape="hv", color=AXIS_COLORS["weights"]),
            fill="tozeroy",
            customdata=[[edges[i], edges[min(i + 1, bins)]] for i in range(bins + 1)],
            hovertemplate="KL %{customdata[0]:.2g} to %{customdata[1]:.2g} nats: %{y} positions<extra></extra>",
            name="positions",
        )
    )
    for label, value, dash in (
        ("median", drift.kl_median, "dot"),
        ("99%", drift.kl_p99, "dash"),
        ("99.9%", drift.kl_p999, "longdash"),
    ):
        if value > KL_FLOOR:
            figure.add_vline(
                x=value,
                line=dict(color="#d62728", dash=dash, width=1),
                annotation_text=f"{label} {value:.3g}",
            )
    figure.update_xaxes(type="log")
    note = f"; {floored} at or below 10⁻⁶ drawn there" if floored else ""
    return layout(
        figure,
        f"{name}: KL divergence per token ({drift.positions:,} positions{note})",
        "KL(reference ‖ candidate) at one position, nats (log scale)",
        "positions",
        height=340,
        bargap=None,
    )
