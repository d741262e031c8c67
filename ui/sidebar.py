"""The sidebar shared by every page: model source, device and dtype; the scheme on the pages that use it
(with what it is used for there); the glossary last, on every page."""

from __future__ import annotations

import streamlit as st

from engine.models.loading import DTYPES, available_devices, default_dtype
from engine.models.sources import DEFAULT_MODEL_NAME, ModelSource, ModelSourceError
from engine.quant.group_sizes import GroupSizeFit, group_size_fit
from engine.quant.shapes import CANDIDATE_GROUP_SIZES
from ui import cache, glossary, state
from ui.errors import show_error
from ui.widgets import scheme_picker

SOURCE_LABELS = {
    "default": f"Offline default ({DEFAULT_MODEL_NAME})",
    "folder": "Local Hugging Face folder",
    "hub": "Hugging Face Hub id (online)",
    "gguf": "GGUF file",
}
PLACEHOLDERS = {
    "folder": "/path/to/model-folder (with config.json + *.safetensors)",
    "hub": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "gguf": "/path/to/model.Q4_K_M.gguf",
}


def _try_load(source: ModelSource, device: str, dtype: str) -> bool:
    try:
        cache.load(source, device, dtype, where=st.sidebar)
    except Exception as exc:  # ModelSourceError; anything else must not take the sidebar (or page) down
        st.session_state[state.LOAD_ERROR] = exc
        return False
    st.session_state[state.MODEL_SOURCE] = source
    st.session_state[state.DEVICE] = device
    st.session_state[state.DTYPE] = dtype
    st.session_state.pop(state.LOAD_ERROR, None)
    return True


def loaded_group_sizes() -> GroupSizeFit:
    """The group sizes that fit the current model when it is loaded (a registry hit: the sidebar never
    loads a model for this), else every usual size."""
    loaded = cache.models().get(state.selection())
    if loaded is None:
        return GroupSizeFit(CANDIDATE_GROUP_SIZES)
    return group_size_fit(loaded.model)


def scheme_section(scheme_use: str) -> None:
    """The scheme picker and what this page uses it for; the scheme lands in `state.SCHEME`."""
    sidebar = st.sidebar
    sidebar.divider()
    sidebar.subheader("Scheme")
    sidebar.caption(f"Used on this page for: {scheme_use}")
    fit = loaded_group_sizes()
    st.session_state[state.GROUP_SIZES] = fit
    st.session_state[state.SCHEME] = scheme_picker("qe_scheme", where=sidebar, fit=fit)


def render(scheme_use: str | None = None) -> None:
    """The model picker; the scheme picker only where the page uses it (`scheme_use` says for what); the
    glossary. A page without the scheme keeps the last one picked (`state.seed`)."""
    model_section()
    if scheme_use:
        scheme_section(scheme_use)
    st.sidebar.divider()
    glossary.render(st.sidebar)


def model_section() -> None:
    state.init()
    current, device_now, dtype_now = state.selection()
    sidebar = st.sidebar
    sidebar.subheader("Model")
    with sidebar.form("model_picker", border=False):
        kinds = list(SOURCE_LABELS)
        # seeded, not passed as index= / value=: a link (ui.links) may have filled these fields already
        state.seed("qe_pick_kind", current.kind, kinds)
        state.seed("qe_pick_location", current.location)
        state.seed("qe_pick_pickle", current.allow_pickle)
        kind = st.radio(
            "Source",
            kinds,
            format_func=SOURCE_LABELS.get,
            key="qe_pick_kind",
        )
        location = st.text_input(
            "Folder, Hub id or .gguf path",
            placeholder=PLACEHOLDERS.get(kind, "not needed for the default model"),
            key="qe_pick_location",
            help="Ignored for the offline default.",
        )
        allow_pickle = st.checkbox(
            "Allow pickle weights (.bin)",
            key="qe_pick_pickle",
            help="Pickle files can execute code when loaded. Only tick this for sources you trust.",
        )
        devices = available_devices()
        dtypes = list(DTYPES)
        state.seed("qe_pick_device", device_now, devices)
        state.seed("qe_pick_dtype", dtype_now, dtypes)
        device = st.selectbox("Device", devices, key="qe_pick_device")
        dtype = st.selectbox(
            "dtype",
            dtypes,
            key="qe_pick_dtype",
            help=f"Fast default: {default_dtype('cpu')} on CPU, {default_dtype('cuda')} on CUDA.",
        )
        submitted = st.form_submit_button("Load model", type="primary", width="stretch", key="qe_load_model")
    if submitted:
        try:
            source = ModelSource(kind, location.strip() if kind != "default" else "", allow_pickle)
        except ModelSourceError as exc:
            st.session_state[state.LOAD_ERROR] = exc
        else:
            _try_load(source, device, dtype)
    error = st.session_state.get(state.LOAD_ERROR)
    if error is not None:
        show_error(error, where=sidebar, prefix="Could not load that model. ")
        sidebar.caption(f"Still using: {current.label}")
    source, device, dtype = state.selection()
    sidebar.caption(f"Loaded: **{source.label}** on {device} as {dtype}")
