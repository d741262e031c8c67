"""The Methods lab's figures (plotly, no Streamlit): weight SQNR and output error per layer for every run,
and each method's own diagnostics (bars per layer, AWQ's search curve, SmoothQuant's channel maxima, QAT's
training curve). Which figure a run gets is decided in ui/pages/methods.py (`FIGURES`, keyed by type)."""

from __future__ import annotations

import re

import plotly.graph_objects as go

from engine.methods.qat import QATTrace
from ui.charts import decade_ticks, frame

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def _layer_index(name: str) -> str:
    match = re.search(r"layers\.(\d+)\.(?:\w+\.)?(\w+)$", name)
    return f"{match.group(1)}.{match.group(2)}" if match else name


def _minimises_output_error(run) -> bool:
    """GPTQ and AWQ: their reports carry RTN's output error on the same inputs, what they improve on."""
    return any(getattr(layer.detail, "rtn_output_error", None) is not None for layer in run.layers)


def sqnr_note(all_runs: list) -> str | None:
    """Why an output-error method's weight SQNR can sit below RTN's (None when no such run is drawn)."""
    names = sorted({run.method for run in all_runs if _minimises_output_error(run)})
    if not names:
        return None
    return (
        f"{' and '.join(names)} {'minimise' if len(names) > 1 else 'minimises'} each layer's output error on "
        "calibration inputs, not weight error: weight SQNR below RTN's is expected (the output-error chart "
        f"above shows what {'they improve' if len(names) > 1 else 'it improves'})."
    )


def _clickable(targets: dict[str, list] | None, layers: list) -> dict:
    """Small markers carrying each layer's tensor customdata (`targets`: module path -> customdata), so
    that a click on a point selects it (plotly selects no points on a line without markers)."""
    if not targets:
        return dict(mode="lines")
    return dict(mode="lines+markers", marker=dict(size=4), customdata=[targets.get(r.name) for r in layers])


def per_layer_error(all_runs: list, targets: dict[str, list] | None = None) -> go.Figure:
    """Weight SQNR of every quantized linear, one line per method (higher is better), with a note on
    GPTQ / AWQ, whose weight SQNR is expected to sit below RTN's. `targets`: see `_clickable`."""
    figure = go.Figure()
    for index, run in enumerate(all_runs):
        layers = run.layers
        figure.add_scatter(
            x=[_layer_index(r.name) for r in layers],
            y=[r.weight_sqnr_db for r in layers],
            name=run.label,
            line=dict(color=COLORS[index % len(COLORS)], width=1.5),
            hovertemplate="%{x}: %{y:.1f} dB<extra>" + run.label + "</extra>",
            **_clickable(targets, layers),
        )
    figure.update_layout(
        height=360,
        xaxis=dict(title="layer.module", showticklabels=False),
        yaxis_title="SQNR (dB)",
        **frame("Weight SQNR per linear layer (dB, higher is closer to the original)"),
    )
    note = sqnr_note(all_runs)
    if note is not None:
        figure.add_annotation(
            text=note.replace(": ", ":<br>", 1),
            xref="paper",
            yref="paper",
            x=0,
            y=-0.1,
            xanchor="left",
            yanchor="top",
            showarrow=False,
            align="left",
        )
        figure.update_layout(height=420, margin=dict(l=10, r=10, t=50, b=80))
    return figure


def output_error(all_runs: list, targets: dict[str, list] | None = None) -> go.Figure | None:
    """Relative error of each layer's output on calibration inputs, for methods that measure it.
    `targets`: see `_clickable`."""
    measured = [r for r in all_runs if any(layer.output_error is not None for layer in r.layers)]
    if not measured:
        return None
    figure = go.Figure()
    for index, run in enumerate(measured):
        layers = [layer for layer in run.layers if layer.output_error is not None]
        figure.add_scatter(
            x=[_layer_index(r.name) for r in layers],
            y=[r.output_error for r in layers],
            name=run.label,
            line=dict(color=COLORS[index % len(COLORS)]),
            **_clickable(targets, layers),
        )
        rtn = [getattr(layer.detail, "rtn_output_error", None) for layer in layers]  # GPTQ, AWQ
        if all(v is not None for v in rtn):
            figure.add_scatter(
                x=[_layer_index(r.name) for r in layers],
                y=rtn,
                mode="lines",
                name=f"RTN on the same inputs ({run.label})",
                line=dict(color=COLORS[index % len(COLORS)], dash="dot"),
            )
    figure.update_layout(
        height=340,
        xaxis=dict(title="layer.module", showticklabels=False),
        yaxis=dict(title="relative error", type="log"),
        **frame(
            "Layer output error on calibration inputs (relative; lower is better; what GPTQ and AWQ minimise)"
        ),
    )
    return decade_ticks(figure)


def bar(names: list[str], values: list[float], title: str, y: str) -> go.Figure:
    figure = go.Figure(go.Bar(x=[_layer_index(n) for n in names], y=values, marker_color="#1f77b4"))
    figure.update_layout(title=title, height=300, margin=dict(l=10, r=10, t=50, b=10), yaxis_title=y)
    return figure


def curve(points: list, title: str, x: str, y: str, best: float | None = None) -> go.Figure:
    figure = go.Figure(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers"))
    if best is not None:
        figure.add_vline(
            x=best, line=dict(color="#d62728", dash="dash"), annotation_text=f"chosen {best:.2f}"
        )
    figure.update_layout(
        title=title, height=300, margin=dict(l=10, r=10, t=50, b=10), xaxis_title=x, yaxis_title=y
    )
    return figure


def maxima(before: list[float], after: list[float], layer: str) -> go.Figure:
    figure = go.Figure()
    figure.add_scatter(y=before, mode="lines", name="before smoothing", line=dict(color="#d62728"))
    figure.add_scatter(y=after, mode="lines", name="after smoothing", line=dict(color="#1f77b4"))
    figure.update_layout(
        height=320,
        xaxis_title="input channel",
        yaxis=dict(title="max |x|", type="log"),
        **frame(
            f"{layer}: per-channel max |X| of the input (the outliers SmoothQuant moves into the weights)"
        ),
    )
    return decade_ticks(figure)


def qat_curve(trace: QATTrace, title: str) -> go.Figure:
    """Training loss per step, the float and PTQ held-out losses as lines, QAT's held-out loss as a star."""
    steps = list(range(1, len(trace.train_loss) + 1))
    figure = go.Figure()
    figure.add_scatter(
        x=steps,
        y=trace.train_loss,
        mode="lines+markers",
        name="training loss (this step's window)",
        line=dict(color="#1f77b4"),
    )
    for value, name, color in (
        (trace.float_loss, "float, held-out", "#2ca02c"),
        (trace.ptq_loss, "PTQ (step 0), held-out", "#d62728"),
    ):
        figure.add_scatter(
            x=[0, len(steps)], y=[value, value], mode="lines", name=name, line=dict(color=color, dash="dash")
        )
    figure.add_scatter(
        x=[len(steps)],
        y=[trace.qat_loss],
        mode="markers",
        name="QAT, held-out",
        marker=dict(symbol="star", size=16, color="#9467bd"),
    )
    figure.update_layout(
        height=340,
        xaxis=dict(title="step", rangemode="tozero"),
        yaxis_title="next-token loss (nats)",
        **frame(title),
    )
    return figure
