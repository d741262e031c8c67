"""The Outliers page's massive-activations tab: where the residual stream's huge values sit and the attention
sink they make.

On the page's token windows (ui/cache/outliers_origin.py runs engine.analysis.massive once per model and
text, after a click): per layer the largest |residual| against the median, the tokens that carry the massive
values, and a layer x head map of the attention on the first token.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pandas as pd
import streamlit as st
import torch

from engine.analysis.massive import MassiveActivations
from ui.cache import outliers_origin as origin
from ui.cache.models import load
from ui.cache.outliers import StatsKey
from ui.errors import show_error
from ui.pages import origin_charts as charts

ERRORS = (ValueError, MemoryError, torch.OutOfMemoryError)  # shown with show_error; the page stays up
SINK_SHARE = 0.25  # a layer whose heads put this much of their attention on the first token on average
CARRIERS_SHOWN = 40

EXPLAIN = (
    "A few residual-stream channels carry values thousands of times the median, almost always on the first "
    "token (sometimes on delimiters such as a full stop or a newline). Attention heads learn to park their "
    "attention on those tokens, an **attention sink**, and any per-tensor or per-token scale must stretch to "
    "cover them."
)


def token_label(tokenizer, token_id: int) -> str:
    """A token as it reads, quoted: leading spaces, "\\n" and special tokens stay visible."""
    if tokenizer is None:
        return f"token {token_id}"
    return repr(tokenizer.decode([int(token_id)]))


class MassiveSummary(NamedTuple):
    channels: list[int]  # massive channels, most tokens-and-layers first
    first_layer: int | None  # where the top channel first holds a massive value
    labels: dict[int, str]  # {layer: "#507"} where a massive layer's peak channel changes
    sink_from: int | None  # first layer whose heads average SINK_SHARE or more on the first token
    sink_low: float  # the lowest and highest layer averages from there on
    sink_high: float
    before: float  # the average over the layers before it


def summarise(m: MassiveActivations) -> MassiveSummary:
    channels = m.massive_channels()
    first = m.massive_layers(channels[0])[0] if channels else None
    massive_layers = [int(i) for i in (m.massive_count.sum(1) > 0).nonzero().flatten()]
    labels, previous = {}, None
    for layer in massive_layers:
        channel = int(m.peak_channel[layer])
        if channel != previous:
            labels[layer] = f"#{channel}"
        previous = channel
    per_layer = m.first_token_attention.mean(1)  # (layers,)
    above = (per_layer >= SINK_SHARE).nonzero().flatten()
    if not len(above):
        return MassiveSummary(channels, first, labels, None, 0.0, 0.0, float(per_layer.mean()))
    start = int(above[0])
    late = per_layer[start:]
    before = float(per_layer[:start].mean()) if start else float("nan")
    return MassiveSummary(channels, first, labels, start, float(late.min()), float(late.max()), before)


def carriers_table(m: MassiveActivations, tokenizer) -> pd.DataFrame:
    rows = []
    for carrier in m.carriers[:CARRIERS_SHOWN]:
        channel = carrier.channels[0]
        layers = m.massive_layers(channel)
        rows.append(
            {
                "token": token_label(tokenizer, carrier.token_id),
                "window": carrier.window,
                "position": carrier.position,
                "channels": ", ".join(f"#{c}" for c in carrier.channels[:4]),
                "massive in layers": carrier.layers,
                "its channel's layers": f"{layers[0]}–{layers[-1]}" if layers else "",
                "largest |x|": carrier.peak,
            }
        )
    return pd.DataFrame(rows)


def sink_caption(summary: MassiveSummary, layers: int) -> str:
    if summary.sink_from is None:
        return (
            f"No layer's heads put {SINK_SHARE:.0%} or more of their attention on the first token on average "
            f"({summary.before:.0%} over all layers): no attention sink on these windows."
        )
    before = (
        f", against {summary.before:.0%} in the layers before"
        if summary.sink_from and not math.isnan(summary.before)
        else ""
    )
    return (
        f"From layer {summary.sink_from} on (of {layers}), the heads put {summary.sink_low:.0%}–"
        f"{summary.sink_high:.0%} of their attention on the first token (average per layer){before}. A head with "
        "nothing useful to read parks its attention there; the first token's massive value is what makes it "
        "an easy target. Each cell is one head: the share of its attention that queries put on the first "
        "token, averaged over the window's queries and the windows."
    )


def _find_ui(key: StatsKey, text: str | None) -> MassiveActivations | None:
    found = origin.massive(key)
    if found is not None:
        return found
    clicked = st.button("Find massive activations", type="primary", key="outliers_massive_find")
    if not clicked:
        st.info(
            f"Press **Find massive activations** to run the page's {key.windows} × {key.window} token windows "
            "through the model once more, reading every layer's output and the attention probabilities: a few "
            "seconds on two CPU cores for 8 × 256.",
            icon=":material/play_arrow:",
        )
        return None
    try:
        return origin.find_massive(key, text)
    except ERRORS as exc:
        show_error(exc, prefix="Could not measure massive activations. ")
        return None


def massive_tab(key: StatsKey, text: str | None) -> None:
    st.markdown(EXPLAIN)
    m = _find_ui(key, text)
    if m is None:
        return
    tokenizer = load(key.source, key.device, key.dtype).tokenizer
    summary = summarise(m)
    if summary.channels:
        top = summary.channels[0]
        layers = m.massive_layers(top)
        metrics = st.columns(4)
        metrics[0].metric("Massive channel", f"#{top}", help="the channel holding the most massive values")
        metrics[1].metric(
            "First massive at layer", f"{summary.first_layer}", help=f"massive in {len(layers)} layers"
        )
        metrics[2].metric("Largest |x|", f"{float(m.peak.max()):,.0f}")
        metrics[3].metric(
            "On the first token", f"{m.first_token_share():.0%}", help="share of the massive values"
        )
    else:
        st.info(
            f"No massive activations on these windows: no residual value reaches |x| > {m.absolute:,.0f} and "
            f"{m.ratio:,.0f}× its layer's median. The chart below still shows each layer's largest value.",
            icon=":material/info:",
        )
    st.plotly_chart(
        charts.residual_peaks(
            m.peak.tolist(), m.median.tolist(), summary.labels, summary.first_layer, m.ratio
        ),
        width="stretch",
    )
    st.caption(
        f"A value counts as massive when |x| > {m.absolute:,.0f} and more than {m.ratio:,.0f}× the median |x| "
        f"of its layer's output (Sun et al. 2024); measured on {m.ids.numel():,} tokens in {m.seconds:.1f} s."
        + (
            f" Channel #{summary.channels[0]} appears at layer {summary.first_layer} and stays: the residual "
            "stream carries it to the last layer."
            if summary.channels
            else ""
        )
    )
    if summary.channels:
        st.subheader("Tokens that carry them")
        table = carriers_table(m, tokenizer)
        st.dataframe(table.style.format({"largest |x|": "{:,.0f}"}), hide_index=True, width="stretch")
        st.caption(
            "Position 0 is the first token of a window. 'Massive in layers' counts the layers whose output holds "
            "a massive value on this token; 'its channel's layers' is where its first channel is massive on any "
            "token."
        )
    st.subheader("The attention sink")
    st.plotly_chart(charts.sink_heatmap(m.first_token_attention.tolist()), width="stretch")
    st.caption(sink_caption(summary, m.layers))
