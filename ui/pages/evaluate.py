"""The Evaluate page's grid run and results: the run in the background (a `ui.jobs` job, so other clicks and
pages leave it going), the grid's table (with its CSV), its charts, llama.cpp's drift statistics
(a table the Methods lab shows too, and a per-token KL histogram) and the study's findings; and the one-line
note on the default model's Q4_1 origin that Evaluate, the Methods lab and Compare show."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st

from engine.evaluation.drift import DriftStats
from engine.evaluation.evalset import DEFAULT_EVAL_SET, corpus_name, describe_windows, is_default
from engine.evaluation.study import MODEL_GRID, CellResult, findings, run_grid
from engine.models.sources import DEFAULT_MODEL_NAME
from ui import clickthrough, jobs
from ui.pages import evaluate_charts

GRID_JOB = "evaluate_grid_job"  # this session's grid run (ui.jobs)
IMATRIX_JOB = "evaluate_imatrix_job"  # its importance-matrix comparison (ui.pages.evaluate_imatrix)
ORIGIN_LINK = "overview"  # the Overview page, which gives the model's provenance in full


def origin_note(loaded, consequence: str) -> None:
    """One short line on the default model's Q4_1 origin and what it means on this page, linking to the
    Overview's full account; nothing for other models."""
    if loaded.source.kind == "default":
        st.caption(
            f":material/history_edu: {DEFAULT_MODEL_NAME} was distributed as llama.cpp Q4_1: {consequence} "
            f"[Why]({ORIGIN_LINK})"
        )


def windows_caption(windows: int, window: int, corpus: str, other_page: str) -> str:
    """Which windows were scored, and whether they are the default set `other_page` scores too."""
    default = DEFAULT_EVAL_SET
    same = (
        f"the default evaluation set, the one {other_page} scores too, so the reference perplexities match"
        if is_default(windows, window, corpus)
        else f"not the default set ({default.windows} × {default.window} tokens of "
        f"{corpus_name(default.corpus)}), so "
        f"{other_page}'s reference perplexity differs"
    )
    return (
        f"Scored on {describe_windows(windows, window, corpus)}: {same}. Perplexity depends on the windows."
    )


def score_cells(job: jobs.Job, model, token_ids, cells: list, group_size: int, done: dict) -> dict:
    """The grid job's work, in its own thread (no Streamlit): score the `cells` missing from `done`, the
    shared cache, where each cell lands as it finishes, so Stop or a failing cell keeps the finished ones.
    Publishes the finished cells as (name, CellResult) pairs."""

    def progress(fraction: float, message: str) -> None:
        job.publish([(c.name, done[c.name]) for c in cells if c.name in done])
        job.progress(fraction, message)

    return run_grid(model, token_ids, cells, done=done, group_size=group_size, progress=progress)


def start_job(key: str, work: Callable[[jobs.Job], object], label: str) -> None:
    """Start the page's job under `key`; refused, in words, while it or the page's other job runs. One at
    a time: the importance matrix is collected with hooks on the shared model, which a grid run would feed."""
    try:
        for other in (GRID_JOB, IMATRIX_JOB):
            job = jobs.current(other)
            if other != key and job is not None and job.running:
                raise jobs.JobRunning(
                    f"A {job.label} is still running: wait for it to finish or press Stop, then try again."
                )
        jobs.start(key, work, label)
    except jobs.JobRunning as exc:
        st.warning(str(exc), icon=":material/hourglass_top:")


def start_grid(model, cells: list, token_ids, group_size: int, done: dict) -> None:
    """Score `cells` in the background; refused, in words, while one of the page's jobs still runs."""
    start_job(GRID_JOB, lambda job: score_cells(job, model, token_ids, cells, group_size, done), "grid run")


def draw_grid_job(job: jobs.Job) -> None:
    """A running grid, drawn from a fragment (`ui.jobs.watch`): progress and the cells finished so far."""
    snapshot = job.snapshot()
    st.progress(snapshot.fraction, text="Stopping…" if snapshot.stopped else snapshot.message)
    if snapshot.partial:
        changes = (
            f"{name} {evaluate_charts.change_label(r.relative_change)}" for name, r in snapshot.partial
        )
        st.caption("Finished so far (Δ perplexity): " + ", ".join(changes) + ".")


def grid_running_ui() -> bool:
    """While this session's grid runs: its progress and a Stop button (True); nothing otherwise."""
    job = jobs.current(GRID_JOB)
    if job is None or not job.running:
        return False
    st.button(
        "Stop",
        icon=":material/stop:",
        key="evaluate_stop",
        on_click=jobs.stop,
        args=(GRID_JOB,),
        help="Stop the grid run; the cells finished so far are kept.",
    )
    jobs.watch(GRID_JOB, draw_grid_job)
    return True


def table_rows(results: list[CellResult]) -> list[dict]:
    """The reference row, then one per cell."""
    first = results[0]
    reference = dict(
        cell="W16 / KV16",
        axis="reference",
        perplexity=first.reference_perplexity,
        relative_change=0.0,
        mean_kl=0.0,
        max_kl=0.0,
        top1_agreement=1.0,
        tokens=first.tokens,
        seconds=0.0,
        bits_per_weight=None,
    )
    fields = (
        "axis",
        "perplexity",
        "relative_change",
        "mean_kl",
        "max_kl",
        "top1_agreement",
        "tokens",
        "seconds",
        "bits_per_weight",
    )
    return [reference] + [dict(cell=r.cell, **{f: getattr(r, f) for f in fields}) for r in results]


def compare_on_click(clicked, picked, rows: list[dict], offered: Callable[[], list[str]]) -> None:
    """A click on a heatmap cell or a table row opens Compare with that variant beside the reference;
    `offered()`: the Compare page's variants."""
    chosen = picked.selection.rows if picked is not None else []
    points = [{"customdata": data} for data in clickthrough.clicked_customdata(clicked)]
    points += [{"customdata": [clickthrough.VARIANT_TAG, rows[index]["cell"]]} for index in chosen]
    clickthrough.open_compare_on_click({"selection": {"points": points}}, "evaluate:grid", offered)


def results_ui(rows: list[dict], results: list[CellResult], offered: Callable[[], list[str]]) -> None:
    """The grid's heatmap, table and charts; a click on a variant opens it on Compare (`offered()`: the
    variants Compare offers)."""
    clicked = clickthrough.chart(st, evaluate_charts.grid_heatmap(rows), "evaluate_heatmap")
    st.caption(evaluate_charts.band_caption() + " Click a cell or a row to compare that variant's text.")
    table = pd.DataFrame(rows)
    picked = st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        key="evaluate_table",
        on_select="rerun",
        selection_mode="single-row",
        column_config={
            "perplexity": st.column_config.NumberColumn(format="%.3f"),
            "relative_change": st.column_config.NumberColumn("Δ perplexity", format="percent"),
            "mean_kl": st.column_config.NumberColumn("mean KL", format="%.4f"),
            "max_kl": st.column_config.NumberColumn("max KL", format="%.2f"),
            "top1_agreement": st.column_config.NumberColumn("top-1 agreement", format="percent"),
            "seconds": st.column_config.NumberColumn(format="%.1f"),
            "bits_per_weight": st.column_config.NumberColumn(
                "bits/weight",
                format="%.3f",
                help="Of the quantized linear layers, scales included; empty: "
                "the weights are kept as they are (KV-cache cells).",
            ),
        },
    )
    st.download_button(
        "Download CSV",
        table.to_csv(index=False).encode(),
        file_name="quantization-grid.csv",
        mime="text/csv",
        key="evaluate_csv",
    )
    compare_on_click(clicked, picked, rows, offered)
    reference = rows[0]["perplexity"]
    st.plotly_chart(evaluate_charts.perplexity_bars(results, reference), width="stretch", key="evaluate_bars")
    if len({r.bits_per_weight for r in results if r.bits_per_weight is not None}) > 1:
        st.plotly_chart(
            evaluate_charts.quality_vs_bits(results), width="stretch", key="evaluate_quality_bits"
        )
        st.caption(
            "Down and to the left is better: less KL divergence to the reference for fewer bits per weight. "
            "Cells that also quantize activations (W…A…) pay for them in quality, not in weight bits."
        )


LLAMA = "llama.cpp's `perplexity --kl-divergence`"
DRIFT_COLUMNS = {  # header -> (DriftStats field, format, help in llama.cpp's terms)
    "KL mean": ("kl_mean", "%.4f", f"Mean KLD in {LLAMA}: KL(reference ‖ this) of the next-token "
                "distributions, nats, averaged over positions."),
    "KL med": ("kl_median", "%.4f", "Median KLD: half of the positions diverge less than this."),
    "KL p99": ("kl_p99", "%.3f", "99.0% KLD: 1 position in 100 diverges more than this."),
    "KL p99.9": ("kl_p999", "%.3f", "99.9% KLD: 1 position in 1,000 diverges more than this."),
    "KL max": ("kl_max", "%.2f", "Maximum KLD: the worst single position."),
    "Δp mean": ("p_diff_mean", "percent", "Mean Δp: how much more (or, negative, less) likely this model "
                "finds the actual next token than the reference does, averaged over positions."),
    "RMS Δp": ("p_diff_rms", "percent", "RMS Δp: root mean square of that change in probability."),
    "Δp p1": ("p_diff_p1", "percent", "1.0% Δp: 1 position in 100 loses more probability than this."),
    "Δp p99": ("p_diff_p99", "percent", "99.0% Δp: 1 position in 100 gains more probability than this."),
    "same top": ("same_top", "percent", "Same top p: share of positions where both models' most likely "
                 "token is the same (top-1 agreement)."),
}  # fmt: skip


def drift_table(named: list[tuple[str, DriftStats]], first: str = "cell") -> pd.DataFrame:
    """One row per (name, statistics), llama.cpp's drift numbers as DRIFT_COLUMNS names them."""
    return pd.DataFrame(
        [{first: name, **{h: getattr(d, f) for h, (f, _, _) in DRIFT_COLUMNS.items()}} for name, d in named]
    )


def drift_column_config() -> dict:
    columns = DRIFT_COLUMNS.items()
    return {h: st.column_config.NumberColumn(h, format=fmt, help=text) for h, (_, fmt, text) in columns}


def drift_histogram_ui(named: list[tuple[str, DriftStats]], key: str) -> None:
    """A picker and the picked one's per-token KL histogram."""
    picked = st.selectbox("KL histogram of", [name for name, _ in named], key=f"{key}_pick")
    drift = dict(named)[picked]
    st.plotly_chart(evaluate_charts.kl_histogram(drift, picked), width="stretch", key=f"{key}_histogram")


def drift_ui(results: list[CellResult]) -> None:
    """llama.cpp's KL-divergence statistics for every scored cell, and one cell's per-token KL histogram."""
    named = [(r.cell, r.drift) for r in results if r.drift is not None]
    if not named:
        return
    with st.expander("Drift statistics (as llama.cpp's KL-divergence run reports them)"):
        st.dataframe(
            drift_table(named), hide_index=True, width="stretch", column_config=drift_column_config()
        )
        st.caption(
            f"Defined as {LLAMA} prints them, over every scored position: KL in nats, Δp = the candidate's "
            "probability of the actual next token minus the reference's. Hover a header for its meaning."
        )
        drift_histogram_ui(named, "evaluate_drift")


def findings_ui(results: dict[str, CellResult]) -> None:
    st.subheader("What the study found, and what our numbers say")
    st.caption(
        "Qllm-Eval (Li et al., 2024) evaluated 11 model families: weights and the KV cache tolerate 8 and 4 "
        "bits, W4A4 and 2-bit settings collapse. Each line below is checked against the cells run here; "
        f"4-bit weights are judged on the best 4-bit cell run (W4 or {MODEL_GRID}), and both are shown."
    )
    for finding in findings(results):
        icon = ":material/check_circle:" if finding.agrees else ":material/cancel:"
        body = f"**{finding.claim}** Ours: {finding.ours}."
        (st.success if finding.agrees else st.warning)(
            body + ("" if finding.agrees else " Small models are more fragile than the study's 7B–70B ones."),
            icon=icon,
        )
