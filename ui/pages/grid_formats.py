"""The Quantization grid page for today's formats: GGUF block types and two-level (microscaling) schemes.

`gguf_fits_or_stop` explains a GGUF type whose blocks do not fit the tensor's rows (and llama.cpp's
fallback); `microscaling_section` draws the second level of MXFP4 / MXFP6 / MXFP8 / NVFP4 (the scale every
block got against the scales the scale format can store, what saturated, one block's bytes);
`gguf_bytes_section` draws the bytes of the llama.cpp block that holds the picked sub-block. The charts
and tables they draw are built here too, from the engine's plain values.
"""

from __future__ import annotations

import math

import numpy
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from engine.analysis.blocks import BlockPicture, ScaleCensus, gguf_fallback_note
from engine.analysis.packed_blocks import DecodedBlock
from engine.quant.gguf import GGUFType
from engine.quant.schemes import QuantScheme
from ui import charts
from ui.cache import grid_formats as format_cache

HEX_SHOWN = 12  # bytes of a field written out in the table; longer fields end in "…"


def gguf_fits_or_stop(shape: tuple[int, ...], t: GGUFType) -> None:
    """Stop the page when t's blocks do not divide the tensor's rows, naming what llama.cpp does instead."""
    width = shape[-1]
    if width % t.block_size == 0:
        return
    unit = "super-blocks" if t.is_k_quant else "blocks"
    st.error(
        f"{t.name} packs each row in {unit} of {t.block_size} values, and this tensor's rows hold {width:,} "
        f"({width / t.block_size:g} {unit}). {gguf_fallback_note(t, width)} Pick a tensor whose rows are a "
        f"multiple of {t.block_size} (often the MLP down projection), or a type with blocks of 32.",
        icon=":material/error:",
    )
    st.stop()


def block_slider_label(scheme: QuantScheme | GGUFType) -> str:
    if isinstance(scheme, GGUFType):
        return "Sub-block in the row" if scheme.is_k_quant else "Block in the row"
    return "Tile in the row" if scheme.granularity == "block" else "Group in the row"


def scale_caption(picture: BlockPicture, scheme: QuantScheme | GGUFType) -> str:
    """The sentence under the staircase: the block's scale (and offset) as the format stores them."""
    if isinstance(scheme, GGUFType):
        scale = "sub-block scale (super-block scale × its sub-block code)" if scheme.is_k_quant else "scale"
        offset = "" if picture.zero_point is None else f", offset {picture.zero_point:.4g}"
        return f"{scheme.name} {scale} {picture.scale:.4g}{offset}, read from the packed bytes below."
    if picture.zero_point is None:
        offset = ""
    elif scheme.zero_kind == "float":
        offset = f", minimum offset {picture.zero_point:.4g}"
    else:
        offset = f", zero point {picture.zero_point:.0f}"
    return f"Scale {picture.scale:.4g}{offset}."


# -- the bytes of one block --------------------------------------------------------------------------


def _hex(raw) -> str:
    values = raw.tolist()
    text = " ".join(f"{v:02X}" for v in values[:HEX_SHOWN])
    return text + (f" … ({len(values)} bytes)" if len(values) > HEX_SHOWN else "")


def packed_table(block: DecodedBlock) -> pd.DataFrame:
    """One row per byte range: where, what it holds, its bytes in hex, and what they read as."""
    rows = []
    for field in block.fields:
        if field.start is None:
            where = "per tensor"
        elif field.stop - field.start == 1:
            where = f"{field.start}"
        else:
            where = f"{field.start}–{field.stop - 1}"
        rows.append({"bytes": where, "holds": field.holds, "hex": _hex(field.raw), "reads as": field.value})
    return pd.DataFrame(rows)


def _bytes_table(block: DecodedBlock) -> None:
    st.dataframe(
        packed_table(block),
        hide_index=True,
        width="stretch",
        column_config={
            "bytes": st.column_config.Column("bytes", width=80),
            "holds": st.column_config.Column("holds", width="large"),
            "hex": st.column_config.Column("hex", width="medium"),
            "reads as": st.column_config.Column("reads as", width="medium"),
        },
    )


def gguf_bytes_section(tensor_key, t: GGUFType, row: int, block: int) -> None:
    view = format_cache.gguf_view(tensor_key, t, row, block)
    packed, sub = view.packed, view.sub
    what = "super-block" if t.is_k_quant else "block"
    st.subheader(f"The bytes of this {t.name} {what}")
    _bytes_table(packed)
    size = packed.sub_size
    codes = packed.codes[sub * size : (sub + 1) * size]
    scale, minimum = float(packed.scale[sub]), float(packed.minimum[sub])
    formula = f"{scale:.4g} × code" + (f" − {minimum:.4g}" if minimum else "")
    st.caption(
        f"{t.type_size} bytes hold {t.block_size} values: {t.bits_per_weight:g} bits per weight, scales "
        f"{'and minimums ' if minimum else ''}included. The picked {size} values"
        + (f" (sub-block {sub})" if t.is_k_quant else "")
        + f" have codes {' '.join(str(c) for c in codes.tolist())}; each comes back as {formula}."
    )


# -- microscaling: the second level ------------------------------------------------------------------


def _power_of_two_ticks(low: float, high: float) -> tuple[list[float], list[str]]:
    first, last = math.floor(math.log2(low)), math.ceil(math.log2(high))
    step = max(1, math.ceil((last - first + 1) / 8))
    exponents = range(first, last + 1, step)
    return [2.0**e for e in exponents], [f"2<sup>{e}</sup>" for e in exponents]


def scale_census_chart(census: ScaleCensus, picked: float, title: str) -> go.Figure:
    """Blocks per scale (stems) over every scale the format can store (ticks at the bottom), log x axis."""
    figure = go.Figure()
    grid = census.grid.numpy()
    figure.add_scatter(
        x=grid,
        y=numpy.zeros(len(grid)),
        mode="markers",
        marker=dict(symbol="line-ns-open", size=14, color=charts.LEVEL_COLOR, line=dict(width=1.5)),
        name=f"storable scales ({census.steps_per_doubling} per doubling)",
        hovertemplate="storable %{x:.4g}<extra></extra>",
    )
    counts = census.counts.numpy()
    figure.add_scatter(
        x=census.scales.numpy(),
        y=counts,
        mode="markers",
        marker=dict(color=charts.VALUE_COLOR, size=7),
        error_y=dict(
            type="data", symmetric=False, array=numpy.zeros(len(counts)), arrayminus=counts, width=0
        ),
        name="blocks with this scale",
        hovertemplate="scale %{x:.4g}: %{y} blocks<extra></extra>",
    )
    figure.add_scatter(
        x=[picked],
        y=[int(counts[numpy.argmin(numpy.abs(census.scales.numpy() - picked))])],
        mode="markers",
        marker=dict(size=16, symbol="star", color="gold", line=dict(color="black", width=1)),
        name="picked block",
    )
    low, high = float(grid.min()), float(grid.max())
    tickvals, ticktext = _power_of_two_ticks(low, high)
    figure.update_xaxes(type="log", tickmode="array", tickvals=tickvals, ticktext=ticktext)
    pad = 0.3 * (math.log10(high) - math.log10(low) or 1.0)
    figure.update_xaxes(range=[math.log10(low) - pad, math.log10(high) + pad])
    return charts.layout(figure, title, "block scale (log)", "blocks", height=340, bargap=None)


def _scale_words(scheme: QuantScheme, census: ScaleCensus) -> str:
    if census.tensor_scale is not None:
        return (
            f"NVFP4's block scales are E4M3 numbers ({census.steps_per_doubling} steps per doubling) times one "
            f"float32 scale for the whole tensor ({census.tensor_scale:.4g}): a block's scale lands within "
            "about 6% of its largest value / 6, so little of the element grid is wasted."
        )
    rule = "rounded up, so nothing saturates" if scheme.scale_dtype == "e8m0_rceil" else "rounded down"
    return (
        "E8M0 block scales are powers of two (one step per doubling, the exponent "
        f"{rule}): a block's largest value uses between half and all of the element grid, and the top "
        "values of a block can saturate."
    )


def microscaling_section(tensor_key, scheme: QuantScheme, row: int, block: int) -> None:
    view = format_cache.microscaling_view(tensor_key, scheme, row, block)
    st.subheader("Two levels: the scale each block got")
    metrics = st.columns(4)
    share = view.saturated / view.values
    metrics[0].metric(
        "Saturated in tensor",
        f"{view.saturated:,} ({share:.2%})",
        help="Values above the element's largest value after scaling: they come back as that largest value",
    )
    metrics[1].metric("Saturated in block", f"{view.block_saturated} / {view.block_values}")
    metrics[2].metric(
        "Block scale", f"{view.picked_scale:.4g}", help="What this block's codes are multiplied by"
    )
    if view.tensor_scales.tensor_scale is not None:
        metrics[3].metric("Tensor scale (FP32)", f"{view.tensor_scales.tensor_scale:.4g}")
    whole = (
        st.segmented_control(
            "Scales of", ["Whole tensor", "This row"], default="Whole tensor", key="grid_scales_of"
        )
        != "This row"
    )
    census = view.tensor_scales if whole else view.row_scales
    title = "Block scales, whole tensor" if whole else f"Block scales, row {row}"
    st.plotly_chart(scale_census_chart(census, view.picked_scale, title), width="stretch")
    st.caption(_scale_words(scheme, census))
    if view.packed is None:
        st.caption(f"A block of {view.block_values:,} values is too long to lay out byte by byte.")
        return
    st.markdown(
        f"**The bytes of this block** ({view.packed.raw.numel()} bytes for {view.block_values} values)"
    )
    _bytes_table(view.packed)
    st.caption(
        "Laid out as llama.cpp's GGUF blocks hold it: the 8-bit block scale, then the element codes. "
        "Each value comes back as its element (the code's number) × the block scale."
    )
