"""The Memory page's inputs and measured panel: where its config comes from, and the loaded model held
against the estimate."""

from __future__ import annotations

import streamlit as st

from engine.sizing.catalog import catalog_models
from engine.sizing.configs import config_from_hub, config_from_json
from engine.sizing.estimate import estimate
from engine.sizing.measure import measure_generation_peak, peak_vs_estimate, weights_vs_real_bytes
from ui import cache
from ui.errors import show_error
from ui.pages import memory_charts

SOURCES = ["Catalog", "Loaded model", "Upload config.json", "Hub id"]
DEFAULT_CATALOG_MODEL = "Llama-3.1-8B"


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
            upload = st.file_uploader("config.json", type=["json"], key="memory_upload")
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


def context_sweep(
    config, presets, kv_name, batch, attention, prefill_chunk, contexts
) -> dict[str, list[float]]:
    return {
        preset.label: [
            estimate(
                config, preset, kv_name, n, batch, attention=attention, prefill_chunk=prefill_chunk
            ).total
            for n in contexts
        ]
        for preset in presets
    }


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
