"""Speed: measured kernel and end-to-end decode speed on this device, with the memory roofline beside it."""

from __future__ import annotations

import streamlit as st

from engine import speed
from ui import cache, page
from ui.errors import show_error
from ui.pages import speed as speed_view

page.start(
    "Speed",
    "Is the quantized model actually faster? Time one linear layer per format at growing batch sizes "
    "(decode is a batch of 1, prefill a batch of the whole prompt), then whole-model prefill and decode.",
)
loaded = cache.current_model_or_stop()
device = loaded.device
on_gpu = device.startswith("cuda")
speed_view.device_note(device)

# -- kernels ------------------------------------------------------------------------------------------------
st.subheader("Linear-layer microbenchmarks")
source = st.radio(
    "Shapes",
    ["Loaded model", "Llama-2-7B shapes"],
    horizontal=True,
    key="speed_shape_source",
    help="Llama-2-7B's weights are 4096×4096, 11008×4096 and 4096×11008 (out × in): about 50 times the "
    "default model's (SmolLM2-135M), so on a CPU the larger batches make a long run.",
)
choices = speed_view.shape_choices(loaded.model, source)
cols = st.columns([3, 2, 3, 1])
picked = cols[0].multiselect(
    "Weight shapes (out × in)",
    list(choices),
    default=speed_view.default_shapes(choices),
    help="The loaded model's linear shapes, and its output head (lm_head), left out by default: no method "
    "quantizes it, but in a small model it is the largest matmul of a decode step.",
    key="speed_shapes" if source == "Loaded model" else "speed_shapes_llama",  # one selection per source
)
batches = cols[1].multiselect(
    "Batch sizes", list(speed.BATCH_SIZES), default=list(speed.BATCH_SIZES), key="speed_batches"
)
formats = cols[2].multiselect(
    "Formats", speed.available_formats(device), default=speed.available_formats(device), key="speed_formats"
)
repeats = cols[3].number_input("Repeats", 3, 200, 50 if on_gpu else 10, key="speed_repeats")
baseline = speed.baseline_format(device)
if source != "Loaded model" and not on_gpu:
    st.warning(
        "On a CPU, batches 64 and 256 of these shapes make the run long: start with batch 1 and 4.",
        icon=":material/hourglass:",
    )
st.caption(
    f"Median of the repeats after a warm-up; the {baseline} baseline always runs so speed-ups have a "
    "reference. Calls rotate over copies of the weights so each reads them from memory, as a whole model "
    "does."
)
if st.button(
    "Run microbenchmarks", type="primary", key="speed_run_kernels", disabled=not (picked and batches)
):
    speed_view.run_kernels([choices[p] for p in picked], batches, formats, device, int(repeats))

kernel_run = st.session_state.get(speed_view.KERNELS)
if kernel_run and kernel_run.results:
    st.caption(kernel_run.machine.caption)
    labels = list(dict.fromkeys(r.shape.label for r in kernel_run.results))
    shown = st.selectbox("Show shape", labels, key="speed_show_shape") if len(labels) > 1 else labels[0]
    left, right = st.columns(2)
    left.plotly_chart(
        speed_view.speedup_chart(kernel_run.results, shown, baseline), key="speed_chart_speedup"
    )
    right.plotly_chart(speed_view.bandwidth_chart(kernel_run.results, shown), key="speed_chart_bandwidth")
    with st.expander("All kernel timings"):
        st.dataframe(speed_view.kernel_table(kernel_run.results), hide_index=True)

# -- end to end ---------------------------------------------------------------------------------------------
st.subheader("End-to-end prefill and decode")
lab_runs, lab_refused = speed_view.methods_lab_variants()
variant_options = speed.available_variants(device) + list(lab_runs)
default_variants = ["bf16", "W8A16", "W4A16"] if on_gpu else ["fp32", "W8A16", "W4A16"]
if on_gpu and "NF4 (bnb)" in variant_options:  # the comparison: ours against bitsandbytes
    default_variants.append("NF4 (bnb)")
cols = st.columns([3, 3, 1, 1])
variants = cols[0].multiselect(
    "Variants",
    variant_options,
    default=default_variants,
    key="speed_variants",
    help="fp/bf16 and the packed W8A16 / W4A16 / W8A8 round the loaded model to nearest; '+ int8 head' "
    "packs the output head too (every method keeps it 16-bit, but in a small model it is most of what a "
    "token reads); (bnb) are bitsandbytes' layers; (Methods lab) are the models built on the Methods "
    "page (GPTQ, AWQ, ...), packed from the integer codes each method chose.",
)
if lab_refused:
    st.caption(
        "Methods-lab models no kernel runs: "
        + "; ".join(f"**{label}** ({reason})" for label, reason in lab_refused.items())
    )
default_loops = [speed.DYNAMIC_LOOP, speed.STATIC_LOOP] + ([speed.COMPILED_LOOP] if on_gpu else [])
loops = cols[1].multiselect(
    "Decode loops",
    list(speed.LOOPS),
    default=default_loops,
    key="speed_loops",
    help=speed_view.LOOP_HELP,
)
prompt_tokens = cols[2].number_input(
    "Prompt tokens", 1, 2048, 128 if on_gpu else 32, key="speed_prompt_tokens"
)
new_tokens = cols[3].number_input("New tokens", 2, 1024, 256 if on_gpu else 32, key="speed_new_tokens")
if speed.COMPILED_LOOP in loops:
    st.caption(speed_view.DECODE_GPU_NOTE if on_gpu else speed_view.DECODE_CPU_NOTE)
synthetic_config = None
if st.checkbox(
    "Use a catalog config with random weights instead of the loaded model",
    key="speed_synthetic",
    help="Any catalog architecture, built in bf16 with random weights on this device: how fast a model "
    "of that size would run here, without downloading it. Refused, with the numbers, when it does not "
    "fit in free memory.",
):
    from engine.sizing.catalog import catalog_models

    models = {m.name: m for m in catalog_models()}
    names = list(models)
    default_name = "Llama-2-7B" if on_gpu else "Qwen2.5-0.5B"  # a CPU decodes a 7B at a token or so a second
    name = st.selectbox(
        "Config",
        names,
        index=next((i for i, n in enumerate(names) if n == default_name), 0),
        key="speed_synthetic_config",
    )
    synthetic_config = models[name]
    st.warning(
        f"The weights are **synthetic** (random, std 0.02): {name}'s shapes, not its model. "
        "Speed only; the generated tokens are meaningless.",
        icon=":material/casino:",
    )
    if not on_gpu:
        st.caption(
            "On this CPU a 1B model decodes a few tokens a second and a 7B well under one: start with a "
            "small config and few new tokens."
        )
if synthetic_config is not None and set(variants) & set(lab_runs):
    st.caption("Methods-lab models are the loaded model's: they are left out of a synthetic run.")
    variants = [v for v in variants if v not in lab_runs]
if st.button(
    "Run decode benchmark", type="primary", key="speed_run_decode", disabled=not (variants and loops)
):
    if synthetic_config is not None:
        try:
            with st.spinner(f"Building {synthetic_config.name} with random weights on {device}…"):
                model = speed.synthetic_model(
                    synthetic_config.config(), dtype=speed.DTYPES["bf16"], device=device
                )
        except MemoryError as exc:
            show_error(exc)
            st.stop()
        tokenizer = speed.SyntheticTokenizer(model.config.vocab_size)
        speed_view.run_decode(
            model,
            tokenizer,
            variants,
            int(prompt_tokens),
            int(new_tokens),
            synthetic_config.name,
            True,
            loops,
        )
        del model
    else:
        speed_view.run_decode(
            loaded.model,
            loaded.tokenizer,
            variants,
            int(prompt_tokens),
            int(new_tokens),
            loaded.source.label,
            False,
            loops,
            builders=speed_view.lab_builders(lab_runs, variants),
        )

decode_run = st.session_state.get(speed_view.DECODE)
if decode_run and decode_run.results:
    kind = "synthetic random weights" if decode_run.synthetic else "the loaded model"
    st.caption(f"{decode_run.model_label} ({kind}). {decode_run.machine.caption}")
    bandwidth = decode_run.results[0].bandwidth
    metrics = st.columns(3)
    metrics[0].metric("Measured copy bandwidth", f"{bandwidth / 1e9:,.1f} GB/s")
    best = max(decode_run.results, key=lambda r: r.decode_tokens_per_s)
    metrics[1].metric("Fastest decode", f"{best.label}: {best.decode_tokens_per_s:,.1f} tok/s")
    metrics[2].metric("Of its roofline", f"{100 * best.roofline_fraction:.0f}%")
    left, right = st.columns([3, 2])
    left.plotly_chart(speed_view.decode_chart(decode_run.results), key="speed_chart_decode")
    right.plotly_chart(speed_view.prefill_chart(decode_run.results), key="speed_chart_prefill")
    st.dataframe(speed_view.decode_table(decode_run.results), hide_index=True)
    st.caption(
        "Roofline: every weight a decode step reads (the output head included, the embedding table only "
        "when tied to it) plus the KV cache at the mean context, divided by the measured copy bandwidth. "
        "Packed variants compute in bf16 inside each linear on CPU; the rest of the model keeps its dtype. "
        "The (bnb) variants are bitsandbytes' own layers as transformers builds them, with bitsandbytes' "
        "default CPU path (NF4 weights repacked for its AVX512-BF16 kernel where the CPU has it; LLM.int8 "
        "casts activations to fp16 and splits outlier columns at every call). "
        "Every loop is greedy, so a variant's loops should decode the same tokens (**same tokens**); "
        "**compile s** is the compiled loop's one-time warm-up, left out of its tokens/s."
    )
    if any(r.loop == speed.COMPILED_LOOP for r in decode_run.results) and not on_gpu:
        st.caption(
            "No CUDA graphs on a CPU: a compiled step here saves Python and small-op overhead only. "
            "The CUDA-graph numbers need a GPU (`cuda` in the sidebar)."
        )
