"""Memory sizing: will this model fit on this GPU, at this context, in this format? From a config alone."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.sizing.estimate import KV_FORMATS, estimate
from engine.sizing.gpus import (
    all_devices,
    decode_estimate,
    fits,
    largest_fitting,
    min_tensor_parallel,
    serving_what_if,
)
from engine.sizing.presets import PRESETS, WeightPreset
from ui import page, state
from ui.errors import show_error
from ui.pages import memory as memory_cache
from ui.pages import memory_charts

GIB = 1024**3
DEFAULT_FORMATS = ["bf16", "int8", "int4-g128", "nf4"]
CONTEXTS = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144]

page.start(
    "Memory sizing",
    "Will it fit? Weights under any format (scales included), the KV cache with GQA, sliding windows and "
    "MLA, activations and overhead, for any catalog or uploaded config, GPU by GPU. No weights are read.",
)

config, model_name = memory_cache.config_picker()
if config is None:
    st.stop()

left, middle, right = st.columns([3, 2, 2])
preset_names = left.multiselect(
    "Weight formats",
    list(PRESETS),
    default=DEFAULT_FORMATS,
    format_func=lambda name: PRESETS[name].label,
    key="memory_formats",
    help="Each becomes a bar. Embeddings and head stay 16-bit except in llama.cpp (GGUF) formats.",
)
add_sidebar = left.checkbox("Add the sidebar's scheme", key="memory_add_sidebar")
kv_name = middle.selectbox(
    "KV cache",
    list(KV_FORMATS),
    index=list(KV_FORMATS).index("fp16"),
    key="memory_kv",
    help="int formats store an fp16 scale and zero per head (int8) or per 64 values (int4 and below).",
)
attention = middle.radio(
    "Attention kernel",
    ["sdpa", "eager"],
    horizontal=True,
    key="memory_attention",
    help="eager materialises the batch × heads × context² score matrix; SDPA / flash attention does not.",
)
prefill_chunk = middle.selectbox(
    "Prefill",
    [None, 8192, 2048, 512],
    format_func=lambda n: "whole prompt at once (transformers)" if n is None else f"chunks of {n:,} tokens",
    key="memory_prefill",
    help="Serving engines prefill long prompts in chunks (vLLM: 8,192 batched tokens), which caps activations.",
)
context = right.select_slider(
    "Context (tokens per sequence)", CONTEXTS, value=8192, key="memory_context", format_func="{:,}".format
)
batch = right.number_input("Batch (sequences at once)", 1, 4096, 1, key="memory_batch")
devices = all_devices()
device = st.selectbox(
    "GPU",
    devices,
    index=1,
    format_func=lambda d: f"{d.name} — {d.usable_bytes / GIB:,.0f} GiB usable, {d.bandwidth / 1e9:,.0f} GB/s",
    key="memory_gpu",
)

presets: list[WeightPreset] = [PRESETS[name] for name in preset_names]
sidebar_scheme = state.scheme()
if add_sidebar and sidebar_scheme is not None:
    presets.append(WeightPreset.from_scheme(sidebar_scheme))
if not presets:
    st.info("Pick at least one weight format.", icon=":material/tune:")
    st.stop()

try:
    with st.spinner("Counting parameters on the meta device…"):
        breakdowns = [
            estimate(
                config, p, kv_name, context, int(batch), attention=attention, prefill_chunk=prefill_chunk
            )
            for p in presets
        ]
except ValueError as exc:
    show_error(exc, prefix="This configuration cannot be sized: ")
    st.stop()

first = breakdowns[0]
counts = first.parameters
cols = st.columns(5)
cols[0].metric("Parameters", f"{counts.total / 1e9:,.3f} B")
cols[1].metric(
    "Active per token",
    f"{counts.active / 1e9:,.3f} B",
    help="MoE: only the routed experts a token visits are read in decode." if counts.experts else None,
)
cols[2].metric("KV per token", f"{first.kv_bytes_per_token / 1024:,.1f} KiB", help=first.kv_label)
cols[3].metric("KV cache", f"{first.kv_cache / GIB:,.2f} GiB", help=f"{context:,} tokens × batch {batch}")
cols[4].metric("Activations peak", f"{first.activations.peak / GIB:,.2f} GiB")
for note in first.notes:
    st.caption(f"ℹ️ {note}")

st.plotly_chart(
    memory_charts.stacked_breakdown(breakdowns, device.usable_bytes, device.name),
    width="stretch",
    key="memory_stacked",
)
table = pd.DataFrame(
    [
        {
            "weights": b.weights_label,
            "bits/weight": round(b.weights.bits_per_weight, 3),
            "weights GiB": b.weights.total / GIB,
            "KV GiB": b.kv_cache / GIB,
            "activations GiB": b.activations.peak / GIB,
            "overhead GiB": b.overhead / GIB,
            "total GiB": b.total / GIB,
            f"fits one {device.name}": "yes" if fits(b, config, device) else "no",
            "decode tok/s (roofline)": decode_estimate(
                b, device, min_tensor_parallel(b, config, device) or 1
            ).tokens_per_s,
        }
        for b in breakdowns
    ]
)
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    column_config={
        c: st.column_config.NumberColumn(format="%.2f") for c in table.columns if c.endswith("GiB")
    }
    | {"decode tok/s (roofline)": st.column_config.NumberColumn(format="%.0f")},
)
st.caption(
    "Overhead is a typical CUDA context plus allocator slack (0.6 GiB), not a measurement. Decode tok/s is "
    "the bandwidth roofline (bytes read per token ÷ datasheet bandwidth, on the fewest GPUs that fit); real "
    "engines reach 60–90% of it — the Speed page measures."
)

tab_sweep, tab_fit, tab_serving, tab_measured = st.tabs(
    ["Context sweep", "Fits on", "Serving engine what-if", "Estimate vs measured"]
)
with tab_sweep:
    sweep = memory_cache.context_sweep(
        config, presets, kv_name, int(batch), attention, prefill_chunk, CONTEXTS
    )
    picked = [d for d in devices if d.vendor == "NVIDIA"][:4] if device.vendor != "NVIDIA" else [device]
    capacities = {
        d.name: d.usable_bytes
        for d in {*picked, *[d for d in devices if "4090" in d.name or "H200" in d.name]}
    }
    st.plotly_chart(
        memory_charts.context_sweep(
            CONTEXTS, sweep, capacities, getattr(config.get_text_config(), "max_position_embeddings", None)
        ),
        width="stretch",
        key="memory_sweep",
    )
with tab_fit:
    rows = []
    for candidate in devices:
        row = {"device": candidate.name, "usable GiB": candidate.usable_bytes / GIB}
        for b, preset in zip(breakdowns, presets, strict=True):
            needed = min_tensor_parallel(b, config, candidate)
            row[preset.label] = "—" if needed is None else ("1 GPU" if needed == 1 else f"{needed} GPUs (TP)")
        rows.append(row)
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.caption(
        "Fewest GPUs for tensor parallelism (a power of two dividing the attention heads). Each GPU pays its "
        "own overhead; with more GPUs than KV heads, KV heads are replicated, not split."
    )
    max_context = largest_fitting(
        lambda n: estimate(
            config, presets[0], kv_name, n, int(batch), attention=attention, prefill_chunk=prefill_chunk
        ),
        config,
        device,
    )
    max_batch = largest_fitting(
        lambda n: estimate(
            config, presets[0], kv_name, context, n, attention=attention, prefill_chunk=prefill_chunk
        ),
        config,
        device,
    )
    st.markdown(
        f"On one **{device.name}** with **{presets[0].label}** weights: the largest context at batch {batch} "
        f"is **{max_context:,}** tokens; the largest batch at {context:,} tokens is **{max_batch:,}**."
    )
with tab_serving:
    utilization = st.slider("gpu_memory_utilization", 0.5, 0.98, 0.9, 0.01, key="memory_util")
    serving = [serving_what_if(b, device, utilization) for b in breakdowns]
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "weights": b.weights_label,
                    "reserved GiB": s.reserved / GIB,
                    "KV capacity GiB": s.kv_capacity / GIB,
                    "KV tokens": s.kv_tokens,
                    f"sequences of {context:,}": s.concurrent_sequences,
                }
                for b, s in zip(breakdowns, serving, strict=True)
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    st.caption(
        "A vLLM-style engine reserves this share of the GPU up front and fills what weights, activations and "
        "overhead leave with KV-cache blocks: nvidia-smi shows it full even for a small model."
    )
with tab_measured:
    memory_cache.measured_panel()
