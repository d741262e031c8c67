"""The Learn page's "Today's formats" tab: block scales, the E2M1 element, the scale's own format (MXFP4 vs
NVFP4), llama.cpp's k-quants and a bits-per-weight table, all measured on one real weight of the sidebar's
model (engine/lessons/formats.py). The tab's draw function and its charts live here; pages/learn.py only
registers the tab."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from engine.lessons import FormatsLesson, super_block_layouts
from engine.lessons.formats import (
    BLOCK,
    CODES,
    FP16,
    OUTLIER_SCHEMES,
    SUB_SCALES,
    ElementLesson,
    OutlierRow,
    ScaleLesson,
    table_takeaway,
)
from engine.models.sources import ModelSourceError
from ui import state
from ui.cache import lessons as lesson_cache
from ui.cache import tensors
from ui.charts import layout
from ui.errors import show_error
from ui.pages.learn import takeaway
from ui.pages.lesson_charts import histogram_over_levels

SCHEME_COLORS = {"int4 channel": "#7f7f7f", "int4 g32": "#1f77b4", "int4 g16": "#2ca02c"}
GRID_COLORS = {"int4": "#1f77b4", "E2M1": "#d62728"}
SCALE_COLORS = {"MXFP4": "#ff7f0e", "NVFP4": "#2ca02c"}
PART_COLORS = {CODES: "#9ecae1", SUB_SCALES: "#ff7f0e", FP16: "#d62728"}


# -- charts --------------------------------------------------------------------------------------------


def outlier_blocks(lesson: OutlierRow) -> go.Figure:
    figure = go.Figure()
    for label in OUTLIER_SCHEMES:
        errors = lesson.block_error[label].numpy()
        figure.add_scatter(
            x=list(range(len(errors))),
            y=errors,
            mode="lines+markers",
            name=label,
            line_color=SCHEME_COLORS[label],
            hovertemplate=f"{label}<br>block %{{x}}: MSE %{{y:.3g}}<extra></extra>",
        )
    figure.add_vline(
        x=lesson.outlier_block, line_dash="dot", annotation_text="the outlier's block", line_color="#d62728"
    )
    figure.update_yaxes(type="log")
    return layout(
        figure, f"Error of each block of {BLOCK} in row {lesson.row}", f"block of {BLOCK} in the row", "MSE"
    )


def element_levels(lesson: ElementLesson) -> go.Figure:
    return histogram_over_levels(
        lesson.values.numpy(),
        lesson.levels,
        GRID_COLORS,
        f"This weight's values (block max = {lesson.top:g}) and each grid's 15 levels",
        f"value ÷ block absmax × {lesson.top:g}",
    )


def scale_landing(lesson: ScaleLesson) -> go.Figure:
    figure = go.Figure()
    for row in lesson.rows:
        if row.name in SCALE_COLORS:
            figure.add_histogram(
                x=row.ratios.numpy(),
                name=row.name,
                histnorm="probability",
                xbins=dict(start=3.9, end=8.1, size=0.05),
                marker_color=SCALE_COLORS[row.name],
                opacity=0.7,
            )
    top = lesson.row("mxfp4").top
    figure.add_vline(x=top, line_dash="dot", annotation_text=f"largest element ({top:g})")
    figure.update_layout(barmode="overlay")
    return layout(
        figure, "Where each block's max lands before rounding", "block max ÷ its scale", "share of blocks"
    )


def super_blocks() -> go.Figure:
    figure = go.Figure()
    shown = set()
    for name, parts in super_block_layouts().items():
        for kind, bits in parts:
            figure.add_bar(
                y=[name],
                x=[bits],
                orientation="h",
                name=kind,
                legendgroup=kind,
                showlegend=kind not in shown,
                marker=dict(color=PART_COLORS[kind], line=dict(color="white", width=1)),
                hovertemplate=f"{name}: {kind}, {bits} bits<extra></extra>",
            )
            shown.add(kind)
    figure.update_layout(barmode="stack")
    return layout(figure, "256 weights in Q4_K and in Q4_0: 1,152 bits each", "bits", "", height=260)


# -- the tab -------------------------------------------------------------------------------------------


def _weight_key() -> tensors.WeightKey | None:
    try:
        names = lesson_cache.real_projection_names()
    except (ModelSourceError, ValueError) as exc:
        show_error(exc, prefix="This lesson measures a real weight, and the model could not be read: ")
        return None
    layer = st.slider("Layer", 0, len(names) - 1, min(3, len(names) - 1), key="learn_fmt_layer")
    return tensors.WeightKey(*state.selection(), f"{names[layer]}.weight")


def formats_tab() -> None:
    st.markdown(
        "Today's 4-bit formats share one idea, a scale per small block, and differ in the element (int4 or "
        "the tiny float E2M1) and in how the scale itself is stored. Each part below is measured on one real "
        "weight of the model in the sidebar: the MLP output projection of the layer you pick."
    )
    key = _weight_key()
    if key is None:
        return
    try:
        lesson = lesson_cache.formats(key)
    except ValueError as exc:
        show_error(exc)
        return
    st.caption(f"Weight: {lesson.name}, {lesson.shape[0]:,} rows of {lesson.shape[1]:,} values.")
    _block_scales(lesson)
    _element(lesson)
    _scale_format(lesson)
    _kquants(lesson)
    _table(lesson)


def _block_scales(lesson: FormatsLesson) -> None:
    st.subheader("1. Why block scales")
    st.markdown(
        "The largest value sharing a scale sets the grid's step. With one scale per row (per channel), a "
        "single outlier coarsens the step for the whole row; with a scale per 32 or 16 values it only "
        "coarsens its own block."
    )
    st.plotly_chart(outlier_blocks(lesson.outlier), width="stretch")
    takeaway(lesson.outlier.takeaway)


def _element(lesson: FormatsLesson) -> None:
    element = lesson.element
    st.subheader("2. The E2M1 element")
    st.markdown(
        "FP4's element E2M1 is a tiny float: its 8 magnitudes are 0, 0.5, 1, 1.5, 2, 3, 4 and 6, so steps "
        "are 0.5 near zero and 2 at the top. int4 spaces 15 levels evenly. With each block's largest value "
        "mapped to the top level (fp32 scales here, so only the element differs), the float grid is finer "
        "where most weights sit and coarser where the few large ones sit."
    )
    st.caption(
        f"Measured on {element.rows} evenly spaced rows of {lesson.shape[0]:,}; the inner half is values "
        f"under {element.top / 2:g} on this scale."
    )
    left, right = st.columns([3, 2])
    left.plotly_chart(element_levels(element), width="stretch")
    right.dataframe(
        pd.DataFrame(
            {
                "grid": list(element.levels),
                "step at 0": [element.step(name, "zero") for name in element.levels],
                "step at the top": [element.step(name, "top") for name in element.levels],
                "MSE, inner half": [element.mse_inner[name] for name in element.levels],
                "MSE, outer half": [element.mse_outer[name] for name in element.levels],
            }
        ),
        hide_index=True,
        width="stretch",
        column_config={
            name: st.column_config.NumberColumn(format="%.3g")
            for name in ("step at 0", "step at the top", "MSE, inner half", "MSE, outer half")
        },
    )
    takeaway(element.takeaway)


def _scale_format(lesson: FormatsLesson) -> None:
    scales = lesson.scales
    st.subheader("3. The scale's own format")
    st.markdown(
        "MXFP4 stores each block's scale as E8M0, a bare power of two: 2 to the power of (floor(log2 of the "
        "block max) − 2). The block max then lands anywhere from 4 to 8 on the element scale: above 6 it is "
        "clipped to 6, at 5 or below it rounds to 4 and the top code goes unused. NVFP4 stores an E4M3 scale "
        "per 16 values, times one FP32 scale for the whole tensor, so the max lands within a few percent "
        "of 6."
    )
    left, right = st.columns([3, 2])
    left.plotly_chart(scale_landing(scales), width="stretch")
    right.dataframe(
        pd.DataFrame(
            {
                "format": [r.name for r in scales.rows],
                "scale": [r.scale_format for r in scales.rows],
                "max lands on": [
                    ", ".join(f"{v:g} ({s:.0%})" for v, s in sorted(r.landed.items(), reverse=True))
                    for r in scales.rows
                ],
                "max clipped": [r.saturated for r in scales.rows],
                "top code unused": [r.wasted for r in scales.rows],
                "worst clip": [r.worst_clip for r in scales.rows],
                "bits/weight": [r.bits_per_weight for r in scales.rows],
                "SQNR (dB)": [r.sqnr_db for r in scales.rows],
            }
        ).style.format(
            {
                "max clipped": "{:.0%}",
                "top code unused": "{:.0%}",
                "worst clip": "{:.1%}",
                "bits/weight": "{:.3f}",
                "SQNR (dB)": "{:.1f}",
            }
        ),
        hide_index=True,
        width="stretch",
    )
    st.caption("Shares of blocks. int4 g32 maps every block's max to its top code 7 with an FP16 scale.")
    takeaway(scales.takeaway)


def _kquants(lesson: FormatsLesson) -> None:
    st.subheader("4. llama.cpp's k-quants")
    st.markdown(
        "Q4_K groups 256 weights into a super-block of 8 sub-blocks of 32; each sub-block gets its own scale "
        "and minimum, stored in only 6 bits against the super-block's two FP16 numbers (d and dmin). That "
        "buys a minimum per 32 values and searched scales for the bits Q4_0 spends on one FP16 scale per 32: "
        "both cost 4.5 bits per weight."
    )
    st.plotly_chart(super_blocks(), width="stretch")
    kquant = lesson.kquant
    if kquant is None:
        st.caption(f"Not measured on this weight: {lesson.kquant_refusal}")
        return
    cols = st.columns(4)
    cols[0].metric("Q4_0 SQNR, this weight", f"{kquant.real['Q4_0']:.1f} dB")
    cols[1].metric("Q4_K SQNR, this weight", f"{kquant.real['Q4_K']:.1f} dB")
    cols[2].metric("Q4_0 SQNR, fresh values", f"{kquant.fresh['Q4_0']:.1f} dB")
    cols[3].metric("Q4_K SQNR, fresh values", f"{kquant.fresh['Q4_K']:.1f} dB")
    note = (
        f" This weight was already stored on a low-bit grid: {kquant.prior_grid}."
        if kquant.prior_grid
        else ""
    )
    st.caption(
        f"Measured on {kquant.rows} evenly spaced rows of {kquant.total_rows}; fresh values are Gaussian "
        f"with the same spread.{note}"
    )
    takeaway(kquant.takeaway)


def _table(lesson: FormatsLesson) -> None:
    st.subheader("5. Bits per weight, and where each format runs natively")
    st.markdown(
        "Scales cost bits too: an FP16 scale per 32 adds 0.5 bits per weight, an 8-bit one 0.25. "
        "'Natively' means the GPU's matrix units take the format as it is stored."
    )
    rows = lesson.table
    st.dataframe(
        pd.DataFrame(
            {
                "format": [r.name for r in rows],
                "element": [r.element for r in rows],
                "values per scale": [r.block for r in rows],
                "scale": [r.scale for r in rows],
                "bits/weight": [
                    f"{r.bits_per_weight:g}"
                    + (f" (+{r.per_tensor_bits} per tensor)" if r.per_tensor_bits else "")
                    for r in rows
                ],
                "runs natively on": [", ".join(r.native_on) or "—" for r in rows],
                "elsewhere": [r.elsewhere for r in rows],
            }
        ),
        hide_index=True,
        width="stretch",
    )
    takeaway(table_takeaway(rows))
