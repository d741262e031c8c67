"""Memory sizing: will this model fit on this GPU, at this context, in this format? From a config alone.

Read widgets (ui/pages/memory.py) -> estimate each format (engine.sizing) -> draw: headline numbers, the
stacked breakdown and its table, then four tabs (context sweep, fits on, serving what-if, measured).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.sizing.catalog import catalog_model
from engine.sizing.checkpoints import CheckpointRecipe
from engine.sizing.estimate import MemoryBreakdown
from engine.sizing.gpus import largest_fitting
from ui import page
from ui.errors import show_error
from ui.pages import memory as memory_ui
from ui.pages import memory_charts, memory_offload, memory_recipes
from ui.pages.memory import CONTEXTS, GIB, SizingInputs


def estimates(config, inputs: SizingInputs) -> list[MemoryBreakdown] | None:
    """One breakdown per format; None (after saying why) when the config cannot be sized."""
    try:
        with st.spinner("Counting parameters on the meta device…"):
            return [inputs.estimate(config, preset) for preset in inputs.presets]
    except ValueError as exc:
        show_error(exc, prefix="This configuration cannot be sized: ")
        return None


def headline(breakdowns: list[MemoryBreakdown], inputs: SizingInputs) -> None:
    first = breakdowns[0]
    counts = first.parameters
    cols = st.columns(6 if first.state else 5)
    cols[0].metric("Parameters", f"{counts.total / 1e9:,.3f} B")
    cols[1].metric(
        "Active per token",
        f"{counts.active / 1e9:,.3f} B",
        help="Conventions differ: gpt-oss's model card counts active parameters without the input embedding "
        "(a token reads one row of it); Mixtral's and DeepSeek's figures include it. MoE: only the routed "
        "experts a token visits are read in decode.",
    )
    cols[2].metric("KV per token", f"{first.kv_bytes_per_token / 1024:,.1f} KiB", help=first.kv_label)
    cols[3].metric(
        "KV cache",
        f"{first.kv_cache / GIB:,.2f} GiB",
        help=f"{inputs.context:,} tokens × batch {inputs.batch}, as {first.engine} allocates it",
    )
    cols[4].metric("Activations peak", f"{first.activations.peak / GIB:,.2f} GiB")
    if first.state:
        cols[5].metric(
            "Recurrent state",
            f"{first.state / 1024**2:,.1f} MiB",
            help="State-space / linear-attention layers keep a fixed state per sequence (× batch), whatever "
            "the context.",
        )
    if counts.active_without_input_embedding != counts.active:
        st.caption(
            f"Active per token: {counts.active / 1e9:,.3f} B with the input embedding, "
            f"{counts.active_without_input_embedding / 1e9:,.3f} B without the input embedding (a token reads "
            "one row of it; published figures differ on which they quote)."
        )
    for note in first.notes:
        st.caption(f"ℹ️ {note}")


def breakdown_chart_and_table(config, breakdowns: list[MemoryBreakdown], inputs: SizingInputs) -> None:
    device = inputs.device
    st.plotly_chart(
        memory_charts.stacked_breakdown(breakdowns, device.usable_bytes, device.name),
        width="stretch",
        key="memory_stacked",
    )
    picked = st.dataframe(
        pd.DataFrame(memory_ui.summary_rows(config, breakdowns, inputs.presets, device)),
        hide_index=True,
        width="stretch",
        column_config=memory_ui.summary_columns(device),
        **memory_charts.SUMMARY_SELECTION,
    )
    memory_charts.speed_on_click(picked, breakdowns, inputs.presets)
    st.caption(
        f"Sizes in GiB; 1 GPU?: whether one {device.name} holds it; runs: whether its tensor cores take the "
        "format natively, only as weight-only kernels, or not at all (emulated). Overhead is a typical CUDA context plus "
        "allocator slack (0.6 GiB), not a measurement. Decode tok/s is the bandwidth roofline (bytes read per "
        "token ÷ datasheet bandwidth, on the fewest GPUs that fit); real engines reach 60–90% of it — the Speed "
        "page measures."
    )


def sweep_tab(config, inputs: SizingInputs) -> None:
    max_positions = getattr(config.get_text_config(), "max_position_embeddings", None)
    figure = memory_charts.context_sweep(
        CONTEXTS, memory_ui.context_sweep(config, inputs), memory_ui.sweep_capacities(inputs), max_positions
    )
    st.plotly_chart(figure, width="stretch", key="memory_sweep")


def fit_tab(config, breakdowns: list[MemoryBreakdown], inputs: SizingInputs) -> None:
    st.dataframe(
        pd.DataFrame(memory_ui.fit_rows(config, breakdowns, inputs)), hide_index=True, width="stretch"
    )
    st.caption(
        "Fewest GPUs for tensor parallelism (a power of two dividing the attention heads). Each GPU pays its "
        "own overhead; with more GPUs than KV heads, KV heads are replicated, not split."
    )
    first, device = inputs.presets[0], inputs.device
    max_context = largest_fitting(lambda n: inputs.estimate(config, first, context=n), config, device)
    max_batch = largest_fitting(lambda n: inputs.estimate(config, first, batch=n), config, device)
    st.markdown(
        f"On one **{device.name}** with **{first.label}** weights: the largest context at batch {inputs.batch} "
        f"is **{max_context:,}** tokens; the largest batch at {inputs.context:,} tokens is **{max_batch:,}**."
    )


def serving_tab(config, breakdowns: list[MemoryBreakdown], inputs: SizingInputs) -> None:
    utilization = st.slider("gpu_memory_utilization", 0.5, 0.98, 0.9, 0.01, key="memory_util")
    rows = memory_ui.serving_rows(config, breakdowns, inputs, utilization)
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.caption(
        "vLLM reserves this share of the GPU up front and fills what weights, activations and overhead leave "
        "with KV-cache blocks of 16 tokens (nvidia-smi shows it full even for a small model). The last two "
        "columns are the lines vLLM prints at start: its hybrid allocator groups sliding, full and state "
        "layers, so a model with windows or state serves more requests than its token count suggests."
    )


def layout_tab(config, inputs: SizingInputs, model_name: str | None) -> None:
    """The checkpoint layout picked in the form, priced part by part (against the published checkpoint
    for a catalog model that has one)."""
    recipe = next((p for p in inputs.presets if isinstance(p, CheckpointRecipe)), None)
    if recipe is None:
        st.info(
            "Pick a checkpoint layout in the form above (gpt-oss's MXFP4 experts, DeepSeek's FP8 blocks, "
            "NVFP4, llama.cpp's Q4_K_M, or a format per module kind) to price the model part by part.",
            icon=":material/tune:",
        )
        return
    slug = None
    if model_name:
        try:
            slug = catalog_model(model_name).slug
        except KeyError:
            slug = None
    memory_recipes.recipe_table(config, recipe, slug)


def main() -> None:
    page.start(
        "Memory sizing",
        "Will it fit? Weights under any format (scales included), the KV cache with GQA, sliding windows and "
        "MLA, activations and overhead, for any catalog or uploaded config, GPU by GPU. No weights are read.",
        scheme_use="the bar that “Add the sidebar's scheme” adds (linear layers only).",
    )
    config, model_name = memory_ui.config_picker()
    if config is None:
        st.stop()
    inputs = memory_ui.sizing_inputs(config)
    if inputs is None:
        st.stop()
    breakdowns = estimates(config, inputs)
    if breakdowns is None:
        st.stop()
    headline(breakdowns, inputs)
    breakdown_chart_and_table(config, breakdowns, inputs)
    sweep, layout, fit, best, offload, serving, measured = st.tabs(
        [
            "Context sweep",
            "Checkpoint layout",
            "Fits on",
            "Best fit",
            "Offload to CPU",
            "Serving engine what-if",
            "Estimate vs measured",
        ],
        key="memory_tab",  # tracked: a widget inside a tab reruns the page with that tab still open
        on_change="rerun",
    )
    with sweep:
        sweep_tab(config, inputs)
    with layout:
        layout_tab(config, inputs, model_name)
    with fit:
        fit_tab(config, breakdowns, inputs)
    with best:
        memory_offload.best_fit_tab(config, inputs)
    with offload:
        memory_offload.offload_tab(config, breakdowns[0], inputs.device)
    with serving:
        serving_tab(config, breakdowns, inputs)
    with measured:
        memory_ui.measured_panel()


main()
