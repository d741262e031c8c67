"""The Memory page's offload and best-fit tabs: how many layers fit on the GPU and how fast the rest decodes
from CPU memory (the speed cliff), and the best weight format, longest context and largest batch for one
GPU or several. Plain values in; engine.sizing.offload and engine.sizing.bestfit do the arithmetic."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from engine.sizing.bestfit import best_format, best_of, largest_batch, largest_context, verdict
from engine.sizing.estimate import ConfigError, MemoryBreakdown
from engine.sizing.gpus import GPU
from engine.sizing.offload import (
    HOST_MEMORY,
    OFFLOAD_MODES,
    PCIE,
    ExpertsOnCPU,
    Host,
    OffloadPlan,
    speed_cliff,
)
from ui.charts import layout
from ui.errors import show_error
from ui.widgets import NumberBoxes

GIB = 1024**3
GPU_COUNTS = [1, 2, 4, 8]
FIT_SHADE = "rgba(44, 160, 44, 0.12)"
BEST_ROW = "background-color: rgba(44, 160, 44, 0.18)"


def host_inputs() -> Host | None:
    """Host RAM, its memory and the PCIe link; None (after saying why) when the RAM is out of range."""
    number = NumberBoxes()
    ram, memory, pcie = st.columns(3)
    ram_gib = number(
        ram, "Host RAM for the model (GiB)", 1, 4096, 64, key="memory_offload_ram", name="Host RAM"
    )
    link = memory.selectbox(
        "Host memory",
        HOST_MEMORY,
        index=1,
        format_func=lambda m: f"{m.name}: {m.bandwidth / 1e9:,.1f} GB/s",
        key="memory_offload_host",
        help="Datasheet peak: transfer rate × 8 bytes × channels. Apple's unified memory is not here: its GPU "
        "reads all of it, so nothing is offloaded.",
    )
    bus = pcie.selectbox(
        "GPU link",
        PCIE,
        index=1,
        format_func=lambda p: f"{p.name}: {p.bandwidth / 1e9:,.2f} GB/s",
        key="memory_offload_pcie",
        help="Per direction, the PCI-SIG rate: what streamed weights cross every token.",
    )
    if number.show(ram):
        return None
    return Host(ram_gib * GIB, link.bandwidth, bus.bandwidth)


def speed_cliff_chart(cliff: list[OffloadPlan], chosen: int, unit: str) -> go.Figure:
    """Tokens/s against layers on the GPU: the fitting range shaded, the chosen number marked."""
    figure = go.Figure()
    fitting = [plan.gpu_layers for plan in cliff if plan.fits]
    if fitting:
        figure.add_vrect(
            x0=min(fitting) - 0.5,
            x1=max(fitting) + 0.5,
            fillcolor=FIT_SHADE,
            line_width=0,
            annotation_text="fits GPU and RAM",
            annotation_position="top left",
        )
    figure.add_scatter(
        x=[plan.gpu_layers for plan in cliff],
        y=[plan.tokens_per_s for plan in cliff],
        mode="lines+markers",
        name="decode tokens/s",
        marker=dict(size=5, color=["#1f77b4" if plan.fits else "#9e9e9e" for plan in cliff]),
        customdata=[[plan.gpu_bytes / GIB, "fits" if plan.fits else "does not fit"] for plan in cliff],
        hovertemplate="%{x} " + unit + ": %{y:,.1f} tokens/s, %{customdata[0]:,.1f} GiB on the GPU "
        "(%{customdata[1]})<extra></extra>",
    )
    picked = cliff[chosen]
    figure.add_scatter(
        x=[picked.gpu_layers],
        y=[picked.tokens_per_s],
        mode="markers",
        name="your choice",
        marker=dict(size=14, symbol="star", color="#d62728"),
        hoverinfo="skip",
    )
    figure.update_yaxes(rangemode="tozero")
    return layout(figure, "The speed cliff", unit, "decode tokens/s (batch 1, roofline)", height=360, top=60)


def plan_rows(plan: OffloadPlan) -> list[dict]:
    """Where the bytes sit and what each decode step costs from there."""
    return [
        {"part": "GPU memory", "holds GiB": plan.gpu_bytes / GIB, "ms per token": plan.gpu_seconds * 1e3},
        {"part": "CPU RAM", "holds GiB": plan.cpu_bytes / GIB, "ms per token": plan.cpu_seconds * 1e3},
        {"part": "PCIe copies", "holds GiB": None, "ms per token": plan.pcie_seconds * 1e3},
    ]


def offload_tab(config, breakdown: MemoryBreakdown, device: GPU) -> None:
    """Layers (or routed experts) on the GPU vs in CPU RAM, for the first weight format's estimate."""
    if device.vendor != "NVIDIA":
        st.info(
            "Offloading splits a model between a GPU and the computer's RAM: pick an NVIDIA GPU. On Apple "
            "silicon the GPU already reads all of its unified memory, and a CPU has nothing to offload to.",
            icon=":material/swap_horiz:",
        )
        return
    modes = [
        m for m in OFFLOAD_MODES if breakdown.parameters.routed_experts or not isinstance(m, ExpertsOnCPU)
    ]
    mode = st.radio(
        "Offload",
        modes,
        format_func=lambda m: m.label,
        horizontal=True,
        key="memory_offload_mode",
        help="Layers on CPU: llama.cpp's -ngl (the CPU computes its layers). Routed experts on CPU: "
        "llama.cpp's --n-cpu-moe (only the experts a token visits are read). Streamed: transformers' "
        'device_map="auto" copies offloaded layers to the GPU every token.',
    )
    host = host_inputs()
    if host is None:
        return
    try:
        cliff = speed_cliff(breakdown, config, device, host, mode)
    except ConfigError as exc:
        show_error(exc)
        return
    layers = len(cliff) - 1
    best = max((plan.gpu_layers for plan in cliff if plan.fits_gpu), default=0)
    chosen = st.slider(
        mode.unit[0].upper() + mode.unit[1:],
        0,
        layers,
        best,
        key=f"memory_offload_layers_{OFFLOAD_MODES.index(mode)}_{layers}_{best}",  # resets to the new best
        help=f"Starts at the most that fit on one {device.name}: {best} of {layers}.",
    )
    plan = cliff[chosen]
    cols = st.columns(4)
    cols[0].metric(
        "Decode", f"{plan.tokens_per_s:,.1f} tok/s", help="Batch 1 roofline at datasheet bandwidths"
    )
    cols[1].metric(
        f"On the GPU (of {device.usable_bytes / GIB:,.0f} GiB)", f"{plan.gpu_bytes / GIB:,.1f} GiB"
    )
    cols[2].metric(f"In RAM (of {host.ram_bytes / GIB:,.0f} GiB)", f"{plan.cpu_bytes / GIB:,.1f} GiB")
    cols[3].metric("All on the GPU", f"{cliff[-1].tokens_per_s:,.1f} tok/s")
    if not plan.fits_gpu:
        st.warning(f"{chosen} {mode.unit} do not fit on one {device.name}.", icon=":material/warning:")
    if not plan.fits_ram:
        st.warning("What stays in RAM is more than the host RAM you gave.", icon=":material/warning:")
    st.plotly_chart(speed_cliff_chart(cliff, chosen, mode.unit), width="stretch", key="memory_offload_chart")
    st.dataframe(
        pd.DataFrame(plan_rows(plan)),
        hide_index=True,
        column_config={
            "holds GiB": st.column_config.NumberColumn(format="%.2f"),
            "ms per token": st.column_config.NumberColumn(format="%.2f"),
        },
    )
    st.caption(
        f"Run it as: `{plan.flags}`. Time per token adds each part's bytes over its bandwidth (no overlap), so "
        "real runs land below these numbers; layers are sized as equal shares of the weights. Activations and "
        f"overhead stay on the GPU. Sized for {breakdown.weights_label}, {breakdown.context:,} tokens, "
        f"batch {breakdown.batch}."
    )


def walk_table(rows) -> pd.io.formats.style.Styler:
    """The format walk as a table, the best row shaded."""
    frame = pd.DataFrame(
        [
            {
                "format": row.label,
                "bits/weight": row.bits_per_weight,
                "per GPU GiB": row.per_gpu_bytes / GIB,
                "headroom GiB": row.headroom_bytes / GIB,
                "fits": "best" if row.best else ("yes" if row.fits else "no"),
                "tok/s": row.tokens_per_s,
            }
            for row in rows
        ]
    )
    best = [row.best for row in rows]
    return frame.style.apply(lambda r: [BEST_ROW if best[r.name] else ""] * len(r), axis=1).format(
        {"bits/weight": "{:.2f}", "per GPU GiB": "{:,.1f}", "headroom GiB": "{:+,.1f}", "tok/s": "{:,.0f}"}
    )


def best_fit_tab(config, inputs) -> None:
    """The best format, longest context and largest batch on 1, 2, 4 or 8 of the chosen GPU
    (`inputs`: the page's SizingInputs)."""
    device = inputs.device
    count = st.selectbox(
        "GPUs (tensor parallel)",
        GPU_COUNTS,
        format_func=lambda n: "1 GPU" if n == 1 else f"{n} × {device.name}",
        key="memory_bestfit_count",
    )
    options = dict(
        attention=inputs.attention,
        prefill_chunk=inputs.prefill_chunk,
        kv_values=inputs.kv_values_name,
        engine=inputs.engine_name,
    )
    try:
        rows = best_format(config, device, count, inputs.context, inputs.batch, inputs.kv_name, **options)
    except ConfigError as exc:
        show_error(exc)
        return
    best = best_of(rows)
    message = verdict(rows, device, count)
    if best is None:
        st.warning(message, icon=":material/block:")
    else:
        st.success(message, icon=":material/check_circle:")
    st.dataframe(walk_table(rows), hide_index=True, width="stretch")
    st.caption(
        f"From 16-bit down, by bits per weight on this model, at {inputs.context:,} tokens × batch "
        f"{inputs.batch}. Headroom: what is left on each GPU. tok/s: decode roofline at batch 1."
    )
    if best is None:
        return
    max_context = largest_context(config, device, count, best.name, inputs.kv_name, inputs.batch, **options)
    max_batch = largest_batch(config, device, count, best.name, inputs.kv_name, inputs.context, **options)
    cols = st.columns(2)
    cols[0].metric(f"Longest context at batch {inputs.batch}", f"{max_context:,} tokens")
    cols[1].metric(f"Largest batch at {inputs.context:,} tokens", f"{max_batch:,}")
    max_positions = getattr(config.get_text_config(), "max_position_embeddings", None)
    if isinstance(max_positions, int) and max_context > max_positions:
        st.caption(f"The model was trained for {max_positions:,} tokens: memory is not the limit here.")
