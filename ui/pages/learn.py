"""The Learn page's two longest tabs: PTQ & calibration (real or synthetic activations) and QAT & the STE
(a spiral classifier trained on demand). The page file (pages/learn.py) holds the short tabs and the
tab strip; the experiments run through ui/cache/lessons.py and are drawn by ui/pages/lesson_charts.py.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.models.sources import ModelSourceError
from ui.cache import lessons as lesson_cache
from ui.errors import show_error
from ui.pages import lesson_charts
from ui.widgets import NumberBoxes

TAKEAWAY = ":material/lightbulb:"


def takeaway(text: str) -> None:
    st.info(text, icon=TAKEAWAY)


def calibration_tab() -> None:
    st.markdown(
        "Post-training quantization (PTQ) quantizes a trained model without training it further. Weights are "
        "known in advance; activations are not, so their scales are either **dynamic**, computed from each "
        "input at run time (a max over every token before each matmul), or **static**, fixed once from a few "
        "calibration batches by an **observer**. Min-max keeps the largest value it saw, so one outlier sets "
        "the range; percentile observers clip the rarest values; the MSE observer picks the clip with the "
        "least error on the calibration data. Each is then scored on held-out text it never saw."
    )
    cols = st.columns(3)
    source = cols[0].segmented_control(
        "Activations", ["Real", "Synthetic"], default="Real", key="learn_ptq_source"
    )
    bits = cols[2].select_slider("Bits", [4, 6, 8], value=4, key="learn_ptq_bits")
    module = None
    if source != "Synthetic":
        try:
            names = lesson_cache.real_projection_names()
        except (ModelSourceError, ValueError) as exc:
            show_error(exc, prefix="Using synthetic activations: ")
        else:
            layer = cols[1].slider("Layer", 0, len(names) - 1, min(3, len(names) - 1), key="learn_ptq_layer")
            module = names[layer]
    try:
        lesson = lesson_cache.calibration(module, bits)
    except (ModelSourceError, ValueError) as exc:
        show_error(exc, prefix="Could not capture real activations; using synthetic ones: ")
        lesson = lesson_cache.calibration(None, bits)
    st.caption(
        f"Activations: {lesson.source} ({lesson.values.numel():,} of the held-out values plotted; absmax "
        f"{lesson.absmax:.3g}, std {lesson.std:.3g}). Static ranges are per tensor, symmetric int{bits}."
    )
    left, right = st.columns(2)
    left.plotly_chart(lesson_charts.calibration_ranges(lesson), width="stretch")
    right.plotly_chart(lesson_charts.calibration_bars(lesson), width="stretch")
    with st.expander("All numbers"):
        st.dataframe(
            pd.DataFrame(
                {
                    "method": [r.method for r in lesson.rows],
                    "scales": ["static" if r.static else "dynamic" for r in lesson.rows],
                    "range ±": [r.clip for r in lesson.rows],
                    "MSE": [r.mse for r in lesson.rows],
                    "SQNR (dB)": [r.sqnr_db for r in lesson.rows],
                    "clipped": [r.clipped_fraction for r in lesson.rows],
                }
            ).style.format(
                {"range ±": "{:.3g}", "MSE": "{:.3g}", "SQNR (dB)": "{:.1f}", "clipped": "{:.3%}"}
            ),
            hide_index=True,
            width="stretch",
        )
    takeaway(lesson.takeaway)


def qat_tab() -> None:
    st.markdown(
        "Quantization-aware training (QAT) inserts **fake-quantization** nodes: the forward pass rounds each "
        "weight to the grid and straight back to a float, so the loss sees exactly the quantized model. "
        "Rounding is a staircase whose derivative is zero almost everywhere, which would stop all learning; "
        "the **straight-through estimator** (STE) treats its derivative as 1 on the grid (0 where a value is "
        "clipped), so gradients reach full-precision *latent* weights, which drift until they round to "
        "better codes. Below, a small MLP learns a three-arm spiral in float, is rounded per output channel "
        "(PTQ), and is then fine-tuned with QAT from the float weights."
    )
    cols = st.columns([1, 2, 1, 1])
    bits = cols[0].segmented_control("Bits", [2, 3, 4], default=3, key="learn_qat_bits") or 3
    steps = cols[1].slider("QAT steps", 100, 1000, 400, step=100, key="learn_qat_steps")
    number = NumberBoxes()
    seed = number(cols[2], "Seed", 0, 999, 0, key="learn_qat_seed")
    cols[3].markdown("&nbsp;")
    clicked = cols[3].button("Train", type="primary", key="learn_qat_run", width="stretch")
    if number.show():  # right under the Train button, which trains nothing until the seed is in range
        return
    seed = int(seed)
    st.plotly_chart(lesson_charts.staircase(lesson_cache.staircase(bits)), width="stretch")
    st.caption(
        f"int{bits} symmetric with range [−1, 1]: the forward returns one of {2**bits} levels; the backward "
        "passes the incoming gradient unchanged between the dotted lines and blocks it where values are "
        "clipped."
    )
    report = lesson_cache.qat_report(bits, steps, seed)
    if clicked and report is None:
        try:
            report = lesson_cache.run_qat(bits, steps, seed)
        except ValueError as exc:
            show_error(exc)
            return
    if report is None:
        st.caption(
            "Press **Train** to train the float model, round it (PTQ) and fine-tune it (QAT): a few seconds."
        )
        return
    metrics = st.columns(4)
    metrics[0].metric("Float accuracy", f"{report.float_accuracy:.1%}")
    metrics[1].metric(
        f"PTQ int{bits}",
        f"{report.ptq_accuracy:.1%}",
        f"{100 * (report.ptq_accuracy - report.float_accuracy):+.1f} pp",
    )
    metrics[2].metric(
        f"QAT int{bits}",
        f"{report.qat_accuracy:.1%}",
        f"{100 * (report.qat_accuracy - report.float_accuracy):+.1f} pp",
    )
    metrics[3].metric("Time (float + QAT)", f"{report.float_seconds + report.qat_seconds:.1f} s")
    st.plotly_chart(lesson_charts.decision_regions(report), width="stretch")
    left, right = st.columns([3, 2])
    left.plotly_chart(lesson_charts.qat_curves(report), width="stretch")
    check = report.gradient_check
    right.markdown(
        "**Gradient check.** On one batch, the gradient the STE hands the latent weights equals the gradient "
        f"computed at the quantized weights: largest difference {check.max_abs_difference:.2g} (gradient "
        f"norm {check.gradient_norm:.3g}). The staircase's own derivative would have given exactly 0."
    )
    right.markdown(
        f"Test set of {report.test_labels.numel():,} points; loss {report.float_loss:.3f} (float), "
        f"{report.ptq_loss:.3f} (PTQ), {report.qat_loss:.3f} (QAT). Weights: {report.scheme.label}, "
        "every layer; biases stay in float."
    )
    takeaway(report.takeaway)
