"""The Evaluate page's importance-matrix section: KL to the reference with plain round-to-nearest and with
llama.cpp's importance-weighted rounding, format by format (engine.evaluation.imatrix_gain).

The matrix is collected once per model and calibration size on the calibration half of the default text
(engine.methods.imatrix) and kept in this session, with the reference cache of the page's held-out windows
and the finished rows (per model, windows and calibration), so a rerun or a Stop keeps what was measured.
The measuring runs in the background (a `ui.jobs` job), so other clicks and pages leave it going."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from torch import Tensor

from engine.evaluation.evalset import DEFAULT_EVAL_SET, corpus_name
from engine.evaluation.imatrix_gain import GainRow, check_gain, measure_gain
from engine.evaluation.perplexity import ReferenceCache
from engine.methods.imatrix import ImportanceMatrix, collect_importance
from engine.models.data import WindowSpec, load_text, text_fingerprint, token_windows
from engine.quant.gguf import GGUF_TYPES
from engine.quant.weight_formats import parse_format
from ui import charts, jobs
from ui.cache import variants
from ui.errors import show_error
from ui.pages import evaluate as evaluate_view

TITLE = "Importance-weighted rounding (imatrix)"
KEY = "evaluate_imatrix_session"  # session key: ImatrixSession
REQUESTED = "evaluate_imatrix_requested"  # set by the button's callback
JOB_KEY = evaluate_view.IMATRIX_JOB  # this session's measuring in the background (ui.jobs)
OURS = ("int4 g32", "int4 g64", "int3 g32", "int2 g32", "nf4 g64", "mxfp4", "nvfp4")
OFFERED = (*GGUF_TYPES, *OURS)
DEFAULTS = ("Q4_0", "int4 g32", "mxfp4", "nvfp4")  # all fit SmolLM2's 576-wide rows; ~2 min on two cores
CALIBRATION_WINDOWS = (1, 2, 4, 8)  # × DEFAULT_EVAL_SET.window tokens
PLAIN, WEIGHTED = "round-to-nearest", "importance-weighted"
PLAIN_COLOR, WEIGHTED_COLOR = "#9aa5b1", "#1f77b4"


@dataclass
class ImatrixSession:
    """This session's matrices, reference caches and finished rows for one loaded model."""

    model: tuple  # (the model selection, id of the loaded model): a reloaded model starts again
    matrices: dict[int, ImportanceMatrix] = field(default_factory=dict)  # calibration windows -> matrix
    caches: dict[tuple, ReferenceCache] = field(default_factory=dict)  # held-out windows -> cache
    rows: dict[tuple, dict[str, GainRow]] = field(default_factory=dict)  # (windows, calibration) -> rows
    refused: dict[tuple, dict[str, str]] = field(default_factory=dict)  # same key -> {format: reason}


def session(loaded) -> ImatrixSession:
    model = (variants.model_key(), id(loaded.model))
    current = st.session_state.get(KEY)
    if current is None or current.model != model:
        current = st.session_state[KEY] = ImatrixSession(model)
    return current


def settings_ui() -> tuple[list[str], int]:
    """(format labels, calibration windows) and the Run button."""
    cols = st.columns([4, 2, 1.4], vertical_alignment="bottom")
    formats = cols[0].multiselect(
        "Formats",
        OFFERED,
        default=list(DEFAULTS),
        key="evaluate_imatrix_formats",
        help="llama.cpp's block types and our formats. llama.cpp's weighted searches are the slow part: "
        "Q4_0 takes about two minutes on two CPU cores, our formats under a minute. k-quants (Q2_K … Q6_K) "
        "need rows that are multiples of 256 values.",
    )
    windows = cols[1].select_slider(
        f"Calibration windows (× {DEFAULT_EVAL_SET.window} tokens)",
        CALIBRATION_WINDOWS,
        4,
        key="evaluate_imatrix_windows",
    )
    cols[2].button(
        "Compare rounding",
        key="evaluate_imatrix_run",
        width="stretch",
        on_click=lambda: st.session_state.update({REQUESTED: True}),
    )
    return formats, int(windows)


def matrix_for(loaded, store: ImatrixSession, windows: int, progress) -> ImportanceMatrix:
    """The importance matrix on `windows` calibration windows of the default text, collected once."""
    if windows not in store.matrices:
        spec = WindowSpec(DEFAULT_EVAL_SET.window, windows, split="calibration")
        calib = token_windows(loaded.tokenizer, load_text(DEFAULT_EVAL_SET.corpus), spec)
        store.matrices[windows] = collect_importance(
            loaded.model, calib, lambda f, m: progress(f, f"Importance matrix: {m}")
        )
    return store.matrices[windows]


def measure(job: jobs.Job, loaded, store, key: tuple, formats: list[str], windows: int, token_ids: Tensor):
    """The job's work, in its own thread (no Streamlit): collect the matrix if needed, refuse the formats
    the model cannot take (saying why), measure the rest; each finished format is kept in `store` at once
    and published as (format, gain) pairs, so Stop keeps them."""
    done, refused = store.rows.setdefault(key, {}), store.refused.setdefault(key, {})
    matrix = matrix_for(loaded, store, windows, job.progress)
    todo = []
    for label in formats:
        fmt = parse_format(label)
        try:
            check_gain(loaded.model, fmt, matrix)
            todo.append(fmt)
            refused.pop(label, None)
        except ValueError as exc:
            refused[label] = str(exc)

    def progress(fraction: float, message: str) -> None:
        job.publish([(label, done[label].gain) for label in formats if label in done])
        job.progress(fraction, message)

    cache = store.caches.setdefault(key[0], ReferenceCache())
    measure_gain(
        loaded.model, todo, matrix, token_ids, cache, progress, should_stop=lambda: job.stopped, done=done
    )


def draw_running(job: jobs.Job) -> None:
    """The running comparison, from a fragment (`ui.jobs.watch`): progress and the formats done so far."""
    snapshot = job.snapshot()
    st.progress(snapshot.fraction, text="Stopping…" if snapshot.stopped else snapshot.message)
    if snapshot.partial:
        gains = ", ".join(f"{label} {gain:.0%}" for label, gain in snapshot.partial)
        st.caption(f"Finished so far (gain): {gains}.")


def run_ui(loaded, store, key: tuple, formats: list[str], windows: int, token_ids: Tensor) -> bool:
    """Start the comparison once the button was pressed (refused, in words, while one runs); while it
    runs, its progress and Stop (True); after it, why it failed, if it did."""
    if st.session_state.pop(REQUESTED, False) and formats:
        evaluate_view.start_job(
            JOB_KEY,
            lambda job: measure(job, loaded, store, key, formats, windows, token_ids),
            "rounding comparison",
        )
    job = jobs.current(JOB_KEY)
    if job is not None and job.running:
        st.button(
            "Stop",
            icon=":material/stop:",
            key="evaluate_imatrix_stop",
            on_click=jobs.stop,
            args=(JOB_KEY,),
            help="Stop the comparison; the formats finished so far are kept.",
        )
        jobs.watch(JOB_KEY, draw_running)
        return True
    if (finished := jobs.finished(JOB_KEY)) is not None and finished.error is not None:
        show_error(finished.error, prefix="The comparison stopped: ")
    return False


def table(rows: list[GainRow]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "format": r.format,
                "bits/weight": r.bits_per_weight,
                "KL without": r.without.mean_kl,
                "KL with": r.with_importance.mean_kl,
                "gain": r.gain,
                "KL p99 without": r.without.kl_p99,
                "KL p99 with": r.with_importance.kl_p99,
                "perplexity without": r.without.perplexity,
                "perplexity with": r.with_importance.perplexity,
                "top-1 without": r.without.top1_agreement,
                "top-1 with": r.with_importance.top1_agreement,
                "quantize s without": r.without.quantize_seconds,
                "quantize s with": r.with_importance.quantize_seconds,
            }
            for r in rows
        ]
    )


def column_config() -> dict:
    number = st.column_config.NumberColumn
    percent = {name: number(format="percent") for name in ("top-1 without", "top-1 with")}
    return {
        "bits/weight": number(format="%.3f", help="Of the quantized layers, scales included."),
        **{name: number(format="%.4f") for name in ("KL without", "KL with")},
        "gain": number(format="percent", help="Share of the KL that importance-weighted rounding removes."),
        **{name: number(format="%.3f") for name in ("KL p99 without", "KL p99 with")},
        **{name: number(format="%.2f") for name in ("perplexity without", "perplexity with")},
        **percent,
        **{name: number(format="%.1f") for name in ("quantize s without", "quantize s with")},
    }


def kl_bars(rows: list[GainRow]) -> go.Figure:
    """Mean KL per format, round-to-nearest beside importance-weighted; log y when they span over 10×."""
    names = [r.format for r in rows]
    figure = go.Figure()
    for name, color, values in (
        (PLAIN, PLAIN_COLOR, [r.without.mean_kl for r in rows]),
        (WEIGHTED, WEIGHTED_COLOR, [r.with_importance.mean_kl for r in rows]),
    ):
        figure.add_bar(x=names, y=values, name=name, marker_color=color)
    values = [v for r in rows for v in (r.without.mean_kl, r.with_importance.mean_kl) if v > 0]
    log = bool(values) and max(values) > 10 * min(values)
    if log:
        figure.update_yaxes(type="log")
    figure.update_layout(barmode="group")
    y = "mean KL to the reference (nats" + (", log scale)" if log else ")")
    return charts.layout(figure, "Mean KL without and with the importance matrix", "format", y, bargap=None)


def results_ui(rows: list[GainRow], refused: dict[str, str]) -> None:
    for label, reason in refused.items():
        st.info(f"**{label}** was not run: {reason}", icon=":material/block:")
    if not rows:
        return
    st.dataframe(table(rows), hide_index=True, width="stretch", column_config=column_config())
    st.plotly_chart(kl_bars(rows), width="stretch", key="evaluate_imatrix_bars")


def section(loaded, text: str, token_ids: Tensor) -> None:
    """The whole section: settings, the run on request, and the kept results for these settings."""
    st.subheader(TITLE)
    st.caption(
        "llama.cpp's importance matrix is the mean squared input of every channel of every layer on "
        "calibration text; weighting the rounding by it spends the precision where the inputs are large. "
        f"Here it comes from the calibration half of {corpus_name(DEFAULT_EVAL_SET.corpus)}; every layer "
        "but the output head is quantized in each format, without and with it, and scored on the windows "
        "above. Gain: the share of the KL it removes."
    )
    formats, windows = settings_ui()
    store = session(loaded)
    key = ((text_fingerprint(text), tuple(token_ids.shape)), windows)
    running = run_ui(loaded, store, key, formats, windows, token_ids)
    if not formats:
        st.info("Pick at least one format to compare.", icon=":material/tune:")
        return
    done, refused = store.rows.get(key, {}), store.refused.get(key, {})
    rows = [done[label] for label in formats if label in done]
    missing = [label for label in formats if label not in done and label not in refused]
    if missing and not running:
        st.info(
            f"Press **Compare rounding** to measure {', '.join(missing)}: each format is quantized and "
            "scored twice, under a minute (ours) to about two (llama.cpp's types) per format on two CPU cores.",
            icon=":material/play_arrow:",
        )
    results_ui(rows, {label: refused[label] for label in formats if label in refused})
