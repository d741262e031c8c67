"""Plotly figures. Each takes plain values from the engine and returns a figure; no computation here."""

from __future__ import annotations

import math
import re

import numpy
import plotly.express as px
import plotly.graph_objects as go

from engine.analysis.blocks import BlockPicture

LEVEL_COLOR = "rgba(220, 60, 60, 0.55)"
VALUE_COLOR = "#1f77b4"
CLIP_COLOR = "#d62728"


LEGEND_ABOVE = dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1)
LEGEND_BELOW = dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0)
TITLE_BAND = 28  # px at the top of a chart for its title, above the band where a legend above the plot sits


def frame(title: str, *, top: int = 50, legend_below: bool = False) -> dict:
    """Title, margins and legend for `update_layout`: the title pinned to the top of the chart; a legend
    above the plot gets a band of its own under the title (the title is moved up by TITLE_BAND), so a long
    title and the legend never share a line, whatever the chart's width."""
    if legend_below:
        return dict(title=title, margin=dict(l=10, r=10, t=top, b=10), legend=LEGEND_BELOW)
    return dict(
        title=dict(text=title, y=1, yref="container", yanchor="top", pad=dict(t=10)),
        margin=dict(l=10, r=10, t=top + TITLE_BAND, b=10),
        legend=LEGEND_ABOVE,
    )


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
    """Every chart's frame (`frame`): title, axis titles, height, tight margins and a horizontal legend, in
    its own band above the plot on the right or (`legend_below`, for many series) under the x axis."""
    figure.update_layout(
        xaxis_title=x, yaxis_title=y, height=height, **frame(title, top=top, legend_below=legend_below)
    )
    if bargap is not None:
        figure.update_layout(bargap=bargap)
    return decade_ticks(figure)


def tick_label(value: float) -> str:
    """A tick value as a reader writes it: 0.05, 2, 1,000, 2×10⁶ (a power of ten from 10⁶ and under 10⁻³)."""
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e6:
        return f"{value:,.6g}"
    exponent = math.floor(math.log10(abs(value)))
    mantissa = round(value / 10**exponent, 3)
    power = f"10<sup>{exponent}</sup>"
    return power if mantissa == 1 else f"{mantissa:g}×{power}"


def _positive(values) -> numpy.ndarray:
    """The finite positive numbers among `values` (empty for categories and missing data)."""
    try:
        array = numpy.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):
        return numpy.empty(0)
    return array[numpy.isfinite(array) & (array > 0)]


def _trace_values(trace, letter: str) -> numpy.ndarray:
    """What a trace puts on its `letter` axis; a histogram's counts (or shares) on its count axis."""
    if trace.type != "histogram":
        return _positive(trace[letter])
    data_letter = "x" if trace.x is not None else "y"
    if letter == data_letter:
        return _positive(trace[letter])
    data = _positive(trace[data_letter])
    counts = numpy.histogram(data, bins=trace.nbinsx or "auto")[0].astype(float) if len(data) else data
    if trace.histnorm in ("probability", "percent"):
        counts = counts / max(counts.sum(), 1) * (100 if trace.histnorm == "percent" else 1)
    return counts[counts > 0]


def _axis_span(figure: go.Figure, name: str) -> tuple[float, float] | None:
    """The smallest and largest value a log axis shows: its fixed range, else its traces' and lines'."""
    axis = figure.layout[name]
    if axis.range is not None and axis.autorange is not True:
        return 10 ** axis.range[0], 10 ** axis.range[1]
    letter, ref = name[0], name[0] + name[5:]  # "yaxis2" -> ("y", "y2")
    found = [
        _trace_values(trace, letter)
        for trace in figure.data
        if f"{letter}axis" in trace and (trace[f"{letter}axis"] or letter) == ref
    ]
    for shape in figure.layout.shapes:  # add_hline / add_vline: they count in plotly's autorange too
        if shape[f"{letter}ref"] == ref:
            found.append(_positive([shape[f"{letter}0"], shape[f"{letter}1"]]))
    values = numpy.concatenate(found) if found else numpy.empty(0)
    return (float(values.min()), float(values.max())) if len(values) else None


def _nice_ticks(low: float, high: float) -> list[float]:
    """1-2-5 values in [low, high] (a span of under three decades); a finer even step under 2.5×."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    inside = [
        round(m * 10.0**e, 12)
        for e in range(first, last + 1)
        for m in (1, 2, 5)
        if low * (1 - 1e-9) <= m * 10.0**e <= high * (1 + 1e-9)
    ]
    if len(inside) >= 2 or high <= low:
        return inside or [low]
    raw = (high - low) / 4
    step = min(
        (m * 10.0 ** math.floor(math.log10(raw)) for m in (1, 2, 2.5, 5, 10)),
        key=lambda s: abs(s - raw),
    )
    start = math.ceil(low / step - 1e-9)
    return [round(k * step, 12) for k in range(start, math.floor(high / step + 1e-9) + 1)]


def decade_ticks(figure: go.Figure) -> go.Figure:
    """Label every log axis with values that read right. Plotly's default labels the minor ticks with bare
    digits ("2", "5" between 10 and 100), which read as wrong values. Three decades or more: one label per
    power of ten (every second one past ten decades); less: 1-2-5 ticks (a finer even step where even 1-2-5
    gives fewer than two). Labels are the real values (`tick_label`). An axis that already names its ticks
    (the Speed page's batch sizes) is left alone."""
    names = [name for name in figure.layout.to_plotly_json() if re.fullmatch(r"[xy]axis\d*", name)]
    for name in names:
        axis = figure.layout[name]
        if axis.type != "log" or axis.tickvals is not None:
            continue
        low, high = _axis_span(figure, name) or (1.0, 10.0)
        first, last = math.ceil(math.log10(low) - 1e-9), math.floor(math.log10(high) + 1e-9)
        if last - first + 1 >= 3:  # one more decade each side, for a little panning
            step = math.ceil((last - first + 1) / 10)
            values = [10.0**e for e in range(first - step, last + step + 1, step)]
        else:
            values = _nice_ticks(low, high)
        axis.update(tickmode="array", tickvals=values, ticktext=[tick_label(v) for v in values])
    return figure


def block_histogram(picture: BlockPicture, label: str) -> go.Figure:
    """Histogram of the block's values with every quantization level drawn as a vertical line."""
    values = picture.values.numpy()
    figure = go.Figure()
    figure.add_histogram(
        x=values, nbinsx=min(120, max(20, len(values) // 4)), name="values", marker_color=VALUE_COLOR
    )
    many = len(picture.levels) > 64
    line = dict(color=LEVEL_COLOR, width=1 if many else 1.5)
    # one layout update with every level (an 8-bit grid has 256): add_vline per level re-validates all the
    # shapes each time, quadratic (17 s for int8 on two cores)
    figure.update_layout(
        shapes=[
            dict(type="line", xref="x", yref="paper", x0=level, x1=level, y0=0, y1=1, line=line)
            for level in picture.levels.tolist()
        ]
    )
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
    """SQNR against bits per weight for every scheme, one colour per format; the chosen one stands out."""
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
    # a short title and the legend under the plot: in the grid page's narrow column a long title ran into
    # the legend above the plot and was cut off
    return layout(
        figure, "Quality vs size", "bits per weight", "SQNR (dB, capped at 99)", height=400, legend_below=True
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
