"""Session-state keys shared by the sidebar and the pages, in one place so they never drift."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from engine.models.loading import available_devices, default_dtype
from engine.models.sources import ModelSource
from engine.quant.group_sizes import GroupSizeFit

MODEL_SOURCE = "qe_model_source"  # the ModelSource last loaded successfully
DEVICE = "qe_device"
DTYPE = "qe_dtype"
LOAD_ERROR = "qe_load_error"  # message of the last failed load, shown in the sidebar
SCHEME = "qe_scheme_value"  # the sidebar's QuantScheme (None while the picked combination is impossible)
GROUP_SIZES = "qe_group_sizes"  # the GroupSizeFit the sidebar's group-size slider offered (its sizes, why)
KEPT = "qe_kept_widgets"  # {widget key: value}: widgets a page may not draw (see `seed`)


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


def group_sizes() -> GroupSizeFit | None:
    """What the sidebar's group-size slider offers (None before the scheme picker was first drawn)."""
    return st.session_state.get(GROUP_SIZES)


# -- widgets that outlive the pages that do not draw them --------------------------------------------
# Streamlit forgets a widget's value at the end of a run that does not draw it, so the sidebar's scheme
# would fall back to its defaults after a visit to a page without it. `seed` puts the kept value back
# before the widget is drawn (the widget then takes no default of its own); `keep` stores it after.


def seed(key: str, default, options: Sequence | None = None):
    """Give widget `key` its kept value (else `default`) unless it holds one; a value that is no longer
    among `options` (another model, other group sizes) moves to the nearest option. Returns that value
    when it moved (for the caller to say so), else None."""
    kept = st.session_state.get(KEPT, {})
    value = wanted = st.session_state[key] if key in st.session_state else kept.get(key, default)
    if options is not None and value not in options:
        value = _nearest(list(options), value, default)
    # written even when it already holds this value: after a page change the value left there belongs to the
    # other page's widget, and a selectbox drawn on the new page would otherwise start from its first option
    st.session_state[key] = value
    return wanted if value != wanted else None


def keep(*keys: str) -> None:
    """Store the current values of widgets `keys` (drawn in this run) for the runs that do not draw them."""
    kept = st.session_state.setdefault(KEPT, {})
    for key in keys:
        if key in st.session_state:
            kept[key] = st.session_state[key]


def _nearest(options: list, value, default):
    numbers = all(isinstance(o, int | float) for o in options) and isinstance(value, int | float)
    if numbers:
        return min(options, key=lambda option: (abs(option - value), option))
    return default if default in options else options[0]
