"""The Methods lab's drift statistics (llama.cpp's `perplexity --kl-divergence` numbers): the results
table's column help, the drift columns' values, and the per-token KL histogram of a picked run (drawn as
on the Evaluate page)."""

from __future__ import annotations

import math

import streamlit as st

from ui.cache.method_runs import MethodRun
from ui.pages.evaluate import DRIFT_COLUMNS, drift_histogram_ui

COLUMN_HELP = {  # the results table's headers (ui/pages/methods.py RESULTS_COLUMNS) -> what each is
    "bits/weight (linears)": "Of the quantized linear layers, scales and zero points included.",
    "perplexity": "On the held-out evaluation windows.",
    "Δ perplexity": "Against the reference's perplexity on the same windows.",
    "mean KL": DRIFT_COLUMNS["KL mean"][2],
    "KL p99": DRIFT_COLUMNS["KL p99"][2],
    "RMS Δp": DRIFT_COLUMNS["RMS Δp"][2],
    "top-1 agreement": DRIFT_COLUMNS["same top"][2],
    "seconds to quantize": "Wall time of the quantization alone, not the scoring.",
}


def drift_value(run: MethodRun, field: str) -> float:
    """A DriftStats field of the run's comparison (NaN for a run scored without them)."""
    drift = run.comparison.agreement.drift
    return math.nan if drift is None else getattr(drift, field)


def column_config(formats: dict[str, str]) -> dict:
    """The results table's columns: each format (RESULTS_COLUMNS) with its help text."""
    return {
        column: st.column_config.NumberColumn(format=fmt, help=COLUMN_HELP.get(column))
        for column, fmt in formats.items()
    }


def render(all_runs: list[MethodRun]) -> None:
    """The per-token KL histogram of a picked run (nothing for runs scored without per-token values)."""
    named = [(run.label, run.comparison.agreement.drift) for run in all_runs]
    named = [(label, drift) for label, drift in named if drift is not None and drift.per_token is not None]
    if named:
        drift_histogram_ui(named, "methods_drift")
