"""Plotly figures for the Learn page. Each takes a lesson result from the engine; no computation here."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.lessons import (
    SYMMETRY_DATA,
    CalibrationLesson,
    GranularityLesson,
    MappingLesson,
    SpeedLesson,
    SymmetryLesson,
)
from engine.lessons.qat_spiral import QatReport, Staircase
from ui.charts import CLIP_COLOR, VALUE_COLOR, layout

FORMAT_COLORS = {"int4": "#1f77b4", "nf4": "#d62728", "fp4": "#2ca02c"}
VARIANT_COLORS = {"symmetric": "#1f77b4", "asymmetric": "#ff7f0e"}
WEIGHT_COLORS = {"fp16": "#7f7f7f", "int8 weights (per channel)": "#1f77b4", "int4 weights (g128)": "#d62728"}
CLASS_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
STATIC_COLOR, DYNAMIC_COLOR = "#1f77b4", "#ff7f0e"


def _style(figure: go.Figure, title: str, x: str, y: str, height: int = 380) -> go.Figure:
    """The house layout (log axes labelled by `decade_ticks`), with the legend under the plot so it never
    covers a title."""
    layout(figure, title, x, y, height=height)
    figure.update_layout(
        legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0),
        title=dict(font=dict(size=14)),
    )
    return figure


def histogram_over_levels(
    values, levels: dict, colors: dict, title: str, x_title: str, log_share: bool = False
) -> go.Figure:
    """A histogram of values on top, each grid's levels as a row of ticks below, on one x axis."""
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.04)
    figure.add_histogram(
        x=values, nbinsx=120, histnorm="probability", marker_color="#9ecae1", name="values", row=1, col=1
    )
    for name, grid in levels.items():
        figure.add_scatter(
            x=grid.tolist(),
            y=[name] * len(grid),
            mode="markers",
            marker=dict(symbol="line-ns-open", size=12, line_width=2, color=colors[name]),
            name=f"{name} ({len(grid)} levels)",
            row=2,
            col=1,
        )
    figure.update_yaxes(
        title_text="share of values" + (" (log)" if log_share else ""),
        type="log" if log_share else None,
        row=1,
        col=1,
    )
    figure.update_xaxes(title_text=x_title, row=2, col=1)
    return _style(figure, title, "", "", height=380)


def mapping_levels(lesson: MappingLesson) -> go.Figure:
    return histogram_over_levels(
        lesson.normalized.numpy(),
        lesson.levels,
        FORMAT_COLORS,
        f"Value / block absmax (blocks of {lesson.block}) and each format's levels",
        "value / block absmax",
    )


def symmetry_levels(lesson: SymmetryLesson) -> go.Figure:
    return histogram_over_levels(
        lesson.values.numpy(),
        lesson.levels,
        VARIANT_COLORS,
        f"{SYMMETRY_DATA[lesson.data]} and the int{lesson.bits} levels of each grid (per tensor)",
        "value",
        log_share=True,
    )


def mse_vs_bits(lesson: SymmetryLesson) -> go.Figure:
    figure = go.Figure()
    for name, values in lesson.bits_sweep.items():
        figure.add_scatter(
            x=lesson.sweep_bits, y=values, mode="lines+markers", name=name, line_color=VARIANT_COLORS[name]
        )
    figure.update_yaxes(type="log")
    return _style(figure, "MSE at every bit width", "bits", "MSE (log)", height=380)


def granularity_tradeoff(lesson: GranularityLesson) -> go.Figure:
    rows = lesson.rows
    figure = go.Figure()
    figure.add_scatter(
        x=[r.bits_per_weight for r in rows],
        y=[r.sqnr_db for r in rows],
        mode="lines+markers+text",
        text=[r.scheme.label.split()[-1] for r in rows],
        textposition=["bottom right"] * (len(rows) - 1) + ["bottom left"],
        cliponaxis=False,
        marker=dict(size=10, color=VALUE_COLOR),
        hovertemplate="%{text}<br>%{x:.3f} bits/weight<br>SQNR %{y:.1f} dB<extra></extra>",
        name=f"int{lesson.bits}",
    )
    return _style(
        figure,
        f"SQNR vs storage ({lesson.shape[0]}×{lesson.shape[1]} tensor, fp16 scales)",
        "bits per weight (codes + scales)",
        "SQNR (dB)",
        height=380,
    )


def calibration_ranges(lesson: CalibrationLesson) -> go.Figure:
    figure = go.Figure()
    figure.add_histogram(x=lesson.values.numpy(), nbinsx=200, marker_color="#9ecae1", name="held-out values")
    palette = ["#d62728", "#9467bd", "#2ca02c", "#17becf", "#ff7f0e"]
    for row, color in zip([r for r in lesson.rows if r.static], palette, strict=False):
        for sign in (-1, 1):
            figure.add_vline(x=sign * row.clip, line_color=color, line_width=1.5, line_dash="dash")
        figure.add_scatter(
            x=[None], y=[None], mode="lines", line=dict(color=color, dash="dash"), name=row.method
        )
    figure.update_yaxes(type="log")
    return _style(
        figure, "Held-out values and each observer's static range", "value", "count (log)", height=400
    )


def calibration_bars(lesson: CalibrationLesson) -> go.Figure:
    rows = sorted(lesson.rows, key=lambda r: r.sqnr_db)
    figure = go.Figure()
    figure.add_bar(
        x=[r.sqnr_db for r in rows],
        y=[r.method for r in rows],
        orientation="h",
        marker_color=[STATIC_COLOR if r.static else DYNAMIC_COLOR for r in rows],
        text=[f"{r.sqnr_db:.1f} dB" for r in rows],
        textposition="auto",
        showlegend=False,
    )
    return _style(
        figure,
        f"int{lesson.bits} on held-out text: static (blue), dynamic (orange)",
        "SQNR (dB, higher is better)",
        "",
        height=400,
    )


def staircase(stair: Staircase) -> go.Figure:
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=("Forward: fake quantization", "Backward: straight-through gradient")
    )
    x = stair.x.numpy()
    figure.add_scatter(
        x=x, y=x, mode="lines", line=dict(dash="dot", color="gray"), name="identity", row=1, col=1
    )
    figure.add_scatter(
        x=x, y=stair.forward.numpy(), mode="lines", line=dict(color=CLIP_COLOR), name="q(x)", row=1, col=1
    )
    figure.add_scatter(
        x=x,
        y=stair.ste_gradient.numpy(),
        mode="lines",
        line=dict(color=VALUE_COLOR, width=3),
        name="STE: dq/dx := 1 on the grid",
        row=1,
        col=2,
    )
    figure.add_scatter(
        x=x,
        y=[0.0] * len(x),
        mode="lines",
        line=dict(color=CLIP_COLOR, dash="dash"),
        name="true dq/dx (0 almost everywhere)",
        row=1,
        col=2,
    )
    for edge in (stair.low, stair.high):
        figure.add_vline(x=edge, line_color="gray", line_dash="dot", row=1, col=2)
    figure.update_yaxes(range=[-0.2, 1.3], row=1, col=2)
    figure.update_xaxes(title_text="x (latent weight)")
    return _style(figure, "", "", "", height=340)


def qat_curves(report: QatReport) -> go.Figure:
    figure = go.Figure()
    steps = list(range(1, len(report.qat_curve) + 1))
    figure.add_scatter(
        x=steps, y=report.qat_curve, mode="lines", name="QAT minibatch loss", line_color=VALUE_COLOR
    )
    figure.add_hline(y=report.ptq_loss, line_color=CLIP_COLOR, line_dash="dash")
    figure.add_hline(y=report.float_loss, line_color="gray", line_dash="dot")
    figure.add_scatter(
        x=[None], y=[None], mode="lines", line=dict(color=CLIP_COLOR, dash="dash"), name="PTQ test loss"
    )
    figure.add_scatter(
        x=[None], y=[None], mode="lines", line=dict(color="gray", dash="dot"), name="float test loss"
    )
    figure.update_yaxes(type="log")
    return _style(figure, f"QAT loss, {report.scheme.label}", "step", "cross-entropy (log)")


def decision_regions(report: QatReport) -> go.Figure:
    names = list(report.regions.predictions)
    accuracy = {"float": report.float_accuracy, "PTQ": report.ptq_accuracy, "QAT": report.qat_accuracy}
    figure = make_subplots(
        rows=1,
        cols=len(names),
        subplot_titles=[f"{n}: {accuracy[n]:.1%}" for n in names],
        horizontal_spacing=0.03,
    )
    classes = int(report.test_labels.max()) + 1
    scale = [[i / max(classes - 1, 1), CLASS_COLORS[i % len(CLASS_COLORS)]] for i in range(classes)]
    points = report.test_x[::4].numpy()
    labels = report.test_labels[::4].numpy()
    for column, name in enumerate(names, start=1):
        figure.add_heatmap(
            x=report.regions.xs.numpy(),
            y=report.regions.ys.numpy(),
            z=report.regions.predictions[name].numpy(),
            colorscale=scale,
            zmin=0,
            zmax=classes - 1,
            opacity=0.35,
            showscale=False,
            hoverinfo="skip",
            row=1,
            col=column,
        )
        figure.add_scatter(
            x=points[:, 0],
            y=points[:, 1],
            mode="markers",
            marker=dict(size=3, color=[CLASS_COLORS[int(c) % len(CLASS_COLORS)] for c in labels]),
            showlegend=False,
            hoverinfo="skip",
            row=1,
            col=column,
        )
        figure.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, row=1, col=column)
        figure.update_yaxes(
            showticklabels=False,
            showgrid=False,
            zeroline=False,
            scaleanchor=f"x{column if column > 1 else ''}",
            row=1,
            col=column,
        )
    return _style(figure, "", "", "", height=330)


def roofline(lesson: SpeedLesson) -> go.Figure:
    device = lesson.device
    intensities = sorted([2.0**e for e in range(-2, 15)] + [device.ridge])
    figure = go.Figure()
    figure.add_scatter(
        x=intensities,
        y=[min(device.matrix_flops, device.bandwidth * i) / 1e12 for i in intensities],
        mode="lines",
        line=dict(color="black"),
        name="roof",
    )
    for label, (one, many) in lesson.costs.items():
        for cost, symbol in ((one, "circle"), (many, "diamond")):
            figure.add_scatter(
                x=[cost.intensity],
                y=[min(device.matrix_flops, device.bandwidth * cost.intensity) / 1e12],
                mode="markers",
                marker=dict(size=12, symbol=symbol, color=WEIGHT_COLORS[label]),
                name=label,
                legendgroup=label,
                showlegend=symbol == "circle",
                hovertemplate=f"{label}, {cost.tokens:,} token(s)<br>%{{x:.3g}} FLOP/byte<extra></extra>",
            )
    figure.add_vline(x=device.ridge, line_dash="dot", line_color="gray")
    figure.update_xaxes(type="log")
    figure.update_yaxes(type="log")
    return _style(
        figure,
        f"Roofline: {device.name} (● 1 token, ◆ {lesson.tokens:,} tokens)",
        "arithmetic intensity (FLOP per byte moved)",
        "attainable TFLOP/s",
        height=400,
    )


def speedup_vs_tokens(lesson: SpeedLesson) -> go.Figure:
    figure = go.Figure()
    base = lesson.times["fp16"]
    for label, times in lesson.times.items():
        figure.add_scatter(
            x=lesson.sweep_tokens,
            y=[b / t for b, t in zip(base, times, strict=True)],
            mode="lines+markers",
            name=label,
            line_color=WEIGHT_COLORS[label],
        )
    figure.add_vline(x=lesson.tokens, line_dash="dot", line_color="gray")
    figure.update_xaxes(type="log")
    top = max(max(b / t for b, t in zip(base, times, strict=True)) for times in lesson.times.values())
    figure.update_yaxes(range=[0, math.ceil(top + 0.5)])
    return _style(
        figure,
        "Modelled speed-up over fp16 weights",
        "tokens per forward (1 = decode; many = prefill / batch)",
        "× faster than fp16",
        height=400,
    )
