"""Session-state keys shared by the sidebar and the pages, in one place so they never drift."""

from __future__ import annotations

import streamlit as st

from engine.models.loading import available_devices, default_dtype
from engine.models.sources import ModelSource

MODEL_SOURCE = "qe_model_source"  # the ModelSource last loaded successfully
DEVICE = "qe_device"
DTYPE = "qe_dtype"
LOAD_ERROR = "qe_load_error"  # message of the last failed load, shown in the sidebar
SCHEME = "qe_scheme_value"  # the sidebar's QuantScheme (None while the picked combination is impossible)


def init() -> None:
    """Defaults for a fresh browser session: the offline default model on the first device."""
    st.session_state.setdefault(MODEL_SOURCE, ModelSource())
    st.session_state.setdefault(DEVICE, available_devices()[-1])
    st.session_state.setdefault(DTYPE, default_dtype(st.session_state[DEVICE]))


def selection() -> tuple[ModelSource, str, str]:
    init()
    return st.session_state[MODEL_SOURCE], st.session_state[DEVICE], st.session_state[DTYPE]


def scheme():
    """The sidebar's scheme, or None when the user picked an impossible one (the sidebar says why)."""
    return st.session_state.get(SCHEME)
