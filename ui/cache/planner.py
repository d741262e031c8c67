"""The planner page's per-session results, for the model loaded now: the measured costs (so the budget
slider re-solves from them at once), the reference cache of the evaluation windows, and the scores of the
recipes measured so far. No quantized model is kept here: each measured recipe's copy is scored and dropped
(a model kept for Compare and Speed goes to the Methods lab's runs, ui/cache/method_runs.py).
Loading another model starts empty (like the Methods lab's runs, ui/cache/method_runs.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import streamlit as st

from engine.evaluation.perplexity import ReferenceCache
from engine.planner import CostTable, PlannedRecipe
from ui import state

KEY = "planner_session"  # session key: PlannerSession


@dataclass(frozen=True)
class Scored:
    """One recipe scored against the reference on the evaluation windows."""

    label: str
    kind: str  # "uniform", "heuristic", "planner" or "loaded": the Pareto chart's series
    bits_per_weight: float
    predicted_kl: float | None
    mean_kl: float
    max_kl: float
    top1: float
    perplexity: float
    reference_perplexity: float
    kl_p99: float = math.nan  # llama.cpp's 99th percentile of the per-token KL (NaN: scored without it)


@dataclass
class PlannerSession:
    model: object  # the model selection these results belong to
    costs: CostTable | None = None
    costs_note: str = ""  # how the costs were measured, for the caption
    eval_windows: int = 0  # the windows the reference cache and scores belong to
    reference: ReferenceCache = field(default_factory=ReferenceCache)
    scores: dict[str, Scored] = field(default_factory=dict)  # label -> score
    loaded: PlannedRecipe | None = None  # a recipe read back from a JSON file

    def keep_costs(self, table: CostTable, note: str) -> None:
        self.costs, self.costs_note = table, note
        self.scores = {label: s for label, s in self.scores.items() if s.kind in ("uniform", "heuristic")}

    def windows(self, count: int) -> ReferenceCache:
        """The reference cache for `count` evaluation windows (scores on other windows are dropped)."""
        if count != self.eval_windows:
            self.eval_windows, self.reference, self.scores = count, ReferenceCache(), {}
        return self.reference


def session() -> PlannerSession:
    model = state.selection()
    current = st.session_state.get(KEY)
    if current is None or current.model != model:
        current = st.session_state[KEY] = PlannerSession(model)
    return current
