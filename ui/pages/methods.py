"""The Methods lab's pieces: a form per method with the papers' defaults, the runner that quantizes and
scores each one, and the figures (per-layer error, LLM.int8 kept dims, SmoothQuant maxima, GPTQ loss,
AWQ search curve, QAT training curve). Runs are kept in the session and offered to the Compare page."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import plotly.graph_objects as go
import streamlit as st

from engine.evaluation.perplexity import ComparisonResult, ReferenceCache, evaluate_against_reference
from engine.methods import QuantizedModel, RTNConfig, quantize_model
from engine.methods.awq import AWQConfig
from engine.methods.bnb import BnbConfig
from engine.methods.gptq import GPTQConfig
from engine.methods.llm_int8 import LLMInt8Config
from engine.methods.qat import QATConfig, QATTrace, qat_trace
from engine.methods.smoothquant import SmoothQuantConfig
from engine.quant.schemes import QuantScheme
from ui import state

METHODS = ["RTN", "LLM.int8()", "SmoothQuant", "GPTQ", "AWQ", "bitsandbytes", "QAT"]
NEEDS_CALIBRATION = {"SmoothQuant", "GPTQ", "AWQ", "QAT"}
USES_CALIBRATION = NEEDS_CALIBRATION | {"LLM.int8()"}  # LLM.int8 reports its kept dims on calibration text
RUNS = "methods_runs"  # session key: {label: MethodRun}
RUNS_MODEL = "methods_runs_model"  # session key: the model selection those runs were built from
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


@dataclass
class MethodRun:
    label: str
    method: str
    quantized: QuantizedModel
    comparison: ComparisonResult
    seconds: float  # time to quantize

    @property
    def bits_per_weight(self) -> float:
        return self.quantized.bits_per_weight


def runs() -> dict[str, MethodRun]:
    """This session's Methods-lab runs, for the model loaded now: loading another model (or the same in
    another device / dtype) starts an empty set, so no page offers a copy of a model no longer loaded."""
    model = state.selection()
    if st.session_state.setdefault(RUNS_MODEL, model) != model:
        st.session_state[RUNS] = {}
        st.session_state[RUNS_MODEL] = model
    return st.session_state.setdefault(RUNS, {})


def config_form(method: str, bits: int, group_size: int, where=st):
    """The method's knobs with the papers' defaults; returns its config (raises ValueError if impossible)."""
    scheme = QuantScheme(bits, "int", True, "group", group_size)
    key = re.sub(r"\W", "", method.lower())
    if method == "RTN":
        return RTNConfig(scheme)
    if method == "LLM.int8()":
        threshold = where.number_input(
            "Outlier threshold", 0.5, 1000.0, 6.0, 0.5, key=f"methods_{key}_threshold"
        )
        return LLMInt8Config(threshold=float(threshold))
    if method == "SmoothQuant":
        alpha = where.slider("Migration strength α", 0.0, 1.0, 0.5, 0.05, key=f"methods_{key}_alpha")
        return SmoothQuantConfig(alpha=float(alpha))
    if method == "GPTQ":
        cols = where.columns(2)
        damping = cols[0].number_input(
            "Damping", 0.001, 0.5, 0.01, 0.005, format="%.3f", key=f"methods_{key}_damp"
        )
        act_order = cols[1].checkbox("Act order", key=f"methods_{key}_actorder")
        return GPTQConfig(scheme, damping=float(damping), act_order=act_order)
    if method == "AWQ":
        grid = where.slider("Scale search points", 2, 40, 20, key=f"methods_{key}_grid")
        return AWQConfig(QuantScheme(bits, "int", False, "group", group_size), grid=int(grid))
    if method == "QAT":
        cols = where.columns(2)
        steps = cols[0].number_input(
            "Training steps",
            1,
            500,
            10,
            key=f"methods_{key}_steps",
            help="One forward and backward of one calibration window each: 4-7 s a step on two CPU cores "
            "for SmolLM2-135M with 256-token windows, so the default 10 take about a minute.",
        )
        lr = cols[1].select_slider(
            "Learning rate",
            [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3],
            3e-4,
            format_func=lambda v: f"{v:g}",
            key=f"methods_{key}_lr",
            help="Peak Adam rate, cosine-decayed to 0. 3e-4 recovered the most in 4-10 steps at 3 bits.",
        )
        return QATConfig(QuantScheme(bits, "int", False, "group", group_size), steps=int(steps), lr=float(lr))
    mode = where.radio("Format", ["nf4", "fp4", "int8"], horizontal=True, key=f"methods_{key}_mode")
    double = where.checkbox("Double quantization", key=f"methods_{key}_dq", disabled=mode == "int8")
    return BnbConfig(mode=mode, double_quant=bool(double and mode != "int8"))


def label_of(method: str, config) -> str:
    if isinstance(config, RTNConfig):
        return f"RTN {config.weights.label}"
    return getattr(config, "label", None) or f"{method} {config}"


def run_method(
    method: str, config, reference, calibration, evaluation, reference_cache: ReferenceCache, progress
) -> MethodRun:
    """Quantize a copy with `config` (progress 0-0.8), then score it against the reference (0.8-1)."""
    start = time.perf_counter()
    calib = calibration if method in USES_CALIBRATION else None
    if method == "QAT":  # trains on the calibration windows, measures its loss on the evaluation ones
        calib = (calibration, evaluation)
    quantized = quantize_model(
        reference,
        config,
        calib=calib,
        progress=lambda f, m: progress(0.8 * f, m),
    )
    seconds = time.perf_counter() - start
    comparison = evaluate_against_reference(
        reference,
        quantized.model,
        evaluation,
        reference_cache,
        progress=lambda f, m: progress(0.8 + 0.2 * f, m),
    )
    return MethodRun(label_of(method, config), method, quantized, comparison, seconds)


def _layer_index(name: str) -> str:
    match = re.search(r"layers\.(\d+)\.(?:\w+\.)?(\w+)$", name)
    return f"{match.group(1)}.{match.group(2)}" if match else name


def per_layer_error(all_runs: list[MethodRun]) -> go.Figure:
    """Weight SQNR of every quantized linear, one line per method (higher is better)."""
    figure = go.Figure()
    for index, run in enumerate(all_runs):
        layers = run.quantized.layers
        figure.add_scatter(
            x=[_layer_index(r.name) for r in layers],
            y=[r.weight_sqnr_db for r in layers],
            mode="lines",
            name=run.label,
            line=dict(color=COLORS[index % len(COLORS)], width=1.5),
            hovertemplate="%{x}: %{y:.1f} dB<extra>" + run.label + "</extra>",
        )
    figure.update_layout(
        title="Weight SQNR per linear layer (dB, higher is closer to the original)",
        height=360,
        margin=dict(l=10, r=10, t=50, b=10),
        xaxis=dict(title="layer.module", showticklabels=False),
        yaxis_title="SQNR (dB)",
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
    )
    return figure


def output_error(all_runs: list[MethodRun]) -> go.Figure | None:
    """Relative error of each layer's output on calibration inputs, for methods that measure it."""
    measured = [r for r in all_runs if any(layer.output_error is not None for layer in r.quantized.layers)]
    if not measured:
        return None
    figure = go.Figure()
    for index, run in enumerate(measured):
        layers = [layer for layer in run.quantized.layers if layer.output_error is not None]
        figure.add_scatter(
            x=[_layer_index(r.name) for r in layers],
            y=[r.output_error for r in layers],
            mode="lines",
            name=run.label,
            line=dict(color=COLORS[index % len(COLORS)]),
        )
        rtn = [layer.detail.get("rtn_output_error") for layer in layers]
        if all(v is not None for v in rtn):
            figure.add_scatter(
                x=[_layer_index(r.name) for r in layers],
                y=rtn,
                mode="lines",
                name=f"RTN on the same inputs ({run.label})",
                line=dict(color=COLORS[index % len(COLORS)], dash="dot"),
            )
    figure.update_layout(
        title="Layer output error on calibration inputs (relative; lower is better)",
        height=340,
        margin=dict(l=10, r=10, t=50, b=10),
        xaxis=dict(title="layer.module", showticklabels=False),
        yaxis=dict(title="relative error", type="log"),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
    )
    return figure


def detail_series(run: MethodRun, key: str) -> list[tuple[str, object]]:
    return [(layer.name, layer.detail[key]) for layer in run.quantized.layers if key in layer.detail]


def bar(names: list[str], values: list[float], title: str, y: str) -> go.Figure:
    figure = go.Figure(go.Bar(x=[_layer_index(n) for n in names], y=values, marker_color="#1f77b4"))
    figure.update_layout(title=title, height=300, margin=dict(l=10, r=10, t=50, b=10), yaxis_title=y)
    return figure


def curve(points: list, title: str, x: str, y: str, best: float | None = None) -> go.Figure:
    figure = go.Figure(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers"))
    if best is not None:
        figure.add_vline(
            x=best, line=dict(color="#d62728", dash="dash"), annotation_text=f"chosen {best:.2f}"
        )
    figure.update_layout(
        title=title, height=300, margin=dict(l=10, r=10, t=50, b=10), xaxis_title=x, yaxis_title=y
    )
    return figure


def maxima(before: list[float], after: list[float], layer: str) -> go.Figure:
    figure = go.Figure()
    figure.add_scatter(y=before, mode="lines", name="before smoothing", line=dict(color="#d62728"))
    figure.add_scatter(y=after, mode="lines", name="after smoothing", line=dict(color="#1f77b4"))
    figure.update_layout(
        title=f"{layer}: per-channel max |X| of the input (the outliers SmoothQuant moves into the weights)",
        height=320,
        margin=dict(l=10, r=10, t=50, b=10),
        xaxis_title="input channel",
        yaxis=dict(title="max |x|", type="log"),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
    )
    return figure


def trace_of(run: MethodRun) -> QATTrace | None:
    return qat_trace(run.quantized.layers)


def qat_curve(trace: QATTrace, title: str) -> go.Figure:
    """Training loss per step, the float and PTQ held-out losses as lines, QAT's held-out loss as a star."""
    steps = list(range(1, len(trace.train_loss) + 1))
    figure = go.Figure()
    figure.add_scatter(
        x=steps,
        y=trace.train_loss,
        mode="lines+markers",
        name="training loss (this step's window)",
        line=dict(color="#1f77b4"),
    )
    for value, name, color in (
        (trace.float_loss, "float, held-out", "#2ca02c"),
        (trace.ptq_loss, "PTQ (step 0), held-out", "#d62728"),
    ):
        figure.add_scatter(
            x=[0, len(steps)], y=[value, value], mode="lines", name=name, line=dict(color=color, dash="dash")
        )
    figure.add_scatter(
        x=[len(steps)],
        y=[trace.qat_loss],
        mode="markers",
        name="QAT, held-out",
        marker=dict(symbol="star", size=16, color="#9467bd"),
    )
    figure.update_layout(
        title=title,
        height=340,
        margin=dict(l=10, r=10, t=50, b=10),
        xaxis=dict(title="step", rangemode="tozero"),
        yaxis_title="next-token loss (nats)",
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
    )
    return figure


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
    moved = [value for _, value in detail_series(run, "moved")]
    if moved:
        sentences.append(
            f"{sum(moved) / len(moved):.1%} of the weights end on another level than round-to-nearest's; the "
            "rest of the difference is group scales and zero points following the trained ranges."
        )
    sentences.append("Each step trains on a different calibration window, so the training curve is noisy.")
    return " ".join(sentences)
