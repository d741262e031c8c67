"""Evaluate: how much quality does each bit-width cost? A Qllm-Eval-style grid on real text."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import streamlit as st
from torch import Tensor

from engine import recipes
from engine.evaluation.evalset import DEFAULT_EVAL_SET
from engine.evaluation.study import FORMATS_GRID, FULL_GRID, MODEL_GRID, QUICK_GRID, pick_group_size
from engine.models.data import (
    CORPORA,
    DataError,
    WindowSpec,
    decode_upload,
    load_text,
    text_fingerprint,
    token_windows,
)
from ui import cache, jobs, page, state
from ui.cache import variants
from ui.errors import show_error
from ui.pages import evaluate as evaluate_view
from ui.pages import evaluate_charts, evaluate_imatrix
from ui.pages.compare import quick_variants
from ui.widgets import NumberBoxes

GRIDS = {
    f"Quick ({len(QUICK_GRID)} cells)": QUICK_GRID,
    f"Full ({len(FULL_GRID)} cells)": FULL_GRID,
    f"Formats at 4 bits ({len(FORMATS_GRID)} cells)": FORMATS_GRID,
    "Pick cells": None,
}
# every cell of both grids, then the rest of today's formats and llama.cpp's types and mixes, once each
PICKABLE = tuple(
    {c.name: c for c in (*FULL_GRID, *FORMATS_GRID, *recipes.on_axis("formats", "gguf"))}.values()
)
CORPUS_CHOICES = [*CORPORA, "upload"]
JOB_KEY = evaluate_view.GRID_JOB  # this session's grid run in the background (ui.jobs)
REQUESTED = "evaluate_run_requested"  # set by the button's callback, so no rerun can lose the click
SECONDS_PER_1K_TOKENS = 4  # per cell, for the "roughly N s" hint (see docs/benchmarks.md for the machine)


@dataclass(frozen=True)
class Choice:
    corpus: str
    cells: tuple  # catalog recipes (engine.recipes) to show, in grid order
    windows: int
    window: int  # tokens per window


def settings_ui() -> Choice:
    """The corpus, grid, window count and length, and the Run button; stops when no cell is picked or a
    number is out of range (said under the row)."""
    cols = st.columns([3, 2, 1, 1.6, 1.6], vertical_alignment="bottom")
    corpus = cols[0].selectbox(
        "Text (held-out second half)",
        CORPUS_CHOICES,
        index=CORPUS_CHOICES.index(DEFAULT_EVAL_SET.corpus),
        format_func=lambda name: CORPORA.get(name, "Upload a text file"),
        key="evaluate_corpus",
    )
    grid_name = cols[1].selectbox("Grid", list(GRIDS), key="evaluate_grid")
    number = NumberBoxes()
    windows = number(cols[2], "Windows", 1, 16, DEFAULT_EVAL_SET.windows, key="evaluate_windows")
    window = cols[3].select_slider(
        "Tokens per window", [128, 256, 512], DEFAULT_EVAL_SET.window, key="evaluate_window"
    )
    cols[4].button(
        "Run grid",
        type="primary",
        key="evaluate_run",
        width="stretch",
        on_click=lambda: st.session_state.update({REQUESTED: True}),
    )
    if number.show():  # a Run grid click with a number out of range runs nothing, now or later
        st.session_state.pop(REQUESTED, None)
        st.stop()
    cells = GRIDS[grid_name]
    if cells is None:
        offered = PICKABLE
        names = st.multiselect(
            "Cells",
            [c.name for c in offered],
            default=["W8", "W4", MODEL_GRID, "KV4"],
            key="evaluate_cells",
        )
        cells = tuple(c for c in offered if c.name in names)
    if not cells:
        st.info("Pick at least one cell.", icon=":material/tune:")
        st.stop()
    return Choice(corpus, cells, int(windows), int(window))


def load_windows(loaded, choice: Choice) -> tuple[str, Tensor, int]:
    """(text, token windows (windows, tokens), group size); stops with the reason when it cannot."""
    try:
        if choice.corpus == "upload":
            upload = st.file_uploader(
                "Text file (UTF-8)", type=["txt", "md", "csv", "json", "py"], key="evaluate_file"
            )
            if upload is None:
                st.info("Upload a plain-text file to evaluate on your own text.", icon=":material/upload:")
                st.stop()
            text = decode_upload(upload.getvalue())
        else:
            text = load_text(choice.corpus)
        spec = WindowSpec(choice.window, choice.windows, split="evaluation")
        return text, token_windows(loaded.tokenizer, text, spec), pick_group_size(loaded.model)
    except (DataError, ValueError) as exc:
        show_error(exc)
        st.stop()


def run_missing(loaded, cells, token_ids: Tensor, group_size: int, done: dict) -> None:
    """Start scoring the cells not cached yet once Run grid was pressed (a background job that other clicks
    leave running); while it runs, its progress and Stop; otherwise say what the missing cells would take."""
    missing = [c for c in cells if c.name not in done]
    if st.session_state.pop(REQUESTED, False) and missing:
        evaluate_view.start_grid(loaded.model, missing, token_ids, group_size, done)
    if evaluate_view.grid_running_ui():
        return
    if (finished := jobs.finished(JOB_KEY)) is not None and finished.error is not None:
        show_error(finished.error, prefix="The grid stopped: ")  # the finished cells stay cached
    if missing := [c for c in cells if c.name not in done]:
        per_cell = SECONDS_PER_1K_TOKENS * token_ids.numel() / 1024
        st.info(
            f"Press **Run grid** to score {len(missing)} cell(s) on {token_ids.shape[0]} windows × "
            f"{token_ids.shape[1]} tokens: roughly {len(missing) * per_cell:,.0f} s on two CPU cores. Finished "
            "cells are kept for every session, so reruns are instant.",
            icon=":material/play_arrow:",
        )


def headline(loaded, results: list, choice: Choice, token_ids: Tensor) -> None:
    reference = results[0].reference_perplexity
    cols = st.columns(4)
    cols[0].metric("Reference perplexity", f"{reference:,.2f}", help=f"{loaded.source.label}, {loaded.dtype}")
    best = min(results, key=lambda r: r.relative_change)
    worst = max(results, key=lambda r: r.relative_change)
    label = evaluate_charts.change_label
    cols[1].metric("Closest cell", best.cell, label(best.relative_change), delta_color="inverse")
    cols[2].metric("Worst cell", worst.cell, label(worst.relative_change), delta_color="inverse")
    cols[3].metric("Tokens scored per cell", f"{results[0].tokens:,}")
    windows, window = token_ids.shape
    st.caption(evaluate_view.windows_caption(int(windows), int(window), choice.corpus, "the Methods lab"))


def compare_variants(loaded) -> list[str]:
    """The variants the Compare page offers for this model."""
    return list(quick_variants(loaded.model, state.scheme()))


def main() -> None:
    page.start(
        "Evaluate",
        "Perplexity, KL divergence to the reference and top-1 agreement for weight bits (W8–W2), weight + "
        "activation pairs (W8A8, W4A8, W4A4) and KV-cache bits (KV8–KV2), all round-to-nearest, on the same "
        "held-out text — the axes of the Qllm-Eval study.",
    )
    loaded = cache.current_model_or_stop()
    evaluate_view.origin_note(
        loaded, f"{MODEL_GRID} reproduces it exactly, W4 (symmetric g64) is a second rounding."
    )
    choice = settings_ui()
    text, token_ids, group_size = load_windows(loaded, choice)
    key = (variants.model_key(), text_fingerprint(text), tuple(token_ids.shape), group_size)
    done = variants.cached_cells(key)
    run_missing(loaded, choice.cells, token_ids, group_size, done)
    results = [done[c.name] for c in choice.cells if c.name in done]
    if results:
        headline(loaded, results, choice, token_ids)
        offered = partial(compare_variants, loaded)  # a click on a cell opens that variant on Compare
        evaluate_view.results_ui(evaluate_view.table_rows(results), results, offered)
        evaluate_view.drift_ui(results)
        evaluate_view.findings_ui(done | {r.cell: r for r in results})
    evaluate_imatrix.section(loaded, text, token_ids)


main()
