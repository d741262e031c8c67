"""The planner page's pieces: the measuring form and its background job (progress and Stop), the budget
slider, scoring recipes against the reference, the comparison set (uniform formats, heuristics, the planner at
three budgets) and the exports (llama.cpp --tensor-type lines, JSON download and upload)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from engine.evaluation.evalset import DEFAULT_EVAL_SET
from engine.evaluation.perplexity import ComparisonResult, evaluate_against_reference
from engine.models.data import DataError, WindowSpec, load_text, token_windows
from engine.planner import (
    DEFAULT_CANDIDATES,
    LLAMA_CPP_CANDIDATES,
    CostTable,
    PlannedRecipe,
    apply,
    measure_costs,
    plan,
)
from engine.planner.candidates import fits
from engine.planner.heuristics import first_last_8bit, llama_cpp_mix, uniform
from engine.planner.recipe import recipe_from_json, recipe_to_json, tensor_type_lines
from engine.planner.solve import bounds
from engine.quant.gguf import Q4_0, Q8_0
from ui import jobs
from ui.cache.planner import PlannerSession, Scored
from ui.errors import show_error
from ui.progress import progress_bar

MEASURE_JOB = "planner_measure_job"  # the background job measuring costs (ui.jobs)
CANDIDATE_SETS = {
    "Mixed: int3 g32, Q4_0, Q5_0, Q8_0 (3.5 to 8.5 bits)": DEFAULT_CANDIDATES,
    "llama.cpp types: Q3_K, Q4_0, Q5_0, Q6_K, Q8_0 (k-quants only where rows fit)": LLAMA_CPP_CANDIDATES,
}


@dataclass(frozen=True)
class MeasureSettings:
    candidates: str  # a key of CANDIDATE_SETS
    windows: int  # calibration windows
    tokens: int  # tokens per window
    last_layers: int | None  # price only the last N decoder layers (a quick look); None: every layer

    def note(self) -> str:
        scope = "every layer" if self.last_layers is None else f"the last {self.last_layers} layers only"
        windows = f"{self.windows} window(s) × {self.tokens} tokens"
        return f"{self.candidates.split(' (')[0]}; {scope}; calibrated on {windows}"


def measure_settings() -> MeasureSettings:
    left, middle, right, scope = st.columns([3, 1, 1, 1])
    candidates = left.selectbox("Candidate formats", list(CANDIDATE_SETS), key="planner_candidates")
    windows = middle.select_slider("Calibration windows", [1, 2, 4], 1, key="planner_windows")
    tokens = right.select_slider("Tokens per window", [64, 128, 256], 128, key="planner_tokens")
    layers = scope.selectbox(
        "Layers to plan",
        ["every layer", "last 4 (quick look)"],
        key="planner_scope",
        help="A quick look prices only the last 4 decoder layers; the others stay unquantized.",
    )
    return MeasureSettings(candidates, int(windows), int(tokens), None if layers == "every layer" else 4)


def start_measure(loaded, settings: MeasureSettings, into: PlannerSession) -> None:
    """Price every tensor in every candidate in a background job (`ui.jobs`) that other clicks, and other
    pages, leave running; it keeps the table in `into` when done (a partial one when stopped). Refused, in
    words, while a measurement still runs."""
    try:
        text = load_text(DEFAULT_EVAL_SET.corpus)
        ids = token_windows(
            loaded.tokenizer, text, WindowSpec(settings.tokens, settings.windows, split="calibration")
        )
    except DataError as exc:
        show_error(exc)
        return
    layers = None
    if settings.last_layers is not None:
        count = loaded.model.config.get_text_config().num_hidden_layers
        layers = range(max(0, count - settings.last_layers), count)
    model, candidates, note = loaded.model, CANDIDATE_SETS[settings.candidates], settings.note()

    def work(job: jobs.Job) -> CostTable:  # the job's thread: no Streamlit
        stopped = lambda: job.stopped  # noqa: E731  (measure_costs asks after each tensor)
        table = measure_costs(model, ids, candidates, layers=layers, progress=job.update, should_stop=stopped)
        with job.lock:
            into.keep_costs(table, note)  # a session left for another model is no longer shown
        return table

    try:
        jobs.start(MEASURE_JOB, work, "measurement")
    except jobs.JobRunning as exc:
        st.warning(str(exc), icon=":material/hourglass_top:")


def _draw_measuring(job: jobs.Job) -> None:
    snapshot = job.snapshot()
    st.progress(snapshot.fraction, text="Stopping…" if snapshot.stopped else snapshot.message)


def measuring() -> bool:
    """While the measurement runs: its Stop button and progress (redrawn on their own), and True. Once it
    has ended: says why if it failed, and False."""
    job = jobs.current(MEASURE_JOB)
    if job is None or not job.running:
        ended = jobs.finished(MEASURE_JOB)
        if ended is not None and ended.error is not None:
            show_error(ended.error)
        return False
    st.button(
        "Stop",
        key="planner_stop",
        on_click=jobs.stop,
        args=(MEASURE_JOB,),
        help="Stops measuring; measure again to use the planner.",
    )
    jobs.watch(MEASURE_JOB, _draw_measuring)
    return True


def budget_slider(table: CostTable) -> float:
    """The bit budget, between the cheapest and the richest assignment of the measured table."""
    weights = {t.name: t.numel for t in table.tensors}
    options = {n: {f: (0.0, b) for f, b in bits.items()} for n, bits in table.bits.items()}
    low, high = bounds(options, weights)
    low, high = round(low + 0.005, 2), round(high - 0.005, 2)
    default = min(max(4.5, low), high)
    return float(
        st.slider("Budget (average bits per weight)", low, high, default, 0.05, key="planner_budget")
    )


def score(loaded, recipe: PlannedRecipe, kind: str, into: PlannerSession, eval_windows: int, progress=None) -> Scored:  # fmt: skip
    """The recipe applied to a copy of the model and scored against the reference (the copy is dropped)."""
    if recipe.label in into.scores:
        return into.scores[recipe.label]
    cache = into.windows(eval_windows)
    windows = eval_windows_of(loaded, eval_windows)
    quantized = apply(loaded.model, recipe)
    result = evaluate_against_reference(loaded.model, quantized, windows, cache, progress=progress)
    del quantized
    return keep_score(recipe, kind, result, into)


def keep_score(recipe: PlannedRecipe, kind: str, result: ComparisonResult, into: PlannerSession, label: str | None = None) -> Scored:  # fmt: skip
    """The recipe's scores against the reference (`result`), kept in the session under `label` (default:
    the recipe's)."""
    a, label = result.agreement, label or recipe.label
    p99 = math.nan if a.drift is None else a.drift.kl_p99
    scored = Scored(label, kind, recipe.bits_per_weight, recipe.predicted_kl, a.mean_kl, a.max_kl, a.top1_agreement, result.candidate.perplexity, result.reference.perplexity, p99)  # fmt: skip
    into.scores[label] = scored
    return scored


def eval_windows_of(loaded, count: int):
    """`count` evaluation windows of the default evaluation text (DataError when it cannot be read)."""
    text = load_text(DEFAULT_EVAL_SET.corpus)
    return token_windows(
        loaded.tokenizer, text, WindowSpec(DEFAULT_EVAL_SET.window, count, split="evaluation")
    )


def comparison(table: CostTable, budget: float) -> list[tuple[str, PlannedRecipe]]:
    """(kind, recipe): every candidate that fits all tensors uniformly, first/last layers at Q8_0 with Q4_0
    (or the smallest uniform format) elsewhere, llama.cpp's Q4_K_M rule, and the planner at the
    heuristics' sizes and at `budget`."""
    tensors = table.tensors
    everywhere = [f for f in table.candidates if all(fits(f, t.shape) for t in tensors)]
    recipes = [("uniform", uniform(tensors, f, table)) for f in everywhere]
    base = (
        Q4_0
        if Q4_0 in everywhere
        else min(everywhere, key=lambda f: recipes[everywhere.index(f)][1].bits_per_weight)
    )
    heuristics = [first_last_8bit(tensors, base, table, Q8_0)]
    with contextlib.suppress(ValueError):  # a model whose rows fit no llama.cpp type
        heuristics.append(llama_cpp_mix(tensors, "Q4_K_M", table))
    recipes += [("heuristic", h) for h in heuristics]
    for size in sorted({round(h.bits_per_weight, 2) for h in heuristics} | {round(budget, 2)}):
        try:
            recipes.append(("planner", plan(table, size)))
        except ValueError:
            continue
    return recipes


def score_all(
    loaded, recipes: list[tuple[str, PlannedRecipe]], into: PlannerSession, eval_windows: int
) -> None:
    stop = st.empty()
    stop.button(
        "Stop", key="planner_compare_stop", help="Stops after the current recipe; scored ones are kept."
    )
    update, clear = progress_bar()
    try:
        for index, (kind, recipe) in enumerate(recipes):
            update(index / len(recipes), f"{recipe.label} ({index + 1}/{len(recipes)})")
            try:
                score(loaded, recipe, kind, into, eval_windows)
            except ValueError as exc:
                show_error(exc, prefix=f"{recipe.label}: ")
    finally:
        clear()
        stop.empty()


def scores_table(scores: list[Scored]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "recipe": s.label,
                "kind": s.kind,
                "bits/weight": round(s.bits_per_weight, 3),
                "predicted KL": None if s.predicted_kl is None else round(s.predicted_kl, 4),
                "mean KL": round(s.mean_kl, 4),
                "KL p99": round(s.kl_p99, 3),
                "max KL": round(s.max_kl, 3),
                "top-1 agreement": round(s.top1, 3),
                "perplexity": round(s.perplexity, 2),
            }
            for s in sorted(scores, key=lambda s: (s.bits_per_weight, s.mean_kl))
        ]
    )


def exports(recipe: PlannedRecipe, loaded, table: CostTable, into: PlannerSession) -> None:
    """llama.cpp --tensor-type lines (GGUF types only), the JSON download, and a JSON upload that loads back."""
    st.subheader("Export")
    try:
        lines = tensor_type_lines(recipe)
        st.caption("Overrides for `llama-quantize` (add them before the input file; the last argument, the base type, covers the embeddings):")  # fmt: skip
        st.code(lines, language="bash", height=200)
    except ValueError as exc:
        st.info(str(exc), icon=":material/info:")
    st.download_button(
        "Download the recipe (JSON)",
        recipe_to_json(recipe, loaded.source.label),
        file_name="planner-recipe.json",
        mime="application/json",
        key="planner_download",
    )
    upload = st.file_uploader("Load a recipe (JSON)", type=["json"], key="planner_upload")
    if upload is not None:
        try:
            into.loaded = recipe_from_json(upload.getvalue(), table.tensors, table)
        except ValueError as exc:
            show_error(exc)
