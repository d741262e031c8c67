"""The Outliers page's tabs: weights, activations, the KV cache and sensitivity.

`collection_ui` starts the statistics collection in the background (`ui.jobs`: other clicks, tabs and pages
leave it running) and draws it while it runs. Each other function draws one tab from a finished `Stats`
(and the plain values `summarise` derives from it); the page file (pages/outliers.py) reads the collection
form, gets the statistics through ui/cache/outliers.py and calls these inside `st.tabs`. Figures come from
ui/pages/outlier_charts.py.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pandas as pd
import streamlit as st

from engine.analysis import outliers
from engine.analysis.site_stats import SiteStats, Stats, histogram_edges
from ui import cache, clickthrough, jobs, state
from ui.cache import outliers as outlier_cache
from ui.errors import show_error
from ui.pages import outlier_charts as charts

COLLECT_JOB = "outliers_collect_job"  # this session's statistics collection (ui.jobs)
CLICK = "Click a cell or a bar to open that tensor on the Quantization grid. "


class Summary(NamedTuple):
    """What the headline and several tabs read from one Stats."""

    residual: list[dict]  # residual-stream outlier channels, largest first
    contrast: list[dict]  # per layer: key vs value channel spread
    key_ratio: float  # median over layers of the keys' largest channel / median channel
    value_ratio: float  # the same for values


def summarise(stats: Stats) -> Summary:
    residual = outliers.residual_outliers(stats)
    contrast = outliers.kv_contrast(stats)
    key_ratio = sorted(row["key max/median"] for row in contrast)[len(contrast) // 2]
    value_ratio = sorted(row["value max/median"] for row in contrast)[len(contrast) // 2]
    return Summary(residual, contrast, key_ratio, value_ratio)


def draw_collection(job: jobs.Job) -> None:
    """A running collection, from a fragment (`ui.jobs.watch`)."""
    snapshot = job.snapshot()
    st.progress(snapshot.fraction, text="Stopping…" if snapshot.stopped else snapshot.message)


def collection_ui(requested: bool, key: outlier_cache.StatsKey, loaded, text: str | None) -> bool:
    """Start collecting statistics for `key` when asked (refused, in words, while a collection runs);
    while one runs, its progress and Stop (True); after one failed, why."""
    if requested:
        stats = outlier_cache.registry()
        try:
            jobs.start(
                COLLECT_JOB,
                lambda job: outlier_cache.collect_in(job, stats, key, loaded, text),
                "statistics collection",
            )
        except jobs.JobRunning as exc:
            st.warning(str(exc), icon=":material/hourglass_top:")
    job = jobs.current(COLLECT_JOB)
    if job is not None and job.running:
        st.button(
            "Stop",
            icon=":material/stop:",
            key="outliers_stop",
            on_click=jobs.stop,
            args=(COLLECT_JOB,),
            help="Stop collecting; nothing is kept from an unfinished collection.",
        )
        jobs.watch(COLLECT_JOB, draw_collection)
        return True
    if (finished := jobs.finished(COLLECT_JOB)) is not None and finished.error is not None:
        show_error(finished.error, prefix="Could not collect statistics. ")
    return False


def weights_tab(weights: list[outliers.WeightStats]) -> None:
    statistic = st.radio(
        "Statistic", outliers.WEIGHT_STATISTICS, horizontal=True, key="outliers_w_stat", index=2
    )
    modules, layers, values = outliers.weight_matrix(weights, statistic)
    targets = {(w.module, w.layer): weight_point(w) for w in weights if w.layer is not None}
    figure = charts.layer_heatmap(
        modules, layers, values, f"Weights: {statistic}", statistic == "abs-max", targets
    )
    clicked = clickthrough.chart(st, figure, "outliers_w_heatmap")
    clickthrough.open_grid_on_click(clicked, "outliers:weights")
    st.caption(
        CLICK
        + "Bright cells are weights with a few dominant values or input channels: they stretch a per-tensor "
        "or per-row scale. Kurtosis is 3 for a Gaussian; 'max/median input channel' compares the largest "
        f"column abs-max with the median column (SmoothQuant's max |W_j|); kσ uses k = {weights[0].k:g}."
    )
    cols = st.columns([1, 2])
    layer = cols[0].selectbox("Layer", layers, key="outliers_w_layer")
    module = cols[1].radio("Weight", modules, horizontal=True, key="outliers_w_module")
    picked = next(w for w in weights if w.layer == layer and w.module == module)
    left, right = st.columns(2)
    for column, values, side, y_title, axis in (
        (left, picked.in_absmax, "input", "max |W[:, j]|", "column"),
        (right, picked.out_absmax, "output", "max |W[i, :]|", "row"),
    ):
        title = f"{module} (layer {layer}): abs-max per {side} channel"
        points = [weight_point(picked, **{axis: index}) for index in range(len(values))]
        figure = charts.channel_profile(
            values, outliers.notable_channels(values), title, y_title, points=points
        )
        clicked = clickthrough.chart(column, figure, f"outliers_w_{side}_channels")
        clickthrough.open_grid_on_click(clicked, "outliers:weight-channels")
    st.caption(
        f"{picked.shape[0]}×{picked.shape[1]}: abs-max {picked.absmax:.3g}, kurtosis {picked.kurtosis:.1f}, "
        f"{100 * picked.beyond_k:.2f}% of weights beyond {picked.k:g}σ. Labelled channels are at least 3× "
        "the median channel: per-output-channel scales absorb tall rows, but a tall input column hurts "
        "every row's scale."
    )


def weight_point(w: outliers.WeightStats, row: int | None = None, column: int | None = None) -> list:
    """The customdata of a chart point that stands for weight `w` (or one of its rows / columns)."""
    return weight_point_of(w.layer, w.module, w.shape, row, column)


def weight_point_of(layer, module: str, shape, row: int | None = None, column: int | None = None) -> list:
    return clickthrough.tensor_customdata("weight", layer, module, shape, row, column)


def site_point(site: SiteStats, column: int | None = None) -> list | None:
    """The customdata of a chart point that stands for `site` (None: no sample to show on the grid)."""
    if not site.sample.numel():
        return None
    return clickthrough.tensor_customdata("site", site.layer, site.name, site.sample.shape, None, column)


def llm_int8_section(stats: Stats, threshold: float) -> None:
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


def channel_section(
    stats: Stats,
    weights: list[outliers.WeightStats],
    token_labels: list[str],
    threshold: float,
    start_layer: int,
) -> None:
    """One layer's activation tensor, channel by channel, with the weight columns that read it."""
    st.subheader("One layer, channel by channel")
    cols = st.columns([1, 3])
    layer = cols[0].selectbox("Layer", list(range(stats.layers)), index=start_layer, key="outliers_a_layer")
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
    channels = range(site.channels)
    figure = charts.channel_profile(
        site.absmax,
        outliers.notable_channels(site.absmax),
        f"Layer {layer}, {site.label}: abs-max per channel over {site.tokens:,} tokens (log scale)",
        "max |X[:, j]|",
        weight=None if reader is None else reader.in_absmax,
        weight_title="" if reader is None else f"max |W[:, j]|, {reader.module}",
        threshold=threshold,
        log=True,
        points=[site_point(site, j) for j in channels] if site.sample.numel() else None,
        weight_points=None if reader is None else [weight_point(reader, column=j) for j in channels],
    )
    clicked = clickthrough.chart(st, figure, "outliers_a_channels")
    clickthrough.open_grid_on_click(clicked, "outliers:activation-channels")
    st.caption(
        CLICK
        + "SmoothQuant's picture: a few activation channels (labelled: at least 3× the median channel) tower "
        "over the rest, while the weight columns that read them (orange, shown for linear inputs) stay flat, "
        "so the outliers set every per-token activation scale. The dotted line is the threshold."
    )
    view = st.segmented_control("View", ["Heatmap", "3-D surface"], default="Heatmap", key="outliers_a_view")
    left, right = st.columns([3, 2])
    title = f"|x| of the first {site.sample.shape[0]} tokens"
    left.plotly_chart(
        charts.token_channel(site.sample, token_labels, title, view == "3-D surface"), width="stretch"
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


def activations_tab(
    stats: Stats,
    summary: Summary,
    weights: list[outliers.WeightStats],
    token_labels: list[str],
    threshold: float,
) -> None:
    statistic = st.radio("Statistic", outliers.ACTIVATION_STATISTICS, horizontal=True, key="outliers_a_stat")
    labels, layers, values = outliers.site_matrix(stats, ("activation", "residual"), statistic, threshold)
    title = f"Activations: {statistic}" + (
        f" (|x| ≥ {threshold:g})" if statistic == "outlier channels" else ""
    )
    targets = {
        (site.label, site.layer): site_point(site)
        for site in stats.sites
        if site.kind in ("activation", "residual") and site.sample.numel()
    }
    figure = charts.layer_heatmap(
        labels, layers, values, title, statistic in ("abs-max", "kurtosis"), targets
    )
    clicked = clickthrough.chart(st, figure, "outliers_a_heatmap")
    clickthrough.open_grid_on_click(clicked, "outliers:activations")
    st.caption(
        CLICK
        + "Rows are the inputs of the linear layers (q/k/v and gate/up share one input) and the residual "
        "stream after each layer. Watch the residual row: a handful of channels grow by orders of magnitude "
        "and the normalised inputs inherit outlier features from them."
    )
    llm_int8_section(stats, threshold)
    st.subheader("Residual-stream outlier channels")
    st.dataframe(
        pd.DataFrame(summary.residual).style.format(
            {"max |x|": "{:,.0f}", "median channel |x| there": "{:.1f}", "× median": "{:.0f}"}
        ),
        hide_index=True,
        width="stretch",
    )
    channel_section(stats, weights, token_labels, threshold, summary.residual[0]["at layer"])


def kv_tab(stats: Stats, summary: Summary, token_labels: list[str]) -> None:
    contrast = summary.contrast
    st.plotly_chart(charts.kv_contrast(contrast), width="stretch")
    st.caption(
        f"Keys (after RoPE) have fixed outlier channels: their largest channel is {summary.key_ratio:.1f}× "
        f"the median one (median over layers) against {summary.value_ratio:.1f}× for values. That is KIVI's "
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
    for column, site, name in ((left, key_site, "keys"), (right, value_site, "values")):
        column.plotly_chart(
            charts.token_channel(site.sample, token_labels, f"{name}: |x| of the first tokens", False),
            width="stretch",
        )
    st.caption(
        "Key outlier channels are vertical stripes that hold across tokens; values have no such stripes."
    )

    st.subheader("Per-channel vs per-token quantization (KIVI)")
    pivot = pd.DataFrame(outliers.kivi_summary(stats)).pivot_table(
        index=["tensor", "layout"], columns="bits", values="SQNR (dB)"
    )
    pivot = pivot.sort_index(axis=1, ascending=False)
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


def sensitivity_points(rows: list[dict], stats: Stats) -> list[tuple[dict, list | None]]:
    """Each ranking row with the customdata of its tensor (a weight by its module, an activation, key or
    value by its statistics site)."""
    sites = {site.name: site for site in stats.sites}
    shapes = {w.name: w.shape for w in cache.weight_list()}
    points = []
    for row in rows:
        if row["kind"] == "weight":
            shape = shapes.get(row["name"] + ".weight")
            point = None if shape is None else weight_point_of(row["layer"], row["tensor"], shape)
        else:
            point = site_point(sites[row["name"]]) if row["name"] in sites else None
        points.append((row, point))
    return points


def sensitivity_tab(key: outlier_cache.StatsKey, stats: Stats) -> None:
    scheme = state.scheme()
    if scheme is None:
        st.warning("Pick a valid scheme in the sidebar to rank the tensors.", icon=":material/tune:")
        return
    rows = [
        dict(row, target=point)
        for row, point in sensitivity_points(outlier_cache.sensitivity(key, scheme, stats), stats)
    ]
    worst = outliers.layer_sensitivity(rows)
    clicked = clickthrough.chart(
        st, charts.sensitivity(rows, worst, scheme.label), "outliers_sensitivity_chart"
    )
    clickthrough.open_grid_on_click(clicked, "outliers:sensitivity")
    usable = [row for row in rows if not math.isnan(row["SQNR (dB)"])]
    if usable:
        first = usable[0]
        st.markdown(
            f"Under **{scheme.label}**, the most sensitive tensor is **{first['tensor']}** "
            f"({first['kind']}) in layer {first['layer']} at {first['SQNR (dB)']:.1f} dB: the first "
            "candidate to keep in higher precision. Activations are quantized per token, keys and values "
            "per token and head, on the first tokens of the first window."
        )
    frame = pd.DataFrame(rows).drop(columns="target")
    st.caption(CLICK.replace("a cell or a bar", "a point or a row"))
    picked = st.dataframe(
        frame.style.format({"SQNR (dB)": "{:.1f}"}),
        hide_index=True,
        height=360,
        width="stretch",
        key="outliers_sensitivity_table",
        on_select="rerun",
        selection_mode="single-row",
    )
    chosen = picked.selection.rows if picked is not None else []
    if chosen:
        point = {"customdata": rows[chosen[0]]["target"]}
        clickthrough.open_grid_on_click({"selection": {"points": [point]}}, "outliers:sensitivity")
    st.download_button(
        "Download the ranking (CSV)",
        frame.to_csv(index=False).encode(),
        file_name=f"sensitivity-{scheme.label.replace(' ', '_')}.csv",
        mime="text/csv",
        key="outliers_download",
        icon=":material/download:",
    )
