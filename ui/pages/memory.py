"""The Memory page's widgets and tables: where its config comes from, the sizing form, the rows its tables
show, and the loaded model held against the estimate. Plain values in and out; pages/memory.py draws."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from engine.models.sources import MAX_CONFIG_BYTES
from engine.quant.gguf import GGUFType
from engine.quant.schemes import QuantScheme
from engine.sizing.catalog import catalog_models
from engine.sizing.checkpoints import CheckpointRecipe
from engine.sizing.configs import config_from_hub, config_from_json
from engine.sizing.engines import ENGINES, vllm_report
from engine.sizing.estimate import KV_FORMATS, MemoryBreakdown, estimate, kv_bytes_per_token
from engine.sizing.gpus import (
    GPU,
    all_devices,
    decode_estimate,
    fits,
    min_tensor_parallel,
    native_support,
    serving_what_if,
)
from engine.sizing.layers import layer_plan
from engine.sizing.measure import measure_generation_peak, peak_vs_estimate, weights_vs_real_bytes
from engine.sizing.presets import PRESETS, WeightPreset
from ui import cache, state
from ui.errors import show_error
from ui.pages import memory_charts, memory_recipes
from ui.widgets import NumberBoxes

SOURCES = ["Catalog", "Loaded model", "Upload config.json", "Hub id"]
DEFAULT_CATALOG_MODEL = "Llama-3.1-8B"
DEFAULT_FORMATS = ["bf16", "int8", "int4-g128", "nf4"]
CONTEXTS = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144]
GIB = 1024**3


@dataclass(frozen=True)
class SizingInputs:
    """What the form asks: the formats to compare and the workload to size them for."""

    presets: list[WeightPreset | CheckpointRecipe]  # one bar each; the sidebar's scheme, then a layout
    kv_name: str  # a key of engine.sizing.estimate.KV_FORMATS: the keys' format (and the values')
    attention: str  # "sdpa" or "eager" (eager materialises the score matrix)
    prefill_chunk: int | None  # None: the whole prompt at once
    context: int  # tokens per sequence
    batch: int  # sequences at once
    device: GPU  # the GPU the page sizes for
    devices: list[GPU]  # every GPU the catalog knows
    kv_values_name: str | None = None  # the values' format when it differs; None: same as the keys
    engine_name: str = "transformers"  # a key of engine.sizing.engines.ENGINES: how the cache is allocated

    def estimate(self, config, preset: WeightPreset, context: int | None = None, batch: int | None = None):
        """The estimate for one format at this form's workload (or another context / batch)."""
        return estimate(
            config,
            preset,
            self.kv_name,
            self.context if context is None else context,
            self.batch if batch is None else batch,
            attention=self.attention,
            prefill_chunk=self.prefill_chunk,
            kv_values=self.kv_values_name,
            engine=self.engine_name,
        )


def config_picker():
    """(config, display name), or (None, None) after telling the user what is wrong."""
    kind = st.segmented_control(
        "Config from", SOURCES, default="Catalog", key="memory_source", width="stretch"
    )
    try:
        if kind == "Loaded model":
            loaded = cache.current_model_or_stop()
            return loaded.model.config, loaded.source.label
        if kind == "Upload config.json":
            upload = st.file_uploader(  # shows "Limit 2MB per file": the size config_from_json accepts
                "config.json", type=["json"], key="memory_upload", max_upload_size=MAX_CONFIG_BYTES // 2**20
            )
            if upload is None:
                st.info(
                    "Upload a model's config.json: only the architecture is read.", icon=":material/upload:"
                )
                return None, None
            return config_from_json(upload.getvalue(), upload.name), upload.name
        if kind == "Hub id":
            repo = st.text_input("Hub id", placeholder="meta-llama/Llama-3.1-8B", key="memory_hub")
            if not repo.strip():
                st.info(
                    "Type a Hub id: only its config.json is fetched, never the weights.",
                    icon=":material/cloud:",
                )
                return None, None
            with st.spinner(f"Fetching {repo}/config.json…"):
                return config_from_hub(repo.strip()), repo.strip()
        models = catalog_models()
        names = [m.name for m in models]
        index = names.index(DEFAULT_CATALOG_MODEL) if DEFAULT_CATALOG_MODEL in names else 0
        model = st.selectbox(
            f"Catalog model ({len(models)} published configs)",
            models,
            index=index,
            format_func=lambda m: f"{m.name}  ·  {m.family}",
            key="memory_catalog",
        )
        st.caption(
            f"{model.notes} Published size: {model.published_parameters / 1e9:,.2f} B ({model.hub_id})."
        )
        return model.config(), model.name
    except ValueError as exc:
        show_error(exc, prefix="Cannot use this config: ")
        return None, None


def sizing_inputs(config) -> SizingInputs | None:
    """The formats, KV cache, attention kernel, prefill, context, batch and GPU; None (after saying why) when
    no format is picked or the batch is out of range."""
    number = NumberBoxes()
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
    with left:
        recipe = memory_recipes.recipe_picker(config, state.scheme())
    keys, values = middle.columns(2)
    kv_name = keys.selectbox(
        "KV cache",
        list(KV_FORMATS),
        index=list(KV_FORMATS).index("fp16"),
        key="memory_kv",
        help="The keys' format, and the values' unless V cache says otherwise. int formats store an fp16 "
        "scale and zero per head (int8) or per 64 values (int4 and below).",
    )
    kv_values_name = values.selectbox(
        "V cache",
        [None, *KV_FORMATS],
        format_func=lambda name: "same as K" if name is None else name,
        key="memory_kv_values",
        help="The values' format, if not the keys' (e.g. keys fp8, values int4): each half of the cache is "
        "priced at its own bits.",
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
        format_func=lambda n: (
            "the engine's own (transformers: whole prompt; vLLM 8,192; llama.cpp 512)"
            if n is None
            else f"chunks of {n:,} tokens"
        ),
        key="memory_prefill",
        help="Serving engines prefill long prompts in chunks (vLLM: 8,192 batched tokens), which caps "
        "activations.",
    )
    engine_name = middle.selectbox(
        "Engine",
        list(ENGINES),
        format_func=lambda name: ENGINES[name].label,
        key="memory_engine",
        help="How the KV cache and recurrent state are allocated: transformers grows the cache token by "
        "token; vLLM pages it in blocks of 16 from a pool reserved at start; llama.cpp allocates the whole "
        "context at load. Sliding windows and state-space layers follow each engine's own rules.",
    )
    context = right.select_slider(
        "Context (tokens per sequence)", CONTEXTS, value=8192, key="memory_context", format_func="{:,}".format
    )
    batch = number(right, "Batch (sequences at once)", 1, 4096, 1, key="memory_batch", name="Batch")
    devices = all_devices()
    device = st.selectbox(
        "GPU",
        devices,
        index=1,
        format_func=lambda d: (
            f"{d.name} — {d.usable_bytes / GIB:,.0f} GiB usable, {d.bandwidth / 1e9:,.0f} GB/s"
        ),
        key="memory_gpu",
    )
    if number.show(right):  # under its box; nothing is sized until it is back in range
        return None
    presets = [PRESETS[name] for name in preset_names]
    sidebar_scheme = state.scheme()
    if add_sidebar and sidebar_scheme is not None:
        presets.append(sidebar_preset(sidebar_scheme))
    if recipe is not None:  # a format per module kind: one more bar
        presets.append(recipe)
    if not presets:
        st.info("Pick at least one weight format.", icon=":material/tune:")
        return None
    return SizingInputs(
        presets,
        kv_name,
        attention,
        prefill_chunk,
        int(context),
        int(batch),
        device,
        devices,
        kv_values_name,
        engine_name,
    )


def sidebar_preset(fmt: QuantScheme | GGUFType) -> WeightPreset:
    """The sidebar's format as a weight preset: a GGUF type as llama.cpp stores it (embeddings and head too,
    norms fp32; the catalog's preset where it has one), our scheme on the linear layers."""
    if isinstance(fmt, GGUFType):
        bits = fmt.bits_per_weight
        note = f"{fmt.description}: {bits:g} bpw on every 2-D weight."
        found = PRESETS.get(fmt.name)
        return found or WeightPreset(
            fmt.name, f"GGUF {fmt.name}", linear_bits=bits, embedding_bits=bits, norm_bits=32, note=note
        )
    return WeightPreset.from_scheme(fmt)


SIZE_COLUMNS = {  # the summary table's GiB columns: their short headers and widths in pixels
    "weights GiB": ("weights", 62),
    "KV GiB": ("KV cache", 64),
    "activations GiB": ("activations", 78),
    "overhead GiB": ("overhead", 66),
    "total GiB": ("total", 56),
}


def summary_rows(
    config, breakdowns: list[MemoryBreakdown], presets: list[WeightPreset | CheckpointRecipe], device: GPU
) -> list[dict]:
    """One row per format: bytes by component, whether one GPU holds it and runs it natively, the decode
    roofline."""
    return [
        {
            "weights": b.weights_label,
            "bits/weight": round(b.weights.bits_per_weight, 3),
            "weights GiB": b.weights.total / GIB,
            "KV GiB": b.kv_cache / GIB,
            "activations GiB": b.activations.peak / GIB,
            "overhead GiB": b.overhead / GIB,
            "total GiB": b.total / GIB,
            "fits one GPU": "yes" if fits(b, config, device) else "no",
            "runs": native_support(device, preset).split(" (")[0],  # the column's tooltip says the rest
            "decode tok/s": decode_estimate(
                b, device, min_tensor_parallel(b, config, device) or 1
            ).tokens_per_s,
        }
        for b, preset in zip(breakdowns, presets, strict=True)
    ]


def summary_columns(device: GPU) -> dict:
    """The summary table's columns: short headers (unit and meaning in each header's tooltip) and fixed
    widths, 762 px in all (and the row-selection column), so the ten columns fit a 1280-pixel window beside
    the sidebar: with headers
    sized to their text the last one, decode tok/s, sat past the right edge."""
    sizes = {
        key: st.column_config.NumberColumn(label, width=width, format="%.2f", help=f"{label}, in GiB")
        for key, (label, width) in SIZE_COLUMNS.items()
    }
    return {
        "weights": st.column_config.TextColumn("format", width=196, help="Weight format"),
        "bits/weight": st.column_config.NumberColumn(
            "bits/w", width=52, format="%.3f", help="Bits per weight, scales included"
        ),
        **sizes,
        "fits one GPU": st.column_config.TextColumn("1 GPU?", width=56, help=f"Fits on one {device.name}"),
        "runs": st.column_config.TextColumn(
            "runs",
            width=76,
            help=f"How the {device.name} runs this format — native: its tensor cores take it as is; weight-only: "
            "low-bit weights are dequantized to 16-bit inside the matmul kernel; emulated: the GPU has no such "
            "number type, so kernels convert it first (memory saved, no faster math).",
        ),
        "decode tok/s": st.column_config.NumberColumn(
            "tok/s",
            width=56,
            format="%.0f",
            help="Decode tokens per second at batch 1 if memory-bound: bytes read per token ÷ datasheet bandwidth, "
            "on the fewest GPUs that fit",
        ),
    }


def context_sweep(config, inputs: SizingInputs) -> dict[str, list[float]]:
    """Total bytes at every context of CONTEXTS, per format."""
    return {
        preset.label: [inputs.estimate(config, preset, context=n).total for n in CONTEXTS]
        for preset in inputs.presets
    }


def sweep_capacities(inputs: SizingInputs) -> dict[str, float]:
    """The GPU lines on the sweep: the chosen GPU (or four NVIDIA ones), an RTX 4090 and an H200."""
    devices, device = inputs.devices, inputs.device
    picked = [d for d in devices if d.vendor == "NVIDIA"][:4] if device.vendor != "NVIDIA" else [device]
    return {
        d.name: d.usable_bytes
        for d in {*picked, *[d for d in devices if "4090" in d.name or "H200" in d.name]}
    }


def fit_rows(config, breakdowns: list[MemoryBreakdown], inputs: SizingInputs) -> list[dict]:
    """Every GPU against every format: the fewest GPUs (tensor parallel) that hold it."""
    rows = []
    for candidate in inputs.devices:
        row = {"device": candidate.name, "usable GiB": candidate.usable_bytes / GIB}
        for b, preset in zip(breakdowns, inputs.presets, strict=True):
            needed = min_tensor_parallel(b, config, candidate)
            row[preset.label] = "—" if needed is None else ("1 GPU" if needed == 1 else f"{needed} GPUs (TP)")
        rows.append(row)
    return rows


def serving_rows(
    config, breakdowns: list[MemoryBreakdown], inputs: SizingInputs, utilization: float
) -> list[dict]:
    """A vLLM engine's reservation at `utilization`: what is left for the KV cache, and the two lines vLLM
    prints from it ("GPU KV cache size: N tokens", "Maximum concurrency for N tokens per request")."""
    plan, values = layer_plan(config), kv_bytes_per_token(config, 8)
    rows = []
    for b in breakdowns:
        serving = serving_what_if(b, inputs.device, utilization)
        row = {
            "weights": b.weights_label,
            "reserved GiB": serving.reserved / GIB,
            "KV capacity GiB": serving.kv_capacity / GIB,
            "GPU KV cache size (tokens)": 0,
            f"max concurrency at {inputs.context:,}": 0.0,
        }
        if serving.kv_capacity > 0:
            kv_bits = 8 * b.kv_bytes_per_token / values if values else 16
            report = vllm_report(plan, serving.kv_capacity, inputs.context, kv_bits=kv_bits)
            row["GPU KV cache size (tokens)"] = report.kv_tokens
            row[f"max concurrency at {inputs.context:,}"] = report.max_concurrency
        rows.append(row)
    return rows


def measured_panel() -> None:
    """The loaded model's real bytes against the config-only estimate; on CUDA, the measured peak too."""
    loaded = cache.current_model_or_stop()
    try:
        weights = weights_vs_real_bytes(loaded.model)
    except ValueError as exc:
        show_error(exc)
        return
    cols = st.columns(3)
    cols[0].metric("Weights, estimated from config", f"{weights.estimated / 1024**2:,.2f} MiB")
    cols[1].metric("Weights, real bytes", f"{weights.measured / 1024**2:,.2f} MiB")
    cols[2].metric("Difference", f"{weights.difference:+.3%}")
    st.caption(
        f"{loaded.source.label} on {loaded.device} in {loaded.dtype}: every parameter and buffer's bytes, "
        "tied weights once (not `get_memory_footprint()`, which misreports some quantized backends)."
    )
    rows = [(weights.component, weights.estimated, weights.measured)]
    if loaded.device.startswith("cuda"):
        context = st.select_slider("Prompt tokens", [128, 512, 1024, 2048, 4096], 1024, key="memory_peak_ctx")
        if st.button("Measure prefill + decode peak", key="memory_peak"):
            try:
                with st.spinner("Prefilling and decoding on the GPU…"):
                    measurement = measure_generation_peak(loaded.model, int(context))
                breakdown, peak = peak_vs_estimate(loaded.model, measurement)
            except Exception as exc:  # CUDA OOM included: the page stays up
                show_error(exc)
                return
            st.metric(
                "Peak, estimated vs measured",
                f"{peak.measured / 1024**2:,.0f} MiB",
                f"{peak.difference:+.1%}",
            )
            rows.append((peak.component, peak.estimated, peak.measured))
    else:
        st.info(
            "On CPU the allocator keeps no peak statistics, so only the weights are compared here; on a CUDA "
            "device this panel also measures the prefill + decode peak.",
            icon=":material/memory:",
        )
    st.plotly_chart(memory_charts.measured_vs_estimated(rows), width="stretch", key="memory_measured_chart")
