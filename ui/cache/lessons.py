"""Cached engine calls for the Learn page (DESIGN rule 3).

Cheap lessons use `st.cache_data`. The QAT demo reports progress, so it runs outside any `st.cache_*`
function (Streamlit would replay its progress bar) and its reports live in a small process-wide LRU,
the pattern `ui.cache.load` uses for models. Activations are captured from the model chosen in the
sidebar; when that fails the page falls back to synthetic ones and says why.
"""

from __future__ import annotations

import streamlit as st

from engine import lessons
from engine.lessons.formats import FormatsLesson, formats_lesson
from engine.lessons.outliers import OutliersLesson, lesson_window, outliers_lesson
from engine.lessons.qat_spiral import QatReport, Staircase, qat_step_staircase, run_qat_demo
from engine.models.sources import ModelSource
from ui import state
from ui.cache.models import load
from ui.cache.registry import LruRegistry
from ui.cache.tensors import WeightKey, tensor
from ui.progress import progress_bar

QAT_REPORTS_KEPT = 16
OUTLIER_LESSONS_KEPT = 4  # one per model (a few hundred kB each)


@st.cache_data(show_spinner=False, max_entries=32)
def mapping(distribution: str, block: int) -> lessons.MappingLesson:
    return lessons.mapping_lesson(distribution, block)


@st.cache_data(show_spinner=False, max_entries=32)
def symmetry(data: str, bits: int) -> lessons.SymmetryLesson:
    return lessons.symmetry_lesson(data, bits)


@st.cache_data(show_spinner=False, max_entries=64)
def granularity(bits: int, outliers: int, outlier_scale: float) -> lessons.GranularityLesson:
    return lessons.granularity_lesson(bits, outliers, outlier_scale)


@st.cache_data(show_spinner=False, max_entries=8)
def projection_names(source: ModelSource, device: str, dtype: str) -> list[str]:
    return lessons.mlp_output_projections(load(source, device, dtype).model)


@st.cache_data(show_spinner="Running the model on the calibration and held-out texts", max_entries=16)
def _captured(source: ModelSource, device: str, dtype: str, module: str) -> tuple[list, list]:
    loaded = load(source, device, dtype)
    calibration = lessons.capture_inputs(loaded.model, loaded.tokenizer, lessons.CALIBRATION_TEXTS, module)
    held_out = lessons.capture_inputs(loaded.model, loaded.tokenizer, lessons.HELD_OUT_TEXTS, module)
    return calibration, held_out


def real_projection_names() -> list[str]:
    """MLP output projections of the sidebar's model; raises ModelSourceError / ValueError with a reason."""
    return projection_names(*state.selection())


@st.cache_data(show_spinner=False, max_entries=32)
def _calibration(
    source: ModelSource | None, device: str, dtype: str, module: str, bits: int
) -> lessons.CalibrationLesson:
    if source is None:
        batches = lessons.synthetic_activations()
        return lessons.calibration_lesson(
            batches[:4], batches[4:], bits, "synthetic heavy-tailed activations"
        )
    calibration, held_out = _captured(source, device, dtype, module)
    return lessons.calibration_lesson(calibration, held_out, bits, f"input of {module}")


def calibration(module: str | None, bits: int) -> lessons.CalibrationLesson:
    """Real activations of `module` in the sidebar's model, or synthetic ones when `module` is None."""
    if module is None:
        return _calibration(None, "cpu", "float32", "", bits)
    return _calibration(*state.selection(), module, bits)


@st.cache_data(show_spinner=False, max_entries=8)
def staircase(bits: int) -> Staircase:
    return qat_step_staircase(bits)


@st.cache_resource
def _qat_reports() -> LruRegistry:
    return LruRegistry(QAT_REPORTS_KEPT)


def qat_report(bits: int, steps: int, seed: int) -> QatReport | None:
    """The QAT demo's report if it was already run with these settings (in any session), else None."""
    key = (bits, steps, seed)
    registry = _qat_reports()
    return registry.get(key)


def run_qat(bits: int, steps: int, seed: int, where=st) -> QatReport:
    """Run (or fetch) the QAT demo with a live progress bar."""
    update, clear = progress_bar(where)
    try:
        return _qat_reports().get_or_create(
            (bits, steps, seed), lambda: run_qat_demo(bits, steps, seed, progress=update)
        )
    finally:
        clear()


def speed(device: str, in_features: int, out_features: int, tokens: int) -> lessons.SpeedLesson:
    return lessons.speed_lesson(device, in_features, out_features, tokens)


@st.cache_data(show_spinner="Measuring each format on this weight", max_entries=8)
def formats(key: WeightKey) -> FormatsLesson:
    """The "Today's formats" lesson on one real weight (tensors.WeightKey)."""
    return formats_lesson(tensor(key), key.name)


@st.cache_resource
def _outlier_lessons() -> LruRegistry:
    return LruRegistry(OUTLIER_LESSONS_KEPT)


def outliers(where=st) -> OutliersLesson:
    """The "Outliers and rotation" lesson on the sidebar's model, computed once per model (in any session)
    with a live progress bar; ModelSourceError / ValueError with the reason."""
    key = state.selection()
    registry = _outlier_lessons()
    lesson = registry.get(key)
    if lesson is not None:
        return lesson
    loaded = load(*key)
    update, clear = progress_bar(where)
    try:
        return registry.get_or_create(
            key, lambda: outliers_lesson(loaded.model, lesson_window(loaded.tokenizer), progress=update)
        )
    finally:
        clear()
