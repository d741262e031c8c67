"""Adapters from the engine's `progress(fraction, message)` callbacks to Streamlit widgets."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st


def progress_bar(where=st) -> tuple[Callable[[float, str], None], Callable[[], None]]:
    """Returns (callback, clear): the callback drives one st.progress bar, `clear` removes it."""
    bar = where.progress(0.0, text="Starting")

    def update(fraction: float, message: str) -> None:
        bar.progress(min(max(float(fraction), 0.0), 1.0), text=message)

    return update, bar.empty
