"""The Speed page's charts and tables, built from engine.speed's plain dataclasses (plotly figures, pandas
frames); no widgets here. Formats keep one colour across charts; bitsandbytes' layers are dotted lines."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from engine import speed
from ui.charts import layout

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


def _layout(figure: go.Figure, title: str, x: str, y: str, height: int = 440) -> go.Figure:
    return layout(figure, title, x, y, height, legend_below=True, bargap=None)


def _by_format(results: list[speed.KernelTiming], label: str) -> dict[str, list[speed.KernelTiming]]:
    lines: dict[str, list[speed.KernelTiming]] = {}
    for r in results:
        if r.shape.label == label:
            lines.setdefault(r.format, []).append(r)
    return {fmt: sorted(rows, key=lambda r: r.batch) for fmt, rows in lines.items()}


def _batch_axis(figure: go.Figure, results: list[speed.KernelTiming], label: str) -> None:
    """Batch on a log x axis, labelled with exactly the batch sizes that were timed (powers of 4)."""
    batches = sorted({r.batch for r in results if r.shape.label == label})
    figure.update_xaxes(type="log", tickmode="array", tickvals=batches, ticktext=[f"{b:,}" for b in batches])


def speedup_chart(results: list[speed.KernelTiming], label: str, baseline: str) -> go.Figure:
    """Kernel-time speed-up over the baseline vs batch, one line per format: where a line crosses 1,
    quantization stops paying. The hover gives call time and its speed-up too."""
    figure = go.Figure()
    for fmt, rows in _by_format(results, label).items():
        figure.add_scatter(
            x=[r.batch for r in rows],
            y=[r.speedup for r in rows],
            mode="lines+markers",
            name=fmt,
            line=dict(color=FORMAT_COLORS.get(fmt), dash="dot" if fmt in speed.BNB_FORMATS else "solid"),
            customdata=[
                [r.kernel, r.kernel_seconds * 1e6, r.call_seconds * 1e6, r.call_speedup] for r in rows
            ],
            hovertemplate="batch %{x}: %{y:.2f}x (kernel %{customdata[1]:.1f} µs, %{customdata[0]}; "
            "call %{customdata[2]:.1f} µs, %{customdata[3]:.2f}x)<extra>" + fmt + "</extra>",
        )
    figure.add_hline(y=1.0, line=dict(color="gray", dash="dash"), annotation_text=f"{baseline} baseline")
    _batch_axis(figure, results, label)
    figure.update_yaxes(type="log")
    return _layout(
        figure,
        f"Kernel speed-up over {baseline}: {label}",
        "batch (rows of x, log scale)",
        "speed-up in kernel time (log)",
    )


def bandwidth_chart(
    results: list[speed.KernelTiming], label: str, bandwidth: float | None = None
) -> go.Figure:
    """Achieved GB/s (weights + activations moved per call, over kernel time) vs batch, one line per
    format."""
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
    _batch_axis(figure, results, label)
    return _layout(figure, f"Achieved bandwidth (kernel time): {label}", "batch (log scale)", "GB/s")


KERNEL_COLUMNS = ("kernel µs", "call µs", "overhead µs")


def kernel_table(results: list[speed.KernelTiming]) -> pd.DataFrame:
    """One row per (shape, batch, format): kernel and call time, their difference, and what follows from
    them (GB/s and TFLOP/s from kernel time; speed-ups over the baseline for both)."""
    return pd.DataFrame(
        [
            {
                "shape": r.shape.label,
                "batch": r.batch,
                "format": r.format,
                "kernel": r.kernel,
                "kernel µs": r.kernel_seconds * 1e6,
                "call µs": r.call_seconds * 1e6,
                "overhead µs": r.overhead_seconds * 1e6,
                "GB/s": r.gbytes_per_s,
                "TFLOP/s": r.tflops,
                "speed-up (kernel)": r.speedup,
                "speed-up (call)": r.call_speedup,
                "kernel timed by": r.method,
            }
            for r in results
        ]
    ).round(
        {
            "kernel µs": 1,
            "call µs": 1,
            "overhead µs": 1,
            "GB/s": 2,
            "TFLOP/s": 4,
            "speed-up (kernel)": 2,
            "speed-up (call)": 2,
        }
    )


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
