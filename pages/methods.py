"""Methods lab: RTN, LLM.int8(), SmoothQuant, GPTQ, AWQ, bitsandbytes, QAT and llama.cpp's GGUF types
and mixes on the loaded model, side by side.

Read widgets -> one config per picked method (ui/pages/methods.py: a form per config type) -> quantize and
score each in a background job that other clicks leave running (ui/pages/methods_job.py) -> draw: the
results table, per-layer errors, each method's own figure (a table keyed by its report type), and the
export section.
"""

from __future__ import annotations

import streamlit as st

from engine.evaluation.evalset import DEFAULT_EVAL_SET
from engine.evaluation.study import pick_group_size
from ui import cache, clickthrough, page
from ui.cache import method_runs
from ui.cache.method_runs import MethodRun
from ui.errors import show_error
from ui.pages import evaluate as evaluate_view
from ui.pages import methods as methods_view
from ui.pages import methods_charts, methods_drift, methods_export
from ui.pages import methods_job as lab_job
from ui.pages.methods_job import TextSettings
from ui.widgets import NumberBoxes


def packed_checkpoint_refused(loaded) -> bool:
    """True (after saying why) when the loaded checkpoint's linears are already packed integers."""
    if loaded.quantization is None:
        return False
    st.warning(
        "The Methods lab quantizes float linear layers, and this checkpoint's are already packed integers. "
        "Load its float original (or the offline default) to compare methods; the Compare and Evaluate "
        "pages run this checkpoint as it is.",
        icon=":material/block:",
    )
    return True


def pick_methods(loaded) -> tuple[list[str], int, int]:
    """(picked method names, weight bits, group size)."""
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
    return methods, bits, group_size


def text_settings(loaded, number: NumberBoxes) -> TextSettings:
    cols = st.columns(3)
    calib_windows = number(
        cols[0],
        "Calibration windows",
        1,
        128,
        8,
        key="methods_calib_windows",
        help="The papers use 128; 8 keeps CPU runs short.",
    )
    calib_tokens = cols[1].select_slider(
        "Tokens per window", [128, 256, 512], 256, key="methods_calib_tokens"
    )
    eval_windows = number(
        cols[2],
        f"Evaluation windows (× {DEFAULT_EVAL_SET.window} tokens)",
        1,
        16,
        DEFAULT_EVAL_SET.windows,
        key="methods_eval_windows",
        help="The default is Evaluate's default set, so both pages show the same reference perplexity.",
        name="Evaluation windows",
    )
    evaluate_view.origin_note(
        loaded,
        "no grid in this lab coincides with it, so every method is a second rounding.",
    )
    return TextSettings(int(calib_windows), int(calib_tokens), int(eval_windows))


def method_configs(methods: list[str], bits: int, group_size: int, number: NumberBoxes) -> dict[str, object]:
    """{method name: config} from each picked method's form; a form that cannot build one says why (a
    number out of range is said next to the Run button, and its method left out)."""
    configs = {}
    with st.expander("Method settings (defaults from the papers)", expanded=False):
        for method in methods:
            st.markdown(f"**{method}**")
            problems = len(number.problems)
            try:  # the name maps to its config type here, at the edge; the rest is keyed by type
                config = methods_view.config_form(methods_view.CONFIG_TYPES[method], bits, group_size, number)
            except ValueError as exc:
                if len(number.problems) == problems:
                    show_error(exc, prefix=f"{method}: ")
                continue
            if len(number.problems) == problems:
                configs[method] = config
    return configs


def results(all_runs: list[MethodRun], loaded) -> None:
    """The table against the reference, the per-layer charts and each method's own figure."""
    reference_ppl = all_runs[0].comparison.reference.perplexity
    model_params = sum(p.numel() for p in loaded.model.parameters())
    st.metric(
        "Reference perplexity", f"{reference_ppl:,.2f}", help=f"{loaded.source.label} on the held-out text"
    )
    st.dataframe(
        methods_view.results_table(all_runs),
        hide_index=True,
        width="stretch",
        column_config=methods_drift.column_config(methods_view.RESULTS_COLUMNS),
    )
    st.caption(
        f"{methods_view.windows_note(all_runs)} {model_params / 1e6:,.1f} M parameters. Weights are stored "
        "fake-quantized for these accuracy runs; bits/weight prices the codes with their scales and zero "
        "points. The Compare page can generate with every model built here."
    )
    for note in methods_view.gap_notes(all_runs):
        st.caption(note)
    for run in all_runs:
        if run.missing is not None:
            st.info(f"**{run.label}**: {run.missing}", icon=":material/memory:")
    targets = clickthrough.weight_points(cache.weight_list())  # a click on a layer opens it on the grid page
    figure = methods_charts.output_error(all_runs, targets)  # first: what GPTQ and AWQ minimise
    if figure is not None:  # their models may have been freed: the reports stay
        clickthrough.grid_chart(st, figure, "methods_output_error", "methods:per-layer")
    clickthrough.grid_chart(
        st, methods_charts.per_layer_error(all_runs, targets), "methods_sqnr", "methods:per-layer"
    )
    methods_drift.render(all_runs)  # after the per-layer charts: which tokens moved, per run
    for run in all_runs:
        methods_view.method_figure(run)


def main() -> None:
    page.start(
        "Methods lab",
        "Quantize the loaded model with several methods and see why one wins: per-layer error, each method's "
        "own diagnostics, and perplexity / KL against the reference on held-out text.",
    )
    loaded = cache.current_model_or_stop()
    if packed_checkpoint_refused(loaded):
        st.stop()
    lab_job.guard_model()  # a run for another model keeps nothing more
    number = NumberBoxes()
    methods, bits, group_size = pick_methods(loaded)
    text = text_settings(loaded, number)
    configs = method_configs(methods, bits, group_size, number)
    runs = lab_job.run_controls(method_runs.runs(), configs, loaded, text, number)  # goes on through clicks
    if not runs:
        st.stop()
    results(list(runs.values()), loaded)
    methods_export.render(runs, loaded.tokenizer)


main()
