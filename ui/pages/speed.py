"""Helpers for the Speed page: running the engine's benchmarks into session state, and their charts.

Results are kept per browser session (`st.session_state`), never cached across sessions: a timing is a
measurement of one moment on one machine, and the page says which (device, threads, load average).
Charts are plotly figures built from the engine's plain dataclasses.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from engine import speed
from ui.errors import show_error
from ui.pages import methods as methods_view
from ui.progress import progress_bar

KERNELS = "speed_kernel_run"  # session-state key: the last KernelRun
DECODE = "speed_decode_run"  # session-state key: the last DecodeRun
FORMAT_COLORS = {
    "fp32": "#7f7f7f",
    "bf16": "#9467bd",
    "fp16": "#8c564b",
    "W8A16": "#1f77b4",
    "W4A16": "#d62728",
    "W4A16 tinygemm": "#ff7f0e",
    "W8A8": "#2ca02c",
    "NF4 (bnb)": "#e377c2",
    "LLM.int8 (bnb)": "#17becf",
}
LOOP_COLORS = {
    speed.DYNAMIC_LOOP: "#1f77b4",
    speed.HF_LOOP: "#7f7f7f",
    speed.STATIC_LOOP: "#ff7f0e",
    speed.COMPILED_LOOP: "#2ca02c",
}
LOOP_HELP = (
    f"**{speed.DYNAMIC_LOOP}**: our plain token loop (engine.runtime.generation) on transformers' growing cache, "
    f"what the rest of the app runs. **{speed.HF_LOOP}**: transformers' own `generate` (greedy); its "
    f"prefill is timed as a 1-token generate. **{speed.STATIC_LOOP}**: engine.runtime.decode, a KV cache "
    f"preallocated to prompt + new tokens so every step has the same shapes. **{speed.COMPILED_LOOP}**: "
    "that step through `torch.compile`; on a GPU with `mode='reduce-overhead'` (CUDA graphs)."
)
DECODE_CPU_NOTE = (
    "On a CPU there are **no CUDA graphs**: the compiled step is inductor's C++ / OpenMP code, which "
    "removes Python overhead and fuses small ops but reads the same weights. Compiling takes about a "
    "minute per variant on two cores; it runs in a warm-up, is shown in **compile s**, and is never "
    "counted in tokens/s. The loaded model keeps its compiled step for the next run with the same "
    "prompt and token counts; packed variants are rebuilt each run and compile again (faster, from "
    "inductor's on-disk cache)."
)
DECODE_GPU_NOTE = (
    "The compiled step runs as a **CUDA graph** (`torch.compile(mode='reduce-overhead')`): one launch "
    "per token, so batch-1 decode is bound by reading the weights. Compiling and recording the graph "
    "happen in a warm-up, shown in **compile s** and never counted in tokens/s."
)
CPU_NOTE = (
    "These are **CPU kernels**: PyTorch's packed int4 / int8 matmuls (bf16 activations) and its int8 × int8 "
    "`_int_mm`, timed on this machine's cores, which other processes may share; bitsandbytes' NF4 and "
    "LLM.int8() layers run its CPU code for comparison. The GPU engine numbers "
    "(our Triton kernels, tinygemm, cuBLAS) need a GPU run: pick `cuda` in the sidebar on a machine with one."
)


@dataclass
class Machine:
    device: str
    threads: int
    load_average: tuple[float, float, float] | None
    when: str

    @classmethod
    def now(cls, device: str) -> Machine:
        name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {os.cpu_count()} cores"
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        return cls(name, torch.get_num_threads(), load, dt.datetime.now().strftime("%Y-%m-%d %H:%M"))

    @property
    def caption(self) -> str:
        load = f", load average {self.load_average[0]:.1f}" if self.load_average else ""
        return f"Measured {self.when} on {self.device} ({self.threads} torch threads{load})."


@dataclass
class KernelRun:
    machine: Machine
    results: list[speed.KernelTiming] = field(default_factory=list)


@dataclass
class DecodeRun:
    machine: Machine
    model_label: str
    synthetic: bool
    results: list[speed.DecodeTiming] = field(default_factory=list)


def methods_lab_variants() -> tuple[dict, dict[str, str]]:
    """This session's Methods-lab models: ({variant name: MethodRun} that run real kernels, {label: why
    not} for the rest). Checked from the layers' schemes; nothing is built here."""
    runnable, refused = {}, {}
    for run in methods_view.runs().values():
        reason = speed.runnable_refusal(run.quantized.model)
        if reason is None:
            runnable[f"{run.label} (Methods lab)"] = run
        else:
            refused[run.label] = reason
    return runnable, refused


def lab_builders(lab_runs: dict, variants: list[str]) -> dict:
    """Builders for the picked Methods-lab variants: a packed (or bitsandbytes) copy, built when timed."""
    return {
        name: (lambda run=run: speed.runnable_copy(run.quantized.model))
        for name, run in lab_runs.items()
        if name in variants
    }


def device_note(device: str) -> None:
    if device.startswith("cuda"):
        st.caption(f"Device: {torch.cuda.get_device_name()}. Timings synchronize the GPU around every call.")
    else:
        st.info(CPU_NOTE, icon=":material/memory:")


def shape_choices(model, source: str) -> dict[str, speed.LinearShape]:
    if source == "Llama-2-7B shapes":
        names = (("q/k/v/o_proj",), ("gate/up_proj",), ("down_proj",))
        shapes = [
            speed.LinearShape(o, i, 1, n) for (o, i), n in zip(speed.LLAMA_2_7B_SHAPES, names, strict=True)
        ]
    else:
        head = speed.output_head_shape(model)
        shapes = speed.model_linear_shapes(model) + ([head] if head else [])
    return {shape.label: shape for shape in shapes}


def default_shapes(choices: dict[str, speed.LinearShape]) -> list[str]:
    """Every shape but the output head: it is large, and no method quantizes it unless asked to."""
    return [label for label, shape in choices.items() if shape.names != ("lm_head",)]


# -- running ----------------------------------------------------------------------------------------------


def run_kernels(shapes, batches, formats, device: str, repeats: int) -> None:
    update, clear = progress_bar()
    try:
        results = speed.microbenchmark(
            shapes,
            sorted(batches),
            formats,
            device=device,
            repeats=repeats,
            warmup=max(2, repeats // 5),
            progress=update,
        )
        st.session_state[KERNELS] = KernelRun(Machine.now(device), results)
    except Exception as exc:  # a refused or failed run leaves the previous results on screen
        show_error(exc, prefix="The microbenchmark stopped: ")
    finally:
        clear()


def run_decode(
    model,
    tokenizer,
    variants,
    prompt_tokens: int,
    new_tokens: int,
    label: str,
    synthetic: bool,
    loops=(speed.DYNAMIC_LOOP,),
    builders=None,
) -> None:
    device = str(next(model.parameters()).device)
    update, clear = progress_bar()
    try:
        results = speed.decode_comparison(
            model,
            tokenizer,
            variants,
            prompt_tokens=prompt_tokens,
            new_tokens=new_tokens,
            progress=update,
            loops=list(loops),
            builders=builders,
        )
        st.session_state[DECODE] = DecodeRun(Machine.now(device), label, synthetic, results)
    except Exception as exc:
        show_error(exc, prefix="The decode benchmark stopped: ")
    finally:
        clear()


# -- charts and tables ------------------------------------------------------------------------------------


def _layout(figure: go.Figure, title: str, x: str, y: str, height: int = 440) -> go.Figure:
    """Title on top, legend under the x axis: up to nine formats wrap there without covering the title."""
    figure.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        height=height,
        margin=dict(l=10, r=10, t=50, b=10),
        legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0),
    )
    return figure


def _by_format(results: list[speed.KernelTiming], label: str) -> dict[str, list[speed.KernelTiming]]:
    lines: dict[str, list[speed.KernelTiming]] = {}
    for r in results:
        if r.shape.label == label:
            lines.setdefault(r.format, []).append(r)
    return {fmt: sorted(rows, key=lambda r: r.batch) for fmt, rows in lines.items()}


def speedup_chart(results: list[speed.KernelTiming], label: str, baseline: str) -> go.Figure:
    """Speed-up over the baseline vs batch, one line per format: where a line crosses 1, quantization
    stops paying."""
    figure = go.Figure()
    for fmt, rows in _by_format(results, label).items():
        figure.add_scatter(
            x=[r.batch for r in rows],
            y=[r.speedup for r in rows],
            mode="lines+markers",
            name=fmt,
            line=dict(color=FORMAT_COLORS.get(fmt), dash="dot" if fmt in speed.BNB_FORMATS else "solid"),
            customdata=[[r.kernel, r.seconds * 1e6] for r in rows],
            hovertemplate="batch %{x}: %{y:.2f}x (%{customdata[1]:.0f} µs, %{customdata[0]})<extra>"
            + fmt
            + "</extra>",
        )
    figure.add_hline(y=1.0, line=dict(color="gray", dash="dash"), annotation_text=f"{baseline} baseline")
    figure.update_xaxes(type="log", dtick=0.60206)  # powers of 4
    figure.update_yaxes(type="log")
    return _layout(
        figure, f"Speed-up over {baseline}: {label}", "batch (rows of x, log scale)", "speed-up (log)"
    )


def bandwidth_chart(
    results: list[speed.KernelTiming], label: str, bandwidth: float | None = None
) -> go.Figure:
    """Achieved GB/s (weights + activations moved per call) vs batch, one line per format."""
    figure = go.Figure()
    for fmt, rows in _by_format(results, label).items():
        figure.add_scatter(
            x=[r.batch for r in rows],
            y=[r.gbytes_per_s for r in rows],
            mode="lines+markers",
            name=fmt,
            line=dict(color=FORMAT_COLORS.get(fmt), dash="dot" if fmt in speed.BNB_FORMATS else "solid"),
            hovertemplate="batch %{x}: %{y:.1f} GB/s<extra>" + fmt + "</extra>",
        )
    if bandwidth:
        figure.add_hline(
            y=bandwidth / 1e9,
            line=dict(color="#d62728", dash="dot"),
            annotation_text="measured copy bandwidth",
        )
    figure.update_xaxes(type="log", dtick=0.60206)
    return _layout(figure, f"Achieved bandwidth: {label}", "batch (log scale)", "GB/s")


def kernel_table(results: list[speed.KernelTiming]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "shape": r.shape.label,
                "batch": r.batch,
                "format": r.format,
                "kernel": r.kernel,
                "µs": r.seconds * 1e6,
                "GB/s": r.gbytes_per_s,
                "TFLOP/s": r.tflops,
                "speed-up": r.speedup,
            }
            for r in results
        ]
    ).round({"µs": 1, "GB/s": 2, "TFLOP/s": 4, "speed-up": 2})


def _loops(results: list[speed.DecodeTiming]) -> dict[str, list[speed.DecodeTiming]]:
    by_loop: dict[str, list[speed.DecodeTiming]] = {}
    for r in results:
        by_loop.setdefault(r.loop, []).append(r)
    return by_loop


def decode_chart(results: list[speed.DecodeTiming]) -> go.Figure:
    """Decode tokens/s per variant, one bar per decode loop, and the variant's bandwidth roofline as a
    hollow bar beside them."""
    figure = go.Figure()
    for loop, rows in _loops(results).items():
        figure.add_bar(
            x=[r.variant for r in rows],
            y=[r.decode_tokens_per_s for r in rows],
            name=loop,
            marker_color=LOOP_COLORS.get(loop, "#1f77b4"),
            text=[f"{r.decode_tokens_per_s:.1f}" for r in rows],
            textposition="outside",
            customdata=[[r.compile_seconds] for r in rows],
            hovertemplate="%{x}: %{y:.1f} tokens/s (compile %{customdata[0]:.1f} s, not counted)<extra>"
            + loop
            + "</extra>",
        )
    roofs = list({r.variant: r for r in results}.values())  # one per variant
    figure.add_bar(
        x=[r.variant for r in roofs],
        y=[r.roofline_tokens_per_s for r in roofs],
        name="roofline (bytes per token ÷ measured bandwidth)",
        marker=dict(color="rgba(0,0,0,0)", line=dict(color="#444", width=2)),
        customdata=[[r.bytes_per_token / 2**20] for r in roofs],
        hovertemplate="%{x}: %{y:.1f} tokens/s if memory-bound (%{customdata[0]:.0f} MiB per token)"
        "<extra>roofline</extra>",
    )
    figure.update_layout(barmode="group")
    return _layout(figure, "Decode (batch 1) with its memory roofline", "variant", "tokens/s")


def prefill_chart(results: list[speed.DecodeTiming]) -> go.Figure:
    figure = go.Figure()
    for loop, rows in _loops(results).items():
        figure.add_bar(
            x=[r.variant for r in rows],
            y=[r.prefill_tokens_per_s for r in rows],
            name=loop,
            marker_color=LOOP_COLORS.get(loop, "#1f77b4"),
            text=[f"{r.prefill_tokens_per_s:.0f}" for r in rows],
            textposition="outside",
            hovertemplate="%{x}: %{y:.0f} prompt tokens/s<extra>" + loop + "</extra>",
        )
    figure.update_layout(barmode="group")
    return _layout(figure, "Prefill (the prompt, matrix-matrix)", "variant", "prompt tokens/s", height=380)


def same_tokens(results: list[speed.DecodeTiming]) -> list[bool]:
    """Whether each row decoded the same tokens as its variant's first row (greedy loops should)."""
    first: dict[str, tuple[int, ...]] = {}
    for r in results:
        first.setdefault(r.variant, r.token_ids)
    return [r.token_ids == first[r.variant] for r in results]


def decode_table(results: list[speed.DecodeTiming]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "variant": r.variant,
                "loop": r.loop,
                "prefill tok/s": r.prefill_tokens_per_s,
                "decode tok/s": r.decode_tokens_per_s,
                "roofline tok/s": r.roofline_tokens_per_s,
                "% of roofline": 100 * r.roofline_fraction,
                "compile s": r.compile_seconds,
                "ran as": r.ran_as or "eager",
                "same tokens": same,
                "weights MiB": r.weight_bytes / 2**20,
                "MiB read per token": r.bytes_per_token / 2**20,
                "tokens": f"{r.prompt_tokens} + {r.new_tokens}",
                "note": r.note,
                "first words": r.text[:60],
            }
            for r, same in zip(results, same_tokens(results), strict=True)
        ]
    ).round(
        {
            "prefill tok/s": 1,
            "decode tok/s": 1,
            "roofline tok/s": 1,
            "% of roofline": 0,
            "compile s": 1,
            "weights MiB": 1,
            "MiB read per token": 1,
        }
    )
