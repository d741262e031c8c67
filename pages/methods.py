"""Methods lab: RTN, LLM.int8(), SmoothQuant, GPTQ, AWQ, bitsandbytes and QAT on the loaded model, side by side."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.evaluation.perplexity import ReferenceCache
from engine.evaluation.study import pick_group_size
from engine.models.data import DataError, WindowSpec, load_text, token_windows
from engine.models.sources import DEFAULT_MODEL_NAME
from ui import cache, page
from ui.errors import show_error
from ui.pages import methods as methods_view
from ui.pages import methods_export
from ui.progress import progress_bar

page.start(
    "Methods lab",
    "Quantize the loaded model with several methods and see why one wins: per-layer error, each method's "
    "own diagnostics, and perplexity / KL against the reference on held-out text.",
)
loaded = cache.current_model_or_stop()
if loaded.quantization is not None:
    st.warning(
        "The Methods lab quantizes float linear layers, and this checkpoint's are already packed integers. "
        "Load its float original (or the offline default) to compare methods; the Compare and Evaluate "
        "pages run this checkpoint as it is.",
        icon=":material/block:",
    )
    st.stop()
runs = methods_view.runs()

left, right = st.columns([3, 2])
methods = left.multiselect(
    "Methods",
    methods_view.METHODS,
    default=["RTN", "GPTQ"],
    key="methods_pick",
    max_selections=len(methods_view.METHODS),
)
try:
    widths_group = pick_group_size(loaded.model)
except ValueError:
    widths_group = 32
bits = right.select_slider("Weight bits (RTN, GPTQ, AWQ, QAT)", [2, 3, 4, 8], 4, key="methods_bits")
group_size = right.select_slider(
    "Group size",
    [g for g in (32, 64, 128) if g <= widths_group or g == widths_group],
    widths_group,
    key="methods_group",
    help="Groups must divide every layer's width: SmolLM2 is 576 wide, so 128 does not fit and 64 is the default.",
)
cols = st.columns(3)
calib_windows = cols[0].number_input(
    "Calibration windows",
    1,
    128,
    8,
    key="methods_calib_windows",
    help="The papers use 128; 8 keeps CPU runs short.",
)
calib_tokens = cols[1].select_slider("Tokens per window", [128, 256, 512], 256, key="methods_calib_tokens")
eval_windows = cols[2].number_input("Evaluation windows (× 256 tokens)", 1, 16, 2, key="methods_eval_windows")
if loaded.source.kind == "default":
    st.caption(
        f"{DEFAULT_MODEL_NAME} was distributed as Q4_1 (int4, groups of 32, a float minimum per group), so its "
        "reference is already 4-bit. The lab's grids use integer zero points (GPTQ / AWQ / torchao), which do "
        "not coincide with Q4_1 even at 4 bits and g32 (one down_proj: 21.8 dB SQNR, vs 20.7 dB at g64): "
        "every method here measures a real second rounding."
    )

configs = {}
with st.expander("Method settings (defaults from the papers)", expanded=False):
    for method in methods:
        st.markdown(f"**{method}**")
        try:
            configs[method] = methods_view.config_form(method, bits, group_size)
        except ValueError as exc:
            show_error(exc, prefix=f"{method}: ")
REQUESTED = "methods_run_requested"
buttons = st.columns([1, 1, 4])
buttons[0].button(
    "Run", type="primary", key="methods_run", on_click=lambda: st.session_state.update({REQUESTED: True})
)
if buttons[1].button("Clear results", key="methods_clear"):
    runs.clear()

todo = {m: c for m, c in configs.items() if methods_view.label_of(m, c) not in runs}
if st.session_state.pop(REQUESTED, False) and todo:
    try:
        text = load_text("britannica")
        calibration = token_windows(
            loaded.tokenizer, text, WindowSpec(int(calib_tokens), int(calib_windows), split="calibration")
        )
        evaluation = token_windows(
            loaded.tokenizer, text, WindowSpec(256, int(eval_windows), split="evaluation")
        )
    except DataError as exc:
        show_error(exc)
        st.stop()
    st.button("Stop", key="methods_stop", help="Stops after the current step; finished methods are kept.")
    reference_cache = ReferenceCache()
    for index, (method, config) in enumerate(todo.items()):
        update, clear = progress_bar()
        try:
            run = methods_view.run_method(
                method,
                config,
                loaded.model,
                calibration,
                evaluation,
                reference_cache,
                lambda f, m, index=index, method=method, update=update: update(
                    f, f"{method} ({index + 1}/{len(todo)}): {m}"
                ),
            )
            runs[run.label] = run
        except Exception as exc:  # one method failing leaves the others' results
            show_error(exc, prefix=f"{method} failed: ")
        finally:
            clear()
elif todo:
    names = ", ".join(todo)
    calib_note = " (with calibration)" if set(todo) & methods_view.NEEDS_CALIBRATION else ""
    st.info(f"Press **Run** to quantize with {names}{calib_note}.", icon=":material/play_arrow:")

if not runs:
    st.stop()
all_runs = list(runs.values())
reference_ppl = all_runs[0].comparison.reference.perplexity
model_params = sum(p.numel() for p in loaded.model.parameters())
table = pd.DataFrame(
    [
        {
            "method": run.label,
            "bits/weight (linears)": run.bits_per_weight,
            "perplexity": run.comparison.candidate.perplexity,
            "Δ perplexity": run.comparison.candidate.perplexity / reference_ppl - 1,
            "mean KL": run.comparison.agreement.mean_kl,
            "top-1 agreement": run.comparison.agreement.top1_agreement,
            "seconds to quantize": run.seconds,
        }
        for run in all_runs
    ]
)
st.metric("Reference perplexity", f"{reference_ppl:,.2f}", help=f"{loaded.source.label} on the held-out text")
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    column_config={
        "bits/weight (linears)": st.column_config.NumberColumn(format="%.3f"),
        "perplexity": st.column_config.NumberColumn(format="%.3f"),
        "Δ perplexity": st.column_config.NumberColumn(format="percent"),
        "mean KL": st.column_config.NumberColumn(format="%.4f"),
        "top-1 agreement": st.column_config.NumberColumn(format="percent"),
        "seconds to quantize": st.column_config.NumberColumn(format="%.1f"),
    },
)
st.caption(
    f"{model_params / 1e6:,.1f} M parameters. Weights are stored fake-quantized for these accuracy runs; "
    "bits/weight prices the codes with their scales and zero points. The Compare page can generate with "
    "every model built here."
)
st.plotly_chart(methods_view.per_layer_error(all_runs), width="stretch", key="methods_sqnr")
figure = methods_view.output_error(all_runs)
if figure is not None:
    st.plotly_chart(figure, width="stretch", key="methods_output_error")

for run in all_runs:
    if run.method == "LLM.int8()":
        kept = methods_view.detail_series(run, "outlier_dims")
        if kept:
            st.plotly_chart(
                methods_view.bar(
                    [n for n, _ in kept],
                    [len(d) for _, d in kept],
                    f"{run.label}: input dims kept in 16-bit",
                    "dims",
                ),
                width="stretch",
                key=f"methods_int8_{run.label}",
            )
    if run.method == "SmoothQuant":
        series = methods_view.detail_series(run, "act_max_before")
        if series:
            names = [n for n, _ in series]
            name = st.selectbox("Layer (SmoothQuant)", names, key=f"methods_sq_layer_{run.label}")
            layer = next(r for r in run.quantized.layers if r.name == name)
            st.plotly_chart(
                methods_view.maxima(layer.detail["act_max_before"], layer.detail["act_max_after"], name),
                width="stretch",
                key=f"methods_sq_{run.label}",
            )
    if run.method == "GPTQ":
        losses = methods_view.detail_series(run, "gptq_loss")
        if losses:
            st.plotly_chart(
                methods_view.bar(
                    [n for n, _ in losses],
                    [v for _, v in losses],
                    f"{run.label}: GPTQ loss per layer",
                    "loss",
                ),
                width="stretch",
                key=f"methods_gptq_{run.label}",
            )
    if run.method == "AWQ":
        curves = methods_view.detail_series(run, "curve")
        if curves:
            names = [n for n, _ in curves]
            name = st.selectbox("Layer (AWQ)", names, key=f"methods_awq_layer_{run.label}")
            layer = next(r for r in run.quantized.layers if r.name == name)
            st.plotly_chart(
                methods_view.curve(
                    layer.detail["curve"],
                    f"{name}: AWQ scale search",
                    "α (s = mean|x|^α)",
                    "output error",
                    layer.detail.get("alpha"),
                ),
                width="stretch",
                key=f"methods_awq_{run.label}",
            )
    if run.method == "QAT":
        trace = methods_view.trace_of(run)
        if trace is not None:
            st.plotly_chart(
                methods_view.qat_curve(trace, f"{run.label}: training loss and held-out losses"),
                width="stretch",
                key=f"methods_qat_{run.label}",
            )
            st.caption(methods_view.qat_takeaway(trace, run))

methods_export.render(runs, loaded.tokenizer)
