"""Plotly figures for the Outliers page. Each takes plain values from engine.analysis.outliers; no statistics here."""

from __future__ import annotations

import html
import math

import numpy
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ui import clickthrough
from ui.charts import CLIP_COLOR, VALUE_COLOR, layout

HEAD_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
KIND_COLORS = {"weight": "#1f77b4", "activation": "#ff7f0e", "key": "#2ca02c", "value": "#9467bd"}
LAYOUT_COLORS = {"per-channel": "#2ca02c", "per-token": "#d62728"}
KEY_COLOR, VALUE_KV_COLOR = "#2ca02c", "#9467bd"
TOKEN_TICKS = 32  # labelled token rows at most on the heatmap
HOTTEST_TOKENS = 3  # at most this many outlier rows (largest |x| ≥ 3× the median row's) always labelled


def layer_heatmap(
    labels: list[str], layers: list[int], values, title: str, log: bool, targets: dict | None = None
) -> go.Figure:
    """Rows are tensors, columns are layers; `log` colours by log10 (hover shows the real value). `targets`:
    {(label, layer): tensor customdata} of the cells a click opens on the grid page."""
    raw = values.tolist()
    shown = [[math.log10(v) if log and v and v > 0 else v for v in row] for row in raw]
    figure = go.Figure(
        go.Heatmap(
            z=shown,
            x=layers,
            y=labels,
            customdata=raw,
            colorscale="Viridis",
            colorbar=dict(title="log10" if log else "", thickness=12),
            hovertemplate="layer %{x}<br>%{y}<br>%{customdata:.4g}<extra></extra>",
        )
    )
    figure.update_yaxes(autorange="reversed")
    figure.update_xaxes(dtick=1 if len(layers) <= 32 else None)
    if targets:
        cells = [
            (layer, label, [*data, raw[labels.index(label)][layers.index(layer)]])
            for (label, layer), data in targets.items()
        ]
        clickthrough.selectable_cells(
            figure,
            cells,
            "layer %{x}<br>%{y}<br>%{customdata[7]:.4g}<br>click to open it on the Quantization grid<extra></extra>",
        )
    return layout(figure, title, "layer", "", height=110 + 34 * len(labels))


def channel_profile(
    values,
    notable: list[int],
    title: str,
    y_title: str,
    weight=None,
    weight_title: str = "",
    threshold: float | None = None,
    log: bool = False,
    points: list | None = None,
    weight_points: list | None = None,
) -> go.Figure:
    """Per-channel magnitudes as bars, notable channels labelled by index; with `weight`, the abs-max of
    the weight columns that read each channel below it on the same channel axis (SmoothQuant's picture).
    `points` / `weight_points`: each bar's tensor customdata, for a click to open it on the grid page."""
    rows = 2 if weight is not None else 1
    figure = make_subplots(
        rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.65, 0.35][:rows] or None
    )
    figure.add_bar(
        y=values.numpy(),
        name=y_title,
        marker_color=VALUE_COLOR,
        customdata=points,
        hovertemplate="channel %{x}<br>%{y:.4g}<extra></extra>",
        row=1,
        col=1,
    )
    for channel in notable:
        value = float(values[channel])
        figure.add_annotation(
            x=channel,
            y=math.log10(value) if log and value > 0 else value,  # log axes place annotations in log10
            text=f"#{channel}",
            showarrow=True,
            arrowhead=0,
            ay=-22,
            font=dict(color=CLIP_COLOR),
            row=1,
            col=1,
        )
    if threshold is not None:
        figure.add_hline(y=threshold, line_dash="dot", line_color=CLIP_COLOR, row=1, col=1)
    figure.update_yaxes(title_text=y_title, type="log" if log else "linear", row=1, col=1)
    if weight is not None:
        figure.add_bar(
            y=weight.numpy(),
            name=weight_title,
            marker_color="#ff7f0e",
            customdata=weight_points,
            hovertemplate="channel %{x}<br>%{y:.4g}<extra></extra>",
            row=2,
            col=1,
        )
        figure.update_yaxes(title_text=weight_title, row=2, col=1)
    layout(figure, title, "", "", height=420 if weight is not None else 340)
    figure.update_xaxes(title_text="channel", row=rows, col=1)
    figure.update_yaxes(title_text=y_title, row=1, col=1)
    return figure


def token_label(index: int, text: str) -> str:
    """A token row's name: its position and its text, shortened and escaped for plotly ("3 ▸ the")."""
    text = text.strip() or "␣"
    short = text if len(text) <= 12 else text[:11] + "…"
    return f"{index} ▸ {html.escape(short, quote=False)}"


def labelled_rows(peaks, limit: int) -> list[int]:
    """Which token rows get a tick label: all when they fit, else an even spread that always includes the
    outlier tokens, up to HOTTEST_TOKENS rows whose largest |x| is at least 3× the median row's (a spread
    row too close to one of those gives way)."""
    n = len(peaks)
    if n <= limit:
        return list(range(n))
    step = math.ceil(n / limit)
    order = numpy.argsort(-peaks, kind="stable")[:HOTTEST_TOKENS].tolist()
    hottest = {i for i in order if peaks[i] >= 3 * numpy.median(peaks)}
    spread = {i for i in range(0, n, step) if all(abs(i - h) >= step for h in hottest)}
    return sorted(hottest | spread)


def token_channel(sample, token_labels: list[str], title: str, surface: bool) -> go.Figure:
    """|x| of the sampled tokens × every channel: a heatmap coloured by log10 |x|, or a linear 3-D surface
    where outlier channels stand up as ridges (SmoothQuant's Figure 4). Token rows are named by position and
    text ("3 ▸ the"); with many rows an even spread of them, always including the hottest tokens."""
    z = sample.abs().numpy()  # (tokens, channels); numpy arrays skip plotly's per-element validation
    if surface:  # 3-D tick labels crowd: the token axis is the position, as on the heatmap's labels
        figure = go.Figure(go.Surface(z=z, colorscale="Viridis", showscale=False))
        figure.update_layout(
            scene=dict(xaxis_title="channel", yaxis_title="token position", zaxis_title="|x|"),
            scene_camera=dict(eye=dict(x=1.6, y=-1.6, z=0.9)),
        )
        return layout(figure, title, "", "", height=480)
    names = [token_label(i, token_labels[i] if i < len(token_labels) else "") for i in range(z.shape[0])]
    rows = labelled_rows(z.max(axis=1) if z.size else numpy.zeros(z.shape[0]), TOKEN_TICKS)
    figure = go.Figure(
        go.Heatmap(
            z=numpy.log10(numpy.maximum(z, 1e-3)),  # log colour: one huge value must not blank the rest
            customdata=z,
            y=names,
            colorscale="Viridis",
            colorbar=dict(title="log10 |x|", thickness=12),
            hovertemplate="channel %{x}<br>token %{y}<br>|x| %{customdata:.4g}<extra></extra>",
        )
    )
    figure.update_yaxes(
        autorange="reversed",
        tickmode="array",
        tickvals=[names[i] for i in rows],
        ticktext=[names[i] for i in rows],
        tickfont=dict(size=10),
    )
    return layout(figure, title, "channel", "", height=480)


def magnitude_histogram(counts, edges, threshold: float | None, title: str) -> go.Figure:
    """The collected |x| histogram on log axes; bin 0 (zeros and tiny values) is left out."""
    counts, edges = counts.tolist(), edges.tolist()
    used = [i for i in range(1, len(counts)) if counts[i]]
    figure = go.Figure()
    if used:
        lo, hi = used[0], used[-1] + 1
        figure.add_bar(
            x=[math.sqrt(edges[i] * edges[i + 1]) for i in range(lo, hi)],
            y=counts[lo:hi],
            width=[edges[i + 1] - edges[i] for i in range(lo, hi)],
            marker_color=VALUE_COLOR,
            name="values",
            hovertemplate="|x| ≈ %{x:.3g}<br>%{y:,} values<extra></extra>",
        )
    if threshold is not None:
        figure.add_vline(x=threshold, line_dash="dot", line_color=CLIP_COLOR)
    figure.update_xaxes(type="log")
    figure.update_yaxes(type="log")
    return layout(figure, title, "|x|", "values", height=320)


def kv_channels(key_absmax, value_absmax, heads: int, layer: int) -> go.Figure:
    """Keys and values side by side: abs-max per channel, coloured by KV head."""
    figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.08)
    head_dim = key_absmax.numel() // heads
    for col, values in ((1, key_absmax), (2, value_absmax)):
        for head in range(heads):
            part = values[head * head_dim : (head + 1) * head_dim].tolist()
            figure.add_bar(
                x=list(range(head * head_dim, (head + 1) * head_dim)),
                y=part,
                marker_color=HEAD_COLORS[head % len(HEAD_COLORS)],
                name=f"head {head}",
                legendgroup=f"head {head}",
                showlegend=col == 1,
                hovertemplate=f"head {head}" + "<br>channel %{x}<br>abs-max %{y:.4g}<extra></extra>",
                row=1,
                col=col,
            )
    layout(figure, f"Layer {layer}: abs-max per channel", "", "", height=360)
    figure.update_xaxes(title_text="keys (after RoPE): channel = head × head_dim + d", col=1)
    figure.update_xaxes(title_text="values: channel = head × head_dim + d", col=2)
    figure.update_yaxes(title_text="abs-max", col=1)
    return figure


def kv_contrast(rows: list[dict]) -> go.Figure:
    figure = go.Figure()
    layers = [row["layer"] for row in rows]
    for name, color in (("key", KEY_COLOR), ("value", VALUE_KV_COLOR)):
        figure.add_scatter(
            x=layers,
            y=[row[f"{name} max/median"] for row in rows],
            mode="lines+markers",
            name=f"{name}s",
            line_color=color,
            hovertemplate="layer %{x}<br>%{y:.2f}×<extra>" + name + "s</extra>",
        )
    figure.add_hline(y=1, line_color="gray", line_dash="dot")
    return layout(
        figure, "Largest channel ÷ median channel (abs-max, mean over heads)", "layer", "ratio", height=320
    )


def kivi_bars(rows: list[dict], layer: int) -> go.Figure:
    """SQNR of keys and values quantized per channel vs per token, per bit width and head."""
    figure = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.05)
    for col, tensor in ((1, "key"), (2, "value")):
        for kv_layout, color in LAYOUT_COLORS.items():
            subset = [r for r in rows if r["tensor"] == tensor and r["layout"] == kv_layout]
            figure.add_bar(
                x=[[f"int{r['bits']}" for r in subset], [f"h{r['head']}" for r in subset]],
                y=[r["SQNR (dB)"] for r in subset],
                name=kv_layout,
                marker_color=color,
                legendgroup=kv_layout,
                showlegend=col == 1,
                hovertemplate="%{x}<br>%{y:.1f} dB<extra>" + kv_layout + "</extra>",
                row=1,
                col=col,
            )
    figure.update_layout(barmode="group")
    layout(figure, f"Layer {layer}: KV quantization error by layout (higher is better)", "", "", 380)
    figure.update_xaxes(title_text="keys", col=1)
    figure.update_xaxes(title_text="values", col=2)
    figure.update_yaxes(title_text="SQNR (dB)", col=1)
    return figure


def sensitivity(rows: list[dict], worst: list[dict], scheme_label: str) -> go.Figure:
    """Every tensor's SQNR by layer, one colour per kind; the line joins each layer's worst tensor."""
    figure = go.Figure()
    offsets = {"weight": -0.24, "activation": -0.08, "key": 0.08, "value": 0.24}
    for kind, color in KIND_COLORS.items():
        subset = [r for r in rows if r["kind"] == kind and r["SQNR (dB)"] == r["SQNR (dB)"]]
        if not subset:
            continue
        figure.add_scatter(
            x=[r["layer"] + offsets[kind] for r in subset],
            y=[r["SQNR (dB)"] for r in subset],
            mode="markers",
            name=kind,
            marker=dict(color=color, size=7),
            text=[r["tensor"] for r in subset],
            customdata=[r.get("target") for r in subset],  # the tensor a click opens on the grid page
            hovertemplate="%{text}<br>%{y:.1f} dB<extra>" + kind + "</extra>",
        )
    by_layer: dict[int, float] = {}
    for row in worst:
        by_layer[row["layer"]] = min(by_layer.get(row["layer"], math.inf), row["SQNR (dB)"])
    figure.add_scatter(
        x=sorted(by_layer),
        y=[by_layer[layer] for layer in sorted(by_layer)],
        mode="lines",
        line=dict(color="gray", dash="dot"),
        name="worst in layer",
        hoverinfo="skip",
    )
    return layout(figure, f"SQNR under {scheme_label} (lower = more sensitive)", "layer", "SQNR (dB)", 380)
