"""Turn exceptions into a clear message for the user; the traceback only inside a collapsed expander."""

from __future__ import annotations

import traceback

import streamlit as st

from engine.generation import GenerationError
from engine.sources import ModelSourceError

USER_ERRORS = (ModelSourceError, GenerationError, ValueError)


def show_error(exc: BaseException, where=st, prefix: str = "") -> None:
    message = str(exc) if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: {exc}"
    where.error(f"{prefix}{message}", icon=":material/error:")
    if not isinstance(exc, USER_ERRORS):
        with where.expander("Details"):
            st.code("".join(traceback.format_exception(exc)), language="text")
