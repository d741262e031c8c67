"""The Methods lab's runs: scores and per-layer reports kept in the browser session, the quantized models
in the server-wide budgeted store (ui/cache/session_models.py), which may free one for newer models of any
session. Every page that offers a lab model (Methods export, Compare, Speed) asks `run.held()` or
`run.quantized` and says `run.missing` when it is gone; the results table and figures need only the
reports, so they stay.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from engine.evaluation.perplexity import ComparisonResult
from engine.methods import LayerReport, QuantizedModel
from ui import state
from ui.cache import session_models

RUNS = "methods_runs"  # session key: {label: MethodRun}
RUNS_MODEL = "methods_runs_model"  # session key: the model selection those runs were built from


@dataclass
class MethodRun:
    """One run: its scores and per-layer reports, kept in the session; its quantized model is held in the
    server-wide store (ui/cache/session_models.py), which may free it for newer models of any session.
    `quantized` is then None, while the results table and figures (drawn from `layers`) stay."""

    label: str
    method: str  # display name
    config: object  # the method config it was built from
    layers: list[LayerReport]
    comparison: ComparisonResult
    seconds: float  # time to quantize
    bits_per_weight: float
    session: str  # the store's key is (session, label)
    model_bytes: int
    kept: bool  # False: the model alone was over the budget, so it was never kept

    @classmethod
    def keep(cls, label, method, quantized: QuantizedModel, comparison, seconds, session=None) -> MethodRun:
        """The run, its model put in the store for `session` (default: this browser session's)."""
        session = session_models.session_id() if session is None else session
        nbytes = session_models.model_nbytes(quantized.model)
        kept = session_models.store().put(session, label, quantized, nbytes)
        layers, bits = quantized.layers, quantized.bits_per_weight
        return cls(label, method, quantized.config, layers, comparison, seconds, bits, session, nbytes, kept)

    @property
    def quantized(self) -> QuantizedModel | None:
        """The quantized model (marked as used), or None once freed or when never kept."""
        return session_models.store().get(self.session, self.label)

    @property
    def missing(self) -> str | None:
        """Why the model is not held, in words for the page (None while it is); does not mark it used."""
        if not self.kept:
            return session_models.too_large_note(self.model_bytes)
        if not session_models.store().holds(self.session, self.label):
            return session_models.freed_note()
        return None

    def held(self) -> tuple[QuantizedModel | None, str | None]:
        """(the model, None) while held (marked as used), else (None, why not in words)."""
        quantized = self.quantized
        if quantized is not None:
            return quantized, None
        return None, self.missing or session_models.freed_note()

    def forget(self) -> None:
        """Free the model now (results cleared, another model loaded)."""
        session_models.store().drop(self.session, self.label)


def runs() -> dict[str, MethodRun]:
    """This session's Methods-lab runs, for the model loaded now: loading another model (or the same in
    another device / dtype) starts an empty set (freeing the old runs' models), so no page offers a copy of
    a model no longer loaded."""
    model = state.selection()
    if st.session_state.setdefault(RUNS_MODEL, model) != model:
        clear_runs(st.session_state.get(RUNS, {}))
        st.session_state[RUNS] = {}  # a new dict: a lab job still running for the old model writes elsewhere
        st.session_state[RUNS_MODEL] = model
    return st.session_state.setdefault(RUNS, {})


def clear_runs(all_runs: dict[str, MethodRun]) -> None:
    for run in all_runs.values():
        run.forget()
    all_runs.clear()
