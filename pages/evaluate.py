"""Evaluate: how much quality does each bit-width cost? A Qllm-Eval-style grid on real text."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.evaluation.study import FULL_GRID, QUICK_GRID, findings, pick_group_size, run_grid
from engine.models.data import (
    CORPORA,
    DataError,
    WindowSpec,
    decode_upload,
    load_text,
    text_fingerprint,
    token_windows,
)
from engine.models.sources import DEFAULT_MODEL_NAME
from ui import cache, page
from ui.cache import variants
from ui.errors import show_error
from ui.pages import evaluate_charts
from ui.progress import progress_bar

page.start(
    "Evaluate",
    "Perplexity, KL divergence to the reference and top-1 agreement for weight bits (W8–W2), weight + "
    "activation pairs (W8A8, W4A8, W4A4) and KV-cache bits (KV8–KV2), all round-to-nearest, on the same "
    "held-out text — the axes of the Qllm-Eval study.",
)
loaded = cache.current_model_or_stop()

GRIDS = {"Quick (6 cells)": QUICK_GRID, "Full (11 cells)": FULL_GRID, "Pick cells": None}
CORPUS_CHOICES = [*CORPORA, "upload"]
cols = st.columns([3, 2, 1, 1.6, 1.6], vertical_alignment="bottom")
corpus = cols[0].selectbox(
    "Text (held-out second half)",
    CORPUS_CHOICES,
    format_func=lambda name: CORPORA.get(name, "Upload a text file"),
    key="evaluate_corpus",
)
grid_name = cols[1].selectbox("Grid", list(GRIDS), key="evaluate_grid")
windows = cols[2].number_input("Windows", 1, 16, 4, key="evaluate_windows")
window = cols[3].select_slider("Tokens per window", [128, 256, 512], 256, key="evaluate_window")
REQUESTED = "evaluate_run_requested"  # set by the button's callback, so no rerun can lose the click
cols[4].button(
    "Run grid",
    type="primary",
    key="evaluate_run",
    width="stretch",
    on_click=lambda: st.session_state.update({REQUESTED: True}),
)
cells = GRIDS[grid_name]
if cells is None:
    names = st.multiselect(
        "Cells", [c.name for c in FULL_GRID], default=["W8", "W4", "KV4"], key="evaluate_cells"
    )
    cells = tuple(c for c in FULL_GRID if c.name in names)
if not cells:
    st.info("Pick at least one cell.", icon=":material/tune:")
    st.stop()

text = None
try:
    if corpus == "upload":
        upload = st.file_uploader(
            "Text file (UTF-8)", type=["txt", "md", "csv", "json", "py"], key="evaluate_file"
        )
        if upload is None:
            st.info("Upload a plain-text file to evaluate on your own text.", icon=":material/upload:")
            st.stop()
        text = decode_upload(upload.getvalue())
    else:
        text = load_text(corpus)
    token_ids = token_windows(
        loaded.tokenizer, text, WindowSpec(int(window), int(windows), split="evaluation")
    )
    group_size = pick_group_size(loaded.model)
except (DataError, ValueError) as exc:
    show_error(exc)
    st.stop()

key = (variants.model_key(), text_fingerprint(text), tuple(token_ids.shape), group_size)
done = variants.cached_cells(key)
missing = [c for c in cells if c.name not in done]
if missing and not st.session_state.pop(REQUESTED, False):
    per_cell = 4 * token_ids.numel() / 1024  # seconds per cell on two CPU cores, measured (see benchmarks)
    st.info(
        f"Press **Run grid** to score {len(missing)} cell(s) on {token_ids.shape[0]} windows × "
        f"{token_ids.shape[1]} tokens: roughly {len(missing) * per_cell:,.0f} s on two CPU cores. Finished "
        "cells are kept for every session, so reruns are instant.",
        icon=":material/play_arrow:",
    )
    if not done:
        st.stop()
elif missing:
    update, clear = progress_bar()
    try:
        run_grid(loaded.model, token_ids, missing, done=done, group_size=group_size, progress=update)
    except Exception as exc:  # a cell that fails leaves the finished ones cached
        show_error(exc, prefix="The grid stopped: ")
    finally:
        clear()

results = [done[c.name] for c in cells if c.name in done]
if not results:
    st.stop()
reference = results[0].reference_perplexity
rows = [
    dict(
        cell="W16 / KV16",
        axis="reference",
        perplexity=reference,
        relative_change=0.0,
        mean_kl=0.0,
        max_kl=0.0,
        top1_agreement=1.0,
        tokens=results[0].tokens,
        seconds=0.0,
    )
] + [
    dict(
        cell=r.cell,
        axis=r.axis,
        perplexity=r.perplexity,
        relative_change=r.relative_change,
        mean_kl=r.mean_kl,
        max_kl=r.max_kl,
        top1_agreement=r.top1_agreement,
        tokens=r.tokens,
        seconds=r.seconds,
    )
    for r in results
]
metric_cols = st.columns(4)
metric_cols[0].metric(
    "Reference perplexity", f"{reference:,.2f}", help=f"{loaded.source.label}, {loaded.dtype}"
)
best = min(results, key=lambda r: r.relative_change)
worst = max(results, key=lambda r: r.relative_change)
metric_cols[1].metric(
    "Closest cell", best.cell, evaluate_charts.change_label(best.relative_change), delta_color="inverse"
)
metric_cols[2].metric(
    "Worst cell", worst.cell, evaluate_charts.change_label(worst.relative_change), delta_color="inverse"
)
metric_cols[3].metric("Tokens scored per cell", f"{results[0].tokens:,}")
if loaded.source.kind == "default":
    st.caption(
        f"{DEFAULT_MODEL_NAME} was distributed as Q4_1 (int4 asym, groups of 32): its reference is already a "
        f"4-bit model. The grid re-quantizes it with symmetric groups of {group_size}, which do not coincide "
        "with that grid, so W4 here measures a real second rounding."
    )
st.plotly_chart(evaluate_charts.grid_heatmap(rows), width="stretch", key="evaluate_heatmap")

table = pd.DataFrame(rows)
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    column_config={
        "perplexity": st.column_config.NumberColumn(format="%.3f"),
        "relative_change": st.column_config.NumberColumn("Δ perplexity", format="percent"),
        "mean_kl": st.column_config.NumberColumn("mean KL", format="%.4f"),
        "max_kl": st.column_config.NumberColumn("max KL", format="%.2f"),
        "top1_agreement": st.column_config.NumberColumn("top-1 agreement", format="percent"),
        "seconds": st.column_config.NumberColumn(format="%.1f"),
    },
)
st.download_button(
    "Download CSV",
    table.to_csv(index=False).encode(),
    file_name="quantization-grid.csv",
    mime="text/csv",
    key="evaluate_csv",
)
st.plotly_chart(evaluate_charts.perplexity_bars(results, reference), width="stretch", key="evaluate_bars")

st.subheader("What the study found, and what our numbers say")
st.caption(
    "Qllm-Eval (Li et al., 2024) evaluated 11 model families: weights and the KV cache tolerate 8 and 4 bits, "
    "W4A4 and 2-bit settings collapse. Each line below is checked against the cells run here."
)
for finding in findings(done | {r.cell: r for r in results}):
    icon = ":material/check_circle:" if finding.agrees else ":material/cancel:"
    body = f"**{finding.claim}** Ours: {finding.ours}."
    (st.success if finding.agrees else st.warning)(
        body + ("" if finding.agrees else " Small models are more fragile than the study's 7B–70B ones."),
        icon=icon,
    )
