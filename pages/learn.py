"""Learn: the concepts behind quantization, each with a short explanation, a live experiment and a takeaway
computed from that experiment's own numbers."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.lessons import ACCELERATORS, DISTRIBUTIONS, SYMMETRY_DATA
from ui import page
from ui.cache import lessons as lesson_cache
from ui.pages import lesson_charts
from ui.pages.learn import calibration_tab, qat_tab, takeaway
from ui.pages.learn_formats import formats_tab
from ui.pages.learn_outliers import outliers_tab

LAYER_SHAPES = {  # (in_features, out_features)
    "SmolLM2-135M down_proj (1536 → 576)": (1536, 576),
    "Llama-3.1-8B down_proj (14336 → 4096)": (14336, 4096),
    "Llama-3.1-70B up_proj (8192 → 28672)": (8192, 28672),
}
TAB_LABELS = (
    "Linear vs quantile grids",
    "Symmetric vs asymmetric",
    "Granularity",
    "PTQ & calibration",
    "QAT & the STE",
    "Why not faster?",
    "Today's formats",
    "Outliers and rotation",
)


def mapping_tab() -> None:
    st.markdown(
        "A **linear** grid spaces its levels evenly between −absmax and +absmax: int4 uses 15 levels one "
        "step apart. Weights are not spread evenly, most sit near zero, so a **non-linear** grid that puts "
        "its levels at the *quantiles* of the expected distribution wastes fewer of them. NF4 (QLoRA) places "
        "16 levels at quantiles of a normal distribution; FP4 spaces them like a tiny float, densest near "
        "zero. The price: codebook codes must be looked up before any arithmetic, while int codes can feed "
        "integer matrix units directly."
    )
    cols = st.columns(2)
    distribution = cols[0].segmented_control(
        "Data", DISTRIBUTIONS, default="gaussian", key="learn_map_dist", format_func=str.capitalize
    )
    block = cols[1].select_slider(
        "Values per absmax scale", [16, 32, 64, 128, 256, 1024], value=64, key="learn_map_block"
    )
    lesson = lesson_cache.mapping(distribution or "gaussian", block)
    metrics = st.columns(3)
    for column, name in zip(metrics, ("int4", "nf4", "fp4"), strict=True):
        column.metric(
            f"{name.upper()} SQNR", f"{lesson.sqnr_db[name]:.1f} dB", help=f"MSE {lesson.mse[name]:.3g}"
        )
    st.plotly_chart(lesson_charts.mapping_levels(lesson), width="stretch")
    takeaway(lesson.takeaway)


def symmetry_tab() -> None:
    st.markdown(
        "**Symmetric** quantization maps [−absmax, +absmax] onto the grid with 0.0 at code 0 and stores only "
        "a scale. **Asymmetric** quantization maps [min, max] instead and also stores a zero point, the code "
        "that stands for 0.0. Activations after a ReLU are one-sided (after SiLU or GELU, nearly so): a "
        "symmetric grid spends half of its codes on negative values that never occur, one bit thrown away. "
        "Weights are roughly centred on zero, which is why weight schemes are usually symmetric; the zero "
        "point costs storage and an extra correction term in integer matmuls."
    )
    cols = st.columns(2)
    data = cols[0].segmented_control(
        "Data", SYMMETRY_DATA, default="relu", key="learn_sym_data", format_func=SYMMETRY_DATA.get
    )
    bits = cols[1].select_slider("Bits", [2, 3, 4, 5, 6, 7, 8], value=4, key="learn_sym_bits")
    lesson = lesson_cache.symmetry(data or "relu", bits)
    left, right = st.columns([3, 2])
    left.plotly_chart(lesson_charts.symmetry_levels(lesson), width="stretch")
    right.plotly_chart(lesson_charts.mse_vs_bits(lesson), width="stretch")
    takeaway(lesson.takeaway)


def granularity_tab() -> None:
    st.markdown(
        "A scale is shared by a block of values: the whole tensor, each output channel (row), or each group "
        "of *g* consecutive weights in a row. The largest magnitude in a block sets its step, so one outlier "
        "coarsens the grid for everything that shares its scale. Finer blocks isolate outliers but store "
        "more scales: a 16-bit scale per 64 weights adds 16/64 = 0.25 bits per weight, a scale per "
        "1,024-wide row only 0.016."
    )
    cols = st.columns(3)
    bits = cols[0].segmented_control("Bits", [3, 4, 8], default=4, key="learn_gran_bits")
    outliers = cols[1].slider("Outliers", 0, 32, 4, key="learn_gran_outliers")
    size = cols[2].slider("Outlier size (σ)", 5.0, 100.0, 20.0, step=5.0, key="learn_gran_size")
    lesson = lesson_cache.granularity(bits or 4, outliers, size)
    left, right = st.columns([3, 2])
    left.plotly_chart(lesson_charts.granularity_tradeoff(lesson), width="stretch")
    right.dataframe(
        pd.DataFrame(
            {
                "scheme": [r.scheme.label for r in lesson.rows],
                "scales": [r.scales for r in lesson.rows],
                "bits/weight": [r.bits_per_weight for r in lesson.rows],
                "SQNR (dB)": [r.sqnr_db for r in lesson.rows],
                "MSE": [r.mse for r in lesson.rows],
            }
        ).style.format({"bits/weight": "{:.3f}", "SQNR (dB)": "{:.1f}", "MSE": "{:.3g}", "scales": "{:,}"}),
        hide_index=True,
        width="stretch",
    )
    takeaway(lesson.takeaway)


def speed_tab() -> None:
    st.markdown(
        "Smaller weights do not multiply faster by themselves: GPUs compute in fp16 (or int8), so 4-bit "
        "codes are **dequantized** on the fly, which costs instructions. Whether that pays depends on "
        "**arithmetic intensity**, the FLOPs done per byte moved. Decoding one token is a matrix-vector "
        "product: each weight is read for 2 FLOPs, about 1 FLOP per byte in fp16, far below the hundreds a "
        "GPU needs to keep its matrix units busy, so the layer is memory-bound and fewer bytes means faster. "
        "Prefill and large batches reuse each weight for many tokens: the layer turns compute-bound, the "
        "saved bytes stop mattering, and the dequantization work can make it slower."
    )
    cols = st.columns(3)
    device = cols[0].selectbox("Accelerator", list(ACCELERATORS), key="learn_speed_device")
    shape_label = cols[1].selectbox("Layer", list(LAYER_SHAPES), index=1, key="learn_speed_layer")
    tokens = cols[2].select_slider(
        "Tokens per forward", [2**i for i in range(14)], value=4096, key="learn_speed_tokens"
    )
    lesson = lesson_cache.speed(device, *LAYER_SHAPES[shape_label], tokens)
    left, right = st.columns(2)
    left.plotly_chart(lesson_charts.roofline(lesson), width="stretch")
    right.plotly_chart(lesson_charts.speedup_vs_tokens(lesson), width="stretch")
    st.caption(
        "Weight-only quantization (activations stay fp16), in an idealised model, not a measurement: "
        "datasheet peaks, memory and matrix math overlapping perfectly, and dequantization at 4 vector "
        "operations per weight, redone for every 128 tokens and not overlapped with the matrix math (so int8 "
        "and int4 meet once compute-bound). Real kernels land elsewhere; the **Speed** page measures them."
    )
    takeaway(lesson.takeaway)


def main() -> None:
    page.start(
        "Learn",
        "One concept per tab: a few sentences, a live experiment, and a takeaway computed from its numbers.",
    )
    draws = (
        mapping_tab,
        symmetry_tab,
        granularity_tab,
        calibration_tab,
        qat_tab,
        speed_tab,
        formats_tab,
        outliers_tab,
    )
    for tab, draw in zip(st.tabs(list(TAB_LABELS), key="learn_tab", on_change="rerun"), draws, strict=True):
        with tab:
            draw()


main()
