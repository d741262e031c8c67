"""The Methods lab's pieces: a form per method with the papers' defaults, the results table and the figures
(per-layer error, LLM.int8 kept dims, SmoothQuant maxima, GPTQ loss, AWQ search curve, QAT training curve);
the run itself is ui/pages/methods_job.py (a background job). Runs are kept in the session
(ui/cache/method_runs.py, their models within the server's memory budget) and offered to the Compare and
Speed pages.

Methods are picked by display name only at the multiselect; from there on everything is keyed by type:
`FORMS` maps a config type to its form, `FIGURES` maps a report-detail type (the registry's
`MethodInfo.detail_type`) to the figure that draws it, and what a run is fed comes from the registry's
`Calibration`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pandas as pd
import streamlit as st

from engine.evaluation.evalset import DEFAULT_EVAL_SET
from engine.evaluation.perplexity import (
    EvaluationError,
    perplexity_gap,
)
from engine.methods import Calibration, RTNConfig, method_info
from engine.methods.awq import AWQConfig, AWQDetail
from engine.methods.bnb import BnbConfig
from engine.methods.gguf import GGUFConfig
from engine.methods.gptq import GPTQConfig, GPTQDetail
from engine.methods.llm_int8 import LLMInt8Config, LLMInt8Detail
from engine.methods.qat import QATConfig, QATDetail, QATTrace, qat_trace
from engine.methods.smoothquant import SmoothQuantConfig, SmoothQuantDetail
from engine.quant.gguf import K_QUANTS, LEGACY
from engine.quant.gguf.mixes import GGUF_MIXES
from engine.quant.schemes import QuantScheme
from ui.cache.method_runs import RUNS, MethodRun, runs  # noqa: F401 (RUNS, runs: also reached from here)
from ui.pages import methods_rtn
from ui.pages.evaluate import windows_caption
from ui.pages.methods_charts import bar, curve, maxima, qat_curve
from ui.pages.methods_drift import drift_value
from ui.widgets import NumberBoxes

LAB_METHODS = (RTNConfig, LLMInt8Config, SmoothQuantConfig, GPTQConfig, AWQConfig, BnbConfig, QATConfig, GGUFConfig)  # fmt: skip
GGUF_CHOICES = {**GGUF_MIXES, **{t.name: t for t in (*K_QUANTS, *LEGACY)}}  # llama.cpp's files, then one type
CONFIG_TYPES = {method_info(t).name: t for t in LAB_METHODS}  # display name -> config type (the UI edge)
METHODS = list(CONFIG_TYPES)
NEEDS_CALIBRATION = {
    name
    for name, config_type in CONFIG_TYPES.items()
    if method_info(config_type).calibration in (Calibration.REQUIRED, Calibration.TRAIN_AND_HELD_OUT)
}


# -- forms: one per config type ---------------------------------------------------------------------------


def _symmetric(bits: int, group_size: int) -> QuantScheme:
    return QuantScheme(bits, "int", True, "group", group_size)


def _asymmetric(bits: int, group_size: int) -> QuantScheme:
    return QuantScheme(bits, "int", False, "group", group_size)


def _rtn_form(bits: int, group_size: int, key: str, where, number: NumberBoxes) -> RTNConfig:
    return methods_rtn.rtn_form(bits, group_size, key, where)


def _llm_int8_form(bits: int, group_size: int, key: str, where, number: NumberBoxes) -> LLMInt8Config:
    threshold = number(
        where,
        "Outlier threshold",
        0.5,
        1000.0,
        6.0,
        0.5,
        key=f"{key}_threshold",
        name="LLM.int8() outlier threshold",
    )
    return LLMInt8Config(threshold=float(threshold))


def _smoothquant_form(bits: int, group_size: int, key: str, where, number: NumberBoxes) -> SmoothQuantConfig:
    alpha = where.slider("Migration strength α", 0.0, 1.0, 0.5, 0.05, key=f"{key}_alpha")
    return SmoothQuantConfig(alpha=float(alpha))


def _gptq_form(bits: int, group_size: int, key: str, where, number: NumberBoxes) -> GPTQConfig:
    cols = where.columns(2)
    damping = number(
        cols[0], "Damping", 0.001, 0.5, 0.01, 0.005, key=f"{key}_damp", name="GPTQ damping", format="%.3f"
    )
    act_order = cols[1].checkbox("Act order", key=f"{key}_actorder")
    return GPTQConfig(_symmetric(bits, group_size), damping=float(damping), act_order=act_order)


def _awq_form(bits: int, group_size: int, key: str, where, number: NumberBoxes) -> AWQConfig:
    grid = where.slider("Scale search points", 2, 40, 20, key=f"{key}_grid")
    return AWQConfig(_asymmetric(bits, group_size), grid=int(grid))


def _bnb_form(bits: int, group_size: int, key: str, where, number: NumberBoxes) -> BnbConfig:
    mode = where.radio("Format", ["nf4", "fp4", "int8"], horizontal=True, key=f"{key}_mode")
    double = where.checkbox("Double quantization", key=f"{key}_dq", disabled=mode == "int8")
    return BnbConfig(mode=mode, double_quant=bool(double and mode != "int8"))


def _qat_form(bits: int, group_size: int, key: str, where, number: NumberBoxes) -> QATConfig:
    cols = where.columns(2)
    steps = number(
        cols[0],
        "Training steps",
        1,
        500,
        10,
        key=f"{key}_steps",
        help="One forward and backward of one calibration window each: 4-7 s a step on two CPU cores "
        "for SmolLM2-135M with 256-token windows, so the default 10 take about a minute.",
        name="QAT training steps",
    )
    lr = cols[1].select_slider(
        "Learning rate",
        [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3],
        3e-4,
        format_func=lambda v: f"{v:g}",
        key=f"{key}_lr",
        help="Peak Adam rate, cosine-decayed to 0. 3e-4 recovered the most in 4-10 steps at 3 bits.",
    )
    return QATConfig(_asymmetric(bits, group_size), steps=int(steps), lr=float(lr))


def _gguf_form(bits: int, group_size: int, key: str, where, number: NumberBoxes) -> GGUFConfig:
    name = where.selectbox("llama.cpp type", list(GGUF_CHOICES), index=list(GGUF_CHOICES).index("Q4_K_M"), key=f"{key}_type", help="Q4_K_M…: a type per tensor by llama.cpp's rules; Q4_K…: one type throughout (--pure)")  # fmt: skip
    embeddings = where.checkbox("Embeddings and head too", True, key=f"{key}_emb")
    imatrix = where.checkbox("Importance matrix", False, key=f"{key}_imatrix", help="llama.cpp's --imatrix: measured on the calibration text first, it rounds the weights that meet large activations more carefully")  # fmt: skip
    return GGUFConfig(GGUF_CHOICES[name], include_embeddings=embeddings, imatrix=imatrix)


FORMS: dict[type, Callable] = {
    RTNConfig: _rtn_form,
    LLMInt8Config: _llm_int8_form,
    SmoothQuantConfig: _smoothquant_form,
    GPTQConfig: _gptq_form,
    AWQConfig: _awq_form,
    BnbConfig: _bnb_form,
    QATConfig: _qat_form,
    GGUFConfig: _gguf_form,
}


def config_form(config_type: type, bits: int, group_size: int, number: NumberBoxes, where=st):
    """The method's knobs with the papers' defaults; returns its config (raises ValueError if impossible).
    A number out of range is added to `number.problems`, for the page to say next to its Run button."""
    key = "methods_" + re.sub(r"\W", "", method_info(config_type).name.lower())  # e.g. methods_llmint8
    return FORMS[config_type](bits, group_size, key, where, number)


def label_of(config) -> str:
    """The run's name: the config's label (RTN's says which method it is)."""
    if not isinstance(config, RTNConfig):
        return config.label
    activations = "" if config.activations is None else " + activations"
    return f"RTN {config.weights.label}{activations}" + (" + imatrix" if config.imatrix else "")


def scored_windows(run: MethodRun) -> tuple[int, int]:
    """(windows, tokens per window) the run was scored on (a window's first token is not scored)."""
    tokens = run.comparison.reference.window_tokens
    return len(tokens), tokens[0] + 1


def windows_note(all_runs: list[MethodRun]) -> str:
    """Which windows the table's perplexities come from (and a warning when the runs differ)."""
    sets = sorted({scored_windows(run) for run in all_runs})
    if len(sets) > 1:
        shown = ", ".join(f"{count} × {window}" for count, window in sets)
        return (
            f"These runs were scored on different windows ({shown} tokens), so their perplexities do not "
            "compare (each Δ is against the reference on its own windows); Clear results and run again."
        )
    count, window = sets[0]
    return windows_caption(count, window, DEFAULT_EVAL_SET.corpus, "Evaluate")


def gap_notes(all_runs: list[MethodRun]) -> list[str]:
    """For GPTQ and AWQ beside RTN: their perplexity gap to RTN, paired window by window, and whether the
    windows scored can tell the two apart."""
    rtn = next((run for run in all_runs if run.method == "RTN"), None)
    notes = []
    for run in all_runs if rtn is not None else []:
        if run.method not in ("GPTQ", "AWQ"):
            continue
        try:
            gap = perplexity_gap(run.comparison.candidate, rtn.comparison.candidate)
        except EvaluationError:
            continue
        head = f"{run.label} vs {rtn.label}: perplexity {gap.relative:+.1%} on {gap.windows} window(s)"
        if gap.spread is None:
            notes.append(f"{head}; one window gives no noise estimate, so score more before ranking them.")
        elif gap.resolved:
            notes.append(f"{head}, more than twice the window-to-window noise (±{gap.spread:.1%}).")
        else:
            notes.append(
                f"{head}, within the window-to-window noise (±{gap.spread:.1%}): these windows cannot rank "
                "them; score more windows."
            )
    return notes


def results_table(all_runs: list[MethodRun]) -> pd.DataFrame:
    """One row per run: bits, perplexity and its change (against the reference on the run's own windows),
    KL (mean and llama.cpp's 99th percentile), RMS Δp and top-1 agreement, time to quantize."""
    return pd.DataFrame(
        [
            {
                "method": run.label,
                "bits/weight (linears)": run.bits_per_weight,
                "perplexity": run.comparison.candidate.perplexity,
                "Δ perplexity": run.comparison.candidate.perplexity / run.comparison.reference.perplexity - 1,
                "mean KL": run.comparison.agreement.mean_kl,
                "KL p99": drift_value(run, "kl_p99"),
                "RMS Δp": drift_value(run, "p_diff_rms"),
                "top-1 agreement": run.comparison.agreement.top1_agreement,
                "seconds to quantize": run.seconds,
            }
            for run in all_runs
        ]
    )


RESULTS_COLUMNS = {
    "bits/weight (linears)": "%.3f",
    "perplexity": "%.3f",
    "Δ perplexity": "percent",
    "mean KL": "%.4f",
    "KL p99": "%.3f",
    "RMS Δp": "percent",
    "top-1 agreement": "percent",
    "seconds to quantize": "%.1f",
}


def details(run: MethodRun, keep: Callable[[object], bool] = lambda detail: True) -> list[tuple[str, object]]:
    """[(layer name, its report detail)] for the layers whose detail passes `keep`."""
    return [(r.name, r.detail) for r in run.layers if r.detail is not None and keep(r.detail)]


def trace_of(run: MethodRun) -> QATTrace | None:
    return qat_trace(run.layers)


def qat_takeaway(trace: QATTrace, run: MethodRun) -> str:
    """What the steps bought, on the held-out (evaluation) text."""
    sentence = (
        f"Rounding (PTQ) takes the held-out loss from {trace.float_loss:.3f} to {trace.ptq_loss:.3f} nats; "
        f"{len(trace.train_loss)} QAT steps ({trace.seconds_per_step:.1f} s each) bring it to "
        f"{trace.qat_loss:.3f}"
    )
    recovered = trace.recovered
    if math.isnan(recovered):  # PTQ lost nothing
        sentence += "."
    elif recovered > 1:
        sentence += (
            ", below the float model: training on text like the held-out text also adapts the model to it, "
            "so part of the gain is fine-tuning, not recovery."
        )
    else:
        sentence += f", {max(recovered, 0.0):.0%} of what PTQ lost."
    sentences = [sentence]
    moved = [detail.moved for _, detail in details(run, lambda d: d.moved is not None)]
    if moved:
        sentences.append(
            f"{sum(moved) / len(moved):.1%} of the weights end on another level than round-to-nearest's; the "
            "rest of the difference is group scales and zero points following the trained ranges."
        )
    sentences.append("Each step trains on a different calibration window, so the training curve is noisy.")
    return " ".join(sentences)


# -- each method's own figure, keyed by its report-detail type -------------------------------------------


def _int8_kept_dims(run: MethodRun) -> None:
    kept = details(run, lambda d: d.tokens > 0)  # recorded on calibration text
    if kept:
        figure = bar(
            [n for n, _ in kept],
            [len(d.outlier_dims) for _, d in kept],
            f"{run.label}: input dims kept in 16-bit",
            "dims",
        )
        st.plotly_chart(figure, width="stretch", key=f"methods_int8_{run.label}")


def _smoothquant_maxima(run: MethodRun) -> None:
    series = dict(details(run, lambda d: d.act_max_before is not None))
    if series:
        name = st.selectbox("Layer (SmoothQuant)", list(series), key=f"methods_sq_layer_{run.label}")
        figure = maxima(series[name].act_max_before, series[name].act_max_after, name)
        st.plotly_chart(figure, width="stretch", key=f"methods_sq_{run.label}")


def _gptq_loss(run: MethodRun) -> None:
    losses = details(run, lambda d: d.loss is not None)
    if losses:
        figure = bar(
            [n for n, _ in losses], [d.loss for _, d in losses], f"{run.label}: GPTQ loss per layer", "loss"
        )
        st.plotly_chart(figure, width="stretch", key=f"methods_gptq_{run.label}")


def _awq_search(run: MethodRun) -> None:
    curves = dict(details(run))
    if curves:
        name = st.selectbox("Layer (AWQ)", list(curves), key=f"methods_awq_layer_{run.label}")
        detail = curves[name]
        figure = curve(
            detail.curve, f"{name}: AWQ scale search", "α (s = mean|x|^α)", "output error", detail.alpha
        )
        st.plotly_chart(figure, width="stretch", key=f"methods_awq_{run.label}")


def _qat_training(run: MethodRun) -> None:
    trace = trace_of(run)
    if trace is not None:
        figure = qat_curve(trace, f"{run.label}: training loss and held-out losses")
        st.plotly_chart(figure, width="stretch", key=f"methods_qat_{run.label}")
        st.caption(qat_takeaway(trace, run))


FIGURES: dict[type, Callable[[MethodRun], None]] = {
    LLMInt8Detail: _int8_kept_dims,
    SmoothQuantDetail: _smoothquant_maxima,
    GPTQDetail: _gptq_loss,
    AWQDetail: _awq_search,
    QATDetail: _qat_training,
}


def method_figure(run: MethodRun) -> None:
    """Draw the run's own diagnostics, if its method's report detail has a figure."""
    draw = FIGURES.get(method_info(run.config).detail_type)
    if draw is not None:
        draw(run)
