"""Turn exceptions into a clear message for the user; the traceback only inside a collapsed expander."""

from __future__ import annotations

import gc
import traceback

import streamlit as st
import torch

from engine._types import NotEnoughMemoryError
from engine.models.sources import ModelSourceError
from engine.runtime.generation import GenerationError

# A refusal with the numbers (engine._types.require_free, ModelTooLargeError included) is a user error,
# shown as its message, not as an out-of-memory crash.
USER_ERRORS = (ModelSourceError, GenerationError, ValueError, NotEnoughMemoryError)
OOM_ADVICE = (
    "Out of memory while running this. The memory it held has been freed and the app is still up: lower "
    "the number of windows or tokens per window, max new tokens, batch or context, or pick a smaller model "
    "or a lower-precision dtype."
)


def free_after_oom() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def show_error(exc: BaseException, where=st, prefix: str = "") -> None:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError) and not isinstance(exc, USER_ERRORS):
        free_after_oom()
        where.error(f"{prefix}{OOM_ADVICE}", icon=":material/memory:")
        return
    message = str(exc) if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: {exc}"
    where.error(f"{prefix}{message}", icon=":material/error:")
    if not isinstance(exc, USER_ERRORS):
        with where.expander("Details"):
            st.code("".join(traceback.format_exception(exc)), language="text")
