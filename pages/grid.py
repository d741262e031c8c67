"""Quantization grid: one tensor, one scheme, every level and every error in plain sight."""

from __future__ import annotations

import streamlit as st

from engine.analysis.blocks import block_count
from engine.quant.gguf import GGUFType
from engine.quant.schemes import QuantScheme
from ui import cache, charts, clickthrough, page, state
from ui.cache import grid_formats as format_cache
from ui.errors import show_error
from ui.pages import grid as pickers
from ui.pages import grid_formats
from ui.pages.grid import TensorChoice

SOURCES = {  # segmented-control label -> the picker that draws its widgets
    "Model weight": pickers.model_weight,
    "Activation": pickers.activation_tensor,
    "Synthetic": pickers.synthetic_tensor,
}


def scheme_ui() -> QuantScheme | GGUFType:
    """The sidebar's scheme or GGUF block type; stops the page while the sidebar holds an impossible one."""
    scheme = state.scheme()
    if scheme is None:
        st.warning("Pick a valid scheme in the sidebar first.", icon=":material/tune:")
        st.stop()
    return scheme


def tensor_ui() -> TensorChoice:
    source = st.segmented_control(
        "Tensor", list(SOURCES), default="Model weight", key="grid_source", width="stretch"
    )
    return SOURCES.get(source, pickers.model_weight)()


def block_ui(choice: TensorChoice, scheme: QuantScheme | GGUFType) -> tuple[int, int]:
    """(row, block within the row) to draw; stops the page when the scheme does not fit the tensor."""
    shape = cache.tensor_shape(choice.key)
    if isinstance(scheme, GGUFType):
        grid_formats.gguf_fits_or_stop(shape, scheme)
    else:
        pickers.group_size_fits_or_stop(shape, scheme)
    try:
        n_rows, n_blocks = block_count(shape, scheme)
    except ValueError as exc:
        show_error(exc, prefix=f"{scheme.label} does not fit this tensor: ")
        st.stop()
    pickers.prior_grid_warning(choice.prior)
    pickers.keep_in_range("grid_row", n_rows - 1)  # a click-through or a link may name one past the end
    pickers.keep_in_range("grid_block", n_blocks - 1)
    cols = st.columns(2)
    row_label = "Row of tiles" if getattr(scheme, "granularity", None) == "block" else choice.row_label
    row = cols[0].slider(row_label, 0, n_rows - 1, 0, key="grid_row") if n_rows > 1 else 0
    label = grid_formats.block_slider_label(scheme)
    block = cols[1].slider(label, 0, n_blocks - 1, 0, key="grid_block") if n_blocks > 1 else 0
    if n_rows == 1 and n_blocks == 1:
        cols[0].caption("Per-tensor: every value shares one scale, so there is only one block to show.")
    elif n_blocks == 1:
        cols[1].caption("Per-channel: each row is one block.")
    return row, block


def block_view_ui(tensor_key, scheme: QuantScheme | GGUFType, row: int, block: int) -> None:
    """Whole-tensor metrics, then one block's values over its levels, its mapping and the errors."""
    picture, curve, errors, block_errors, summary = format_cache.format_grid_view(
        tensor_key, scheme, row, block
    )
    st.markdown(f"**{scheme.label}** on this tensor")
    metrics = st.columns(5)
    metrics[0].metric(
        "SQNR", f"{summary['sqnr_db']:.1f} dB", help="Signal-to-quantization-noise ratio, whole tensor"
    )
    metrics[1].metric("MSE", f"{summary['mse']:.3g}")
    metrics[2].metric("Max abs error", f"{summary['max_abs_err']:.3g}")
    metrics[3].metric(
        "Bits per weight", f"{summary['bits/weight']:.3f}", help="Codes plus scales and zero points"
    )
    metrics[4].metric("Clipped in block", f"{int(picture.clipped.sum())} / {picture.block_elements}")

    left, right = st.columns(2)
    left.plotly_chart(charts.block_histogram(picture, scheme.label), width="stretch")
    left.caption(
        "Red lines are the values this block's codes can represent. Dense levels where values crowd mean low "
        "error; values beyond the outer lines are clipped."
    )
    right.plotly_chart(charts.mapping_staircase(*curve, picture), width="stretch")
    right.caption(
        f"{grid_formats.scale_caption(picture, scheme)} Each step is one code: every value on a step comes "
        "back as the same number."
    )
    st.plotly_chart(charts.error_histogram(errors, block_errors), width="stretch")


def format_details_ui(tensor_key, scheme: QuantScheme | GGUFType, row: int, block: int) -> None:
    """What a block format stores beyond one scale: a GGUF block's bytes, or a microscaling second level."""
    if isinstance(scheme, GGUFType):
        grid_formats.gguf_bytes_section(tensor_key, scheme, row, block)
    elif scheme.is_microscaling:
        grid_formats.microscaling_section(tensor_key, scheme, row, block)


def main() -> None:
    page.start(
        "Quantization grid",
        "Pick a tensor and see the chosen scheme's levels laid over its values, the real → code → real "
        "mapping, what gets clipped, and how every standard scheme ranks on the same tensor.",
        scheme_use="the tensor shown (levels, errors, metrics) and the star in the all-schemes chart.",
    )
    clickthrough.origin_note(clickthrough.GRID_PAGE)
    scheme = scheme_ui()
    choice = tensor_ui()
    row, block = block_ui(choice, scheme)
    block_view_ui(choice.key, scheme, row, block)
    format_details_ui(choice.key, scheme, row, block)
    pickers.scheme_table_section(choice.key, scheme)


main()
