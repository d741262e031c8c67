"""Keep a planned recipe's model for the other pages: built through the method registry
(`PlannedConfig`), scored against the reference as the Methods lab scores its runs, and stored with the
lab's runs (ui/cache/method_runs.py), which Compare, Speed and the lab's export offer."""

from __future__ import annotations

import time

import streamlit as st

from engine.evaluation.perplexity import evaluate_against_reference
from engine.methods import method_info, quantize_model
from engine.planner import PlannedConfig, PlannedRecipe
from ui.cache import method_runs
from ui.cache.method_runs import MethodRun
from ui.cache.planner import PlannerSession
from ui.errors import show_error
from ui.pages import planner as view
from ui.progress import progress_bar

BUTTON = "Keep this model for Compare and Speed"
LINKS = (  # where a kept model is offered
    ("pages/compare.py", "Compare generations", ":material/compare:"),
    ("pages/speed.py", "Speed", ":material/speed:"),
    ("pages/methods.py", "Methods lab (export)", ":material/science:"),
)


def keep(loaded, recipe: PlannedRecipe, kind: str, into: PlannerSession, eval_windows: int, label: str | None = None, progress=None) -> MethodRun:  # fmt: skip
    """Quantize a copy with the recipe (progress 0-0.8), score it on the page's evaluation windows
    (0.8-1; the score goes to the page's table too), and keep it with the Methods lab's runs."""
    say = progress or (lambda fraction, message: None)
    config = PlannedConfig.from_recipe(recipe, label)
    windows = view.eval_windows_of(loaded, eval_windows)  # read first: nothing is built when it fails
    cache = into.windows(eval_windows)
    start = time.perf_counter()
    quantized = quantize_model(loaded.model, config, progress=lambda f, m: say(0.8 * f, m))
    seconds = time.perf_counter() - start
    result = evaluate_against_reference(
        loaded.model, quantized.model, windows, cache, progress=lambda f, m: say(0.8 + 0.2 * f, m)
    )
    view.keep_score(recipe, kind, result, into, label=None if kind == "planner" else config.label)
    run = MethodRun.keep(config.label, method_info(config).name, quantized, result, seconds)
    method_runs.runs()[run.label] = run
    return run


def keep_section(loaded, into: PlannerSession, recipe: PlannedRecipe, kind: str, eval_windows: int, key: str, label: str | None = None) -> None:  # fmt: skip
    """The keep button under a recipe, and where its kept model is offered (or why it is not held)."""
    config = PlannedConfig.from_recipe(recipe, label)
    help_text = (
        f"Quantizes a copy with this recipe, scores it, and keeps it as **{config.label}**: Compare and "
        "Speed offer it, and the Methods lab can save it (a .gguf file when every format is a llama.cpp type)."
    )
    if st.button(BUTTON, key=key, help=help_text):
        update, clear = progress_bar()
        try:
            keep(loaded, recipe, kind, into, eval_windows, label, progress=update)
        except (ValueError, MemoryError) as exc:
            show_error(exc)
        finally:
            clear()
    run = method_runs.runs().get(config.label)
    if run is None or run.config != config:
        return
    why = run.missing
    if why is not None:
        st.info(f"**{run.label}** was scored but is not kept: {why}", icon=":material/memory:")
        return
    st.success(f"Kept **{run.label}**: open it on Compare, Speed or the Methods lab's export.", icon=":material/check:")  # fmt: skip
    for column, (page, text, icon) in zip(st.columns(len(LINKS)), LINKS, strict=True):
        column.page_link(page, label=text, icon=icon)
