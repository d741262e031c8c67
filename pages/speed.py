"""Speed: measured kernel and end-to-end decode speed on this device, with the memory roofline beside it."""

from __future__ import annotations

import streamlit as st

from engine import speed
from engine.sizing.catalog import catalog_models
from ui import cache, clickthrough, page
from ui.pages import speed as speed_view
from ui.pages import speed_charts as charts
from ui.pages import speed_sweep
from ui.widgets import NumberBoxes


def kernel_form(model, device: str) -> speed_view.KernelRequest | None:
    """The microbenchmark's widgets; a request when its button is pressed."""
    on_gpu = device.startswith("cuda")
    source = st.radio(
        "Shapes",
        ["Loaded model", "Llama-2-7B shapes"],
        horizontal=True,
        key="speed_shape_source",
        help=speed_view.SHAPES_HELP,
    )
    choices = speed_view.shape_choices(model, source)
    cols = st.columns([3, 2, 3, 1])
    picked = cols[0].multiselect(
        "Weight shapes (out × in)",
        list(choices),
        default=speed_view.default_shapes(choices),
        help=speed_view.PICKED_SHAPES_HELP,
        key="speed_shapes" if source == "Loaded model" else "speed_shapes_llama",  # one selection per source
    )
    batches = cols[1].multiselect(
        "Batch sizes", list(speed.BATCH_SIZES), default=list(speed.BATCH_SIZES), key="speed_batches"
    )
    options = speed.available_formats(device)
    formats = cols[2].multiselect("Formats", options, default=options, key="speed_formats")
    number = NumberBoxes()
    repeats = number(cols[3], "Repeats", 3, 200, 50 if on_gpu else 10, key="speed_repeats")
    if source != "Loaded model" and not on_gpu:
        st.warning(
            "On a CPU, batches 64 and 256 of these shapes make the run long: start with batch 1 and 4.",
            icon=":material/hourglass:",
        )
    st.caption(
        f"Median of the repeats after a warm-up; the {speed.baseline_format(device)} baseline always runs so "
        "speed-ups have a reference. Calls rotate over copies of the weights so each reads them from memory, "
        "as a whole model does. Each format gets a kernel time and a call time."
    )
    pressed = st.button(
        "Run microbenchmarks", type="primary", key="speed_run_kernels", disabled=not (picked and batches)
    )
    if number.show() or not pressed:  # out of range: said under the button, and nothing runs
        return None
    shapes = [choices[p] for p in picked]
    return speed_view.KernelRequest(shapes, batches, speed_view.formats_of(formats), int(repeats))


def kernel_results(device: str) -> None:
    run = st.session_state.get(speed_view.KERNELS)
    if not (run and run.results):
        return
    st.caption(run.machine.caption)
    st.caption(speed_view.TIMING_NOTE)
    labels = list(dict.fromkeys(r.shape.label for r in run.results))
    shown = st.selectbox("Show shape", labels, key="speed_show_shape") if len(labels) > 1 else labels[0]
    left, right = st.columns(2)
    baseline = speed.baseline_format(device)
    left.plotly_chart(charts.speedup_chart(run.results, shown, baseline), key="speed_chart_speedup")
    right.plotly_chart(charts.bandwidth_chart(run.results, shown), key="speed_chart_bandwidth")
    with st.expander("All kernel timings: kernel µs, call µs and overhead µs per format"):
        st.dataframe(charts.kernel_table(run.results), hide_index=True)
    speed_view.kernel_choice_table(device)


def synthetic_form(on_gpu: bool):
    """A catalog model to build with random weights instead of the loaded one, or None."""
    if not st.checkbox(
        "Use a catalog config with random weights instead of the loaded model",
        key="speed_synthetic",
        help=speed_view.SYNTHETIC_HELP,
    ):
        return None
    models = {m.name: m for m in catalog_models()}
    names = list(models)
    default_name = "Llama-2-7B" if on_gpu else "Qwen2.5-0.5B"  # a small default where decode is slow
    name = st.selectbox(
        "Config",
        names,
        index=next((i for i, n in enumerate(names) if n == default_name), 0),
        key="speed_synthetic_config",
    )
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
    return models[name]


def decode_form(
    device: str, lab_runs: dict, lab_refused: dict, lab_missing: dict
) -> speed_view.DecodeRequest | None:
    """The decode benchmark's widgets; a request when its button is pressed."""
    on_gpu = device.startswith("cuda")
    options = speed.available_variants(device) + list(lab_runs)
    cols = st.columns([3, 3, 1, 1])
    variants = cols[0].multiselect(
        "Variants",
        options,
        default=speed_view.default_variants(on_gpu, options),
        key="speed_variants",
        help=speed_view.VARIANTS_HELP,
    )
    if lab_refused:
        st.caption(
            "Methods-lab models no kernel runs: "
            + "; ".join(f"**{label}** ({reason})" for label, reason in lab_refused.items())
        )
    for label, why in lab_missing.items():
        st.caption(f"**{label}** (Methods lab): {why}")
    default_loops = [speed.DYNAMIC_LOOP, speed.STATIC_LOOP] + ([speed.COMPILED_LOOP] if on_gpu else [])
    loops = cols[1].multiselect(
        "Decode loops", list(speed.LOOPS), default=default_loops, key="speed_loops", help=speed_view.LOOP_HELP
    )
    number = NumberBoxes()
    prompt_tokens = number(
        cols[2], "Prompt tokens", 1, 2048, 128 if on_gpu else 32, key="speed_prompt_tokens"
    )
    new_tokens = number(cols[3], "New tokens", 2, 1024, 256 if on_gpu else 32, key="speed_new_tokens")
    if speed.COMPILED_LOOP in loops:
        st.caption(speed_view.DECODE_GPU_NOTE if on_gpu else speed_view.DECODE_CPU_NOTE)
    synthetic = synthetic_form(on_gpu)
    if synthetic is not None and set(variants) & set(lab_runs):
        st.caption("Methods-lab models are the loaded model's: they are left out of a synthetic run.")
        variants = [v for v in variants if v not in lab_runs]
    pressed = st.button(
        "Run decode benchmark", type="primary", key="speed_run_decode", disabled=not (variants and loops)
    )
    if number.show() or not pressed:  # out of range: said under the button, and nothing runs
        return None
    recipes = speed_view.variants_of(variants, lab_runs)
    return speed_view.DecodeRequest(recipes, loops, int(prompt_tokens), int(new_tokens), synthetic)


def decode_results(on_gpu: bool) -> None:
    run = st.session_state.get(speed_view.DECODE)
    if not (run and run.results):
        return
    kind = "synthetic random weights" if run.synthetic else "the loaded model"
    st.caption(f"{run.model_label} ({kind}). {run.machine.caption}")
    metrics = st.columns(3)
    metrics[0].metric("Measured copy bandwidth", f"{run.results[0].bandwidth / 1e9:,.1f} GB/s")
    best = max(run.results, key=lambda r: r.decode_tokens_per_s)
    metrics[1].metric("Fastest decode", f"{best.label}: {best.decode_tokens_per_s:,.1f} tok/s")
    metrics[2].metric("Of its roofline", f"{100 * best.roofline_fraction:.0f}%")
    left, right = st.columns([3, 2])
    left.plotly_chart(charts.decode_chart(run.results), key="speed_chart_decode")
    right.plotly_chart(charts.prefill_chart(run.results), key="speed_chart_prefill")
    st.dataframe(charts.decode_table(run.results), hide_index=True)
    st.caption(speed_view.ROOFLINE_NOTE)
    if any(r.loop == speed.COMPILED_LOOP for r in run.results) and not on_gpu:
        st.caption(speed_view.CPU_COMPILE_NOTE)


def main() -> None:
    page.start(
        "Speed",
        "Is the quantized model actually faster? Time one linear layer per format at growing batch sizes "
        "(decode is a batch of 1, prefill a batch of the whole prompt), then whole-model prefill and decode.",
    )
    clickthrough.origin_note(clickthrough.SPEED_PAGE)  # a Memory sizing row's format, pre-selected
    loaded = cache.current_model_or_stop()
    device = loaded.device
    speed_view.device_note(device)
    fallback_notes = st.container()
    st.subheader("Linear-layer microbenchmarks")
    kernels = kernel_form(loaded.model, device)
    if kernels is not None:
        speed_view.run_kernels(kernels, device)
    kernel_results(device)

    st.subheader("End-to-end prefill and decode")
    lab_runs, lab_refused, lab_missing = speed_view.methods_lab_variants()
    decode = decode_form(device, lab_runs, lab_refused, lab_missing)
    if decode is not None:
        speed_view.run_decode_request(decode, loaded, lab_runs)
    decode_results(device.startswith("cuda"))
    speed_sweep.sweep_section(loaded, lab_runs)
    speed_view.kernel_fallback_notes(fallback_notes)


main()
