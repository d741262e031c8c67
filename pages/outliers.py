"""Outliers: where the large values live in weights, activations and the KV cache, measured on real text."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from engine.analysis import outliers
from engine.analysis.stats import StatsError, histogram_edges
from engine.models.data import CORPORA, DataError, decode_upload
from ui import cache, page, state
from ui.cache import outliers as outlier_cache
from ui.errors import show_error
from ui.pages import outlier_charts as charts

page.start(
    "Outliers",
    "Run real text through the model and see which channels carry huge values: in the weights, in the "
    "inputs of every linear layer, in the residual stream and in the KV cache; which features meet the "
    "LLM.int8() outlier criteria; why KIVI quantizes keys per channel; and which tensors suffer most under "
    "the sidebar's scheme.",
)
loaded = cache.current_model_or_stop()

CORPUS_CHOICES = [*CORPORA, "upload"]
cols = st.columns([3, 1, 2, 1.4, 1.6], vertical_alignment="bottom")
corpus = cols[0].selectbox(
    "Text",
    CORPUS_CHOICES,
    format_func=lambda name: CORPORA.get(name, "Upload a text file"),
    key="outliers_corpus",
)
windows = cols[1].number_input("Windows", 1, 32, 8, key="outliers_windows")
window = cols[2].select_slider("Tokens per window", [64, 128, 256, 512, 1024], 256, key="outliers_window")
threshold = cols[3].number_input(
    "Outlier |x| ≥",
    0.5,
    100_000.0,
    6.0,
    step=0.5,
    key="outliers_threshold",
    help="LLM.int8() calls a feature an outlier when |x| ≥ 6.0. Changing it needs no new collection.",
)
REQUESTED = "outliers_collect_requested"  # set by the button's callback, so no rerun can lose the click
cols[4].button(
    "Collect statistics",
    type="primary",
    key="outliers_collect",
    width="stretch",
    on_click=lambda: st.session_state.update({REQUESTED: True}),
)

text = None
if corpus == "upload":
    upload = st.file_uploader(
        "Text file (UTF-8)", type=["txt", "md", "csv", "json", "py"], key="outliers_file"
    )
    if upload is None:
        st.info("Upload a plain-text file to collect statistics on your own text.", icon=":material/upload:")
        st.stop()
    try:
        text = decode_upload(upload.getvalue())
    except DataError as exc:
        show_error(exc)
        st.stop()

key = outlier_cache.stats_key(corpus, windows, window, text)
stats = outlier_cache.cached(key)
if stats is None:
    if not st.session_state.pop(REQUESTED, False):
        st.info(
            f"Press **Collect statistics** to run {int(windows)} windows × {window} tokens through "
            f"{loaded.source.label}: about 10–20 s on two CPU cores for 8 × 256; results are kept for "
            "every session.",
            icon=":material/play_arrow:",
        )
        st.stop()
    try:
        stats = outlier_cache.collect(key, text)  # the request was consumed above: a failure is not retried
    except (DataError, StatsError, ValueError) as exc:
        show_error(exc, prefix="Could not collect statistics. ")
        st.stop()

# -- headline ------------------------------------------------------------------------------------------
residual = outliers.residual_outliers(stats)
contrast = outliers.kv_contrast(stats)
top = residual[0]
key_ratio = sorted(row["key max/median"] for row in contrast)[len(contrast) // 2]
value_ratio = sorted(row["value max/median"] for row in contrast)[len(contrast) // 2]
metrics = st.columns(5)
metrics[0].metric("Residual outlier channel", f"#{top['channel']}")
metrics[1].metric("Its largest |x|", f"{top['max |x|']:,.0f}", help=f"at layer {top['at layer']}")
metrics[2].metric("× median channel", f"{top['× median']:,.0f}×", help="at that layer")
metrics[3].metric(
    "Key vs value spread",
    f"{key_ratio:.1f}× vs {value_ratio:.1f}×",
    help="Largest channel's abs-max over the median channel's, within a head; median over layers.",
)
metrics[4].metric("Tokens measured", f"{stats.tokens:,}", help=f"collected in {stats.seconds:.1f} s")
others = ", ".join(
    f"**#{row['channel']}** ({row['max |x|']:,.0f} at layer {row['at layer']})" for row in residual[1:]
)
st.markdown(
    f"Residual-stream channel **#{top['channel']}** reaches **{top['max |x|']:,.0f}** at layer "
    f"{top['at layer']}, {top['× median']:,.0f}× the median channel there; it is the largest channel in "
    f"{top['layers as top channel']} of {stats.layers} layers, and the largest value sits at token "
    f"{top['peak token position in window']} of its window"
    + (" (the first token, an attention sink)" if top["peak token position in window"] == 0 else "")
    + "."
    + (f" Next: {others}." if others else "")
)

weights_tab, activations_tab, kv_tab, sensitivity_tab = st.tabs(
    ["Weights", "Activations", "KV cache", "Sensitivity"]
)

# -- weights -------------------------------------------------------------------------------------------
with weights_tab:
    weights = outlier_cache.weights()
    statistic = st.radio(
        "Statistic", outliers.WEIGHT_STATISTICS, horizontal=True, key="outliers_w_stat", index=2
    )
    modules, layers, values = outliers.weight_matrix(weights, statistic)
    st.plotly_chart(
        charts.layer_heatmap(modules, layers, values, f"Weights: {statistic}", log=statistic == "abs-max"),
        width="stretch",
    )
    st.caption(
        "Bright cells are weights with a few dominant values or input channels: they stretch a per-tensor "
        "or per-row scale. Kurtosis is 3 for a Gaussian; 'max/median input channel' compares the largest "
        f"column abs-max with the median column (SmoothQuant's max |W_j|); kσ uses k = {weights[0].k:g}."
    )
    cols = st.columns([1, 2])
    layer = cols[0].selectbox("Layer", layers, key="outliers_w_layer")
    module = cols[1].radio("Weight", modules, horizontal=True, key="outliers_w_module")
    picked = next(w for w in weights if w.layer == layer and w.module == module)
    left, right = st.columns(2)
    left.plotly_chart(
        charts.channel_profile(
            picked.in_absmax,
            outliers.notable_channels(picked.in_absmax),
            f"{module} (layer {layer}): abs-max per input channel",
            "max |W[:, j]|",
        ),
        width="stretch",
    )
    right.plotly_chart(
        charts.channel_profile(
            picked.out_absmax,
            outliers.notable_channels(picked.out_absmax),
            f"{module} (layer {layer}): abs-max per output channel",
            "max |W[i, :]|",
        ),
        width="stretch",
    )
    st.caption(
        f"{picked.shape[0]}×{picked.shape[1]}: abs-max {picked.absmax:.3g}, kurtosis {picked.kurtosis:.1f}, "
        f"{100 * picked.beyond_k:.2f}% of weights beyond {picked.k:g}σ. Labelled channels are at least 3× "
        "the median channel: per-output-channel scales absorb tall rows, but a tall input column hurts "
        "every row's scale."
    )

# -- activations ---------------------------------------------------------------------------------------
with activations_tab:
    statistic = st.radio("Statistic", outliers.ACTIVATION_STATISTICS, horizontal=True, key="outliers_a_stat")
    labels, layers, values = outliers.site_matrix(stats, ("activation", "residual"), statistic, threshold)
    title = f"Activations: {statistic}" + (
        f" (|x| ≥ {threshold:g})" if statistic == "outlier channels" else ""
    )
    st.plotly_chart(
        charts.layer_heatmap(labels, layers, values, title, log=statistic in ("abs-max", "kurtosis")),
        width="stretch",
    )
    st.caption(
        "Rows are the inputs of the linear layers (q/k/v and gate/up share one input) and the residual "
        "stream after each layer. Watch the residual row: a handful of channels grow by orders of magnitude "
        "and the normalised inputs inherit outlier features from them."
    )

    st.subheader("LLM.int8() outlier features")
    table = outliers.llm_int8_outliers(stats, threshold)
    systematic = [row for row in table if row["systematic"]]
    if systematic:
        st.markdown(
            f"**{len(systematic)}** feature dimension(s) meet all three criteria (|x| ≥ {threshold:g} in "
            "≥ 25% of layers and ≥ 6% of token positions): "
            + ", ".join(
                f"**#{row['feature dim']}** ({row['% layers']:.0f}% of layers, {row['% tokens']:.0f}% of "
                f"tokens, max {row['max |x|']:.1f})"
                for row in systematic[:5]
            )
            + ". LLM.int8() keeps these columns in 16-bit and the rest in int8."
        )
    else:
        st.markdown(f"No feature meets all three criteria at |x| ≥ {threshold:g}.")
    if table:
        st.dataframe(
            pd.DataFrame(table[:40]).style.format(
                {"% layers": "{:.0f}", "% tokens": "{:.1f}", "max |x|": "{:.1f}"}
            ),
            hide_index=True,
            height=min(38 + 35 * len(table[:40]), 300),
            width="stretch",
        )
    st.caption(
        "Measured on the inputs of q/k/v and gate/up. % layers: layers where some token reaches the "
        "threshold in that dimension; % tokens: positions where any layer does."
    )

    st.subheader("Residual-stream outlier channels")
    st.dataframe(
        pd.DataFrame(residual).style.format(
            {"max |x|": "{:,.0f}", "median channel |x| there": "{:.1f}", "× median": "{:.0f}"}
        ),
        hide_index=True,
        width="stretch",
    )

    st.subheader("One layer, channel by channel")
    cols = st.columns([1, 3])
    layer = cols[0].selectbox(
        "Layer", list(range(stats.layers)), index=top["at layer"], key="outliers_a_layer"
    )
    in_layer = [
        site for site in stats.sites if site.layer == layer and site.kind in ("activation", "residual")
    ]
    site_label = cols[1].radio(
        "Tensor",
        [site.label for site in in_layer],
        index=len(in_layer) - 1,  # the residual stream: where the largest outliers live
        horizontal=True,
        key="outliers_a_site",
    )
    site = next(s for s in in_layer if s.label == site_label)
    reader = None
    if site.consumers:
        reader = next((w for w in weights if w.name == site.consumers[0] + ".weight"), None)
    st.plotly_chart(
        charts.channel_profile(
            site.absmax,
            outliers.notable_channels(site.absmax),
            f"Layer {layer}, {site.label}: abs-max per channel over {site.tokens:,} tokens (log scale)",
            "max |X[:, j]|",
            weight=None if reader is None else reader.in_absmax,
            weight_title="" if reader is None else f"max |W[:, j]|, {reader.module}",
            threshold=threshold,
            log=True,
        ),
        width="stretch",
    )
    st.caption(
        "SmoothQuant's picture: a few activation channels (labelled: at least 3× the median channel) tower "
        "over the rest, while the weight columns that read them (orange, shown for linear inputs) stay flat, "
        "so the outliers set every per-token activation scale. The dotted line is the threshold."
    )
    view = st.segmented_control("View", ["Heatmap", "3-D surface"], default="Heatmap", key="outliers_a_view")
    token_labels = outlier_cache.sample_tokens(key, stats)
    left, right = st.columns([3, 2])
    left.plotly_chart(
        charts.token_channel(
            site.sample,
            token_labels,
            f"|x| of the first {site.sample.shape[0]} tokens",
            view == "3-D surface",
        ),
        width="stretch",
    )
    right.plotly_chart(
        charts.magnitude_histogram(site.histogram, histogram_edges(), threshold, "All values: |x| histogram"),
        width="stretch",
    )
    st.caption(
        "Outlier channels show as bright columns that persist across tokens; an outlier token (often the "
        "first, which many heads use as an attention sink) shows as a bright row. The histogram's right tail "
        "is what a per-tensor scale must cover."
    )

# -- KV cache ------------------------------------------------------------------------------------------
with kv_tab:
    st.plotly_chart(charts.kv_contrast(contrast), width="stretch")
    st.caption(
        f"Keys (after RoPE) have fixed outlier channels: their largest channel is {key_ratio:.1f}× the "
        f"median one (median over layers) against {value_ratio:.1f}× for values. That is KIVI's "
        "observation: quantize keys per channel, values per token."
    )
    strongest = max(contrast, key=lambda row: row["key max/median"])["layer"]  # a telling default
    layer = st.selectbox("Layer", list(range(stats.layers)), index=strongest, key="outliers_kv_layer")
    key_site = next(s for s in stats.by_kind("key") if s.layer == layer)
    value_site = next(s for s in stats.by_kind("value") if s.layer == layer)
    st.plotly_chart(
        charts.kv_channels(key_site.absmax, value_site.absmax, key_site.heads, layer), width="stretch"
    )
    left, right = st.columns(2)
    left.plotly_chart(
        charts.token_channel(key_site.sample, token_labels, "keys: |x| of the first tokens", False),
        width="stretch",
    )
    right.plotly_chart(
        charts.token_channel(value_site.sample, token_labels, "values: |x| of the first tokens", False),
        width="stretch",
    )
    st.caption(
        "Key outlier channels are vertical stripes that hold across tokens; values have no such stripes."
    )

    st.subheader("Per-channel vs per-token quantization (KIVI)")
    summary = pd.DataFrame(outliers.kivi_summary(stats))
    pivot = summary.pivot_table(index=["tensor", "layout"], columns="bits", values="SQNR (dB)").sort_index(
        axis=1, ascending=False
    )
    pivot.columns = [f"int{bits}" for bits in pivot.columns]
    left, right = st.columns([2, 3])
    left.dataframe(pivot.style.format("{:.1f}"), width="stretch")
    gap4 = pivot.loc[("key", "per-channel"), "int4"] - pivot.loc[("key", "per-token"), "int4"]
    left.caption(
        f"SQNR in dB (higher is better). Asymmetric int; per token: one scale for a head's "
        f"{key_site.head_dim} channels of one token; per channel: one scale for {stats.kivi_block} tokens "
        f"of one channel. Averaged over layers and heads, on the first {stats.kivi_tokens:,} tokens. At 4 "
        f"bits, per-channel keys gain {gap4:.1f} dB over per-token keys."
    )
    right.plotly_chart(charts.kivi_bars(outliers.kivi_summary(stats, layer), layer), width="stretch")

# -- sensitivity ---------------------------------------------------------------------------------------
with sensitivity_tab:
    scheme = state.scheme()
    if scheme is None:
        st.warning("Pick a valid scheme in the sidebar to rank the tensors.", icon=":material/tune:")
    else:
        rows = outlier_cache.sensitivity(key, scheme, stats)
        worst = outliers.layer_sensitivity(rows)
        st.plotly_chart(charts.sensitivity(rows, worst, scheme.label), width="stretch")
        usable = [row for row in rows if not math.isnan(row["SQNR (dB)"])]
        if usable:
            first = usable[0]
            st.markdown(
                f"Under **{scheme.label}**, the most sensitive tensor is **{first['tensor']}** "
                f"({first['kind']}) in layer {first['layer']} at {first['SQNR (dB)']:.1f} dB: the first "
                "candidate to keep in higher precision. Activations are quantized per token, keys and values "
                "per token and head, on the first tokens of the first window."
            )
        frame = pd.DataFrame(rows)
        st.dataframe(
            frame.style.format({"SQNR (dB)": "{:.1f}"}), hide_index=True, height=360, width="stretch"
        )
        st.download_button(
            "Download the ranking (CSV)",
            frame.to_csv(index=False).encode(),
            file_name=f"sensitivity-{scheme.label.replace(' ', '_')}.csv",
            mime="text/csv",
            key="outliers_download",
            icon=":material/download:",
        )
