"""The Methods lab's Run: quantize and score each picked method in turn, in a background job (`ui.jobs`)
that other clicks, and other pages, leave running.

The page reads its widgets and the calibration and evaluation text in the script thread, then starts the
job with plain values (`LabRun`). The work (`lab_work`, in the job's thread, no Streamlit) puts each
finished method's `MethodRun` into the session's runs (ui/cache/method_runs.py: the same dict Compare,
Speed and the lab's export read) under the job's lock, so the results table grows as methods finish. Stop
ends the run at the current method's next progress report; the methods that finished are kept.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import streamlit as st

from engine.evaluation.evalset import DEFAULT_EVAL_SET
from engine.evaluation.perplexity import ReferenceCache, evaluate_against_reference
from engine.methods import Calibration, method_info, quantize_model
from engine.models.data import DataError, WindowSpec, load_text, token_windows
from ui import jobs, state
from ui.cache import method_runs, session_models
from ui.cache.method_runs import MethodRun
from ui.errors import show_error
from ui.jobs import Job
from ui.pages.methods import NEEDS_CALIBRATION, label_of
from ui.widgets import NumberBoxes

JOB_KEY = "methods_job"  # the background job running the picked methods (ui.jobs)
LAB_KEY = "methods_lab_run"  # the LabRun that job works through
REQUESTED = "methods_run_requested"  # set by the Run button's callback, so no rerun can lose the click
STOP_HELP = "Stops after the current step; finished methods are kept."


@dataclass(frozen=True)
class TextSettings:
    calib_windows: int  # calibration windows
    calib_tokens: int  # tokens per calibration window
    eval_windows: int  # evaluation windows of DEFAULT_EVAL_SET.window tokens, from DEFAULT_EVAL_SET.corpus


@dataclass
class LabRun:
    """One Run press: what it works through and what it has done so far (changed under the job's lock)."""

    todo: dict[str, object]  # {method name: config}, in the order picked
    into: dict[str, MethodRun]  # the session's runs (ui.cache.method_runs.runs()): finished runs land here
    session: str  # the model store's session id, read in the script thread
    model: object  # the model selection (ui.state.selection()) the runs are built from
    done: list[str] = field(default_factory=list)  # labels of the methods finished
    failed: list[tuple[str, BaseException]] = field(default_factory=list)  # (method name, what it raised)
    discard: bool = False  # another model was loaded meanwhile: keep nothing more


def to_run(configs: dict[str, object], done: dict[str, MethodRun]) -> dict[str, object]:
    """The configs with no run yet, or whose run's model was freed for room (run again, it is kept again)."""
    todo = {}
    for method, config in configs.items():
        run = done.get(label_of(config))
        if run is None or (run.kept and run.missing is not None):
            todo[method] = config
    return todo


def calibration_for(config, calibration, evaluation):
    """What the lab feeds a method, from what the registry says it does with calibration text."""
    kind = method_info(config).calibration
    if kind is Calibration.TRAIN_AND_HELD_OUT:  # QAT: trains on calibration, scores evaluation windows
        return (calibration, evaluation)
    if kind in (Calibration.REQUIRED, Calibration.OPTIONAL_REPORT, Calibration.OPTIONAL_IMPORTANCE):
        return calibration
    return None  # none, or only an output-error pass (bitsandbytes) the lab skips to keep runs short


def run_method(
    config, reference, calibration, evaluation, reference_cache: ReferenceCache, progress, session=None
) -> MethodRun:
    """Quantize a copy with `config` (progress 0-0.8), then score it against the reference (0.8-1); the
    model is kept in the store for `session` (default: this browser session's)."""
    start = time.perf_counter()
    quantized = quantize_model(
        reference,
        config,
        calib=calibration_for(config, calibration, evaluation),
        progress=lambda f, m: progress(0.8 * f, m),
    )
    seconds = time.perf_counter() - start
    comparison = evaluate_against_reference(
        reference,
        quantized.model,
        evaluation,
        reference_cache,
        progress=lambda f, m: progress(0.8 + 0.2 * f, m),
    )
    label, name = label_of(config), method_info(config).name
    return MethodRun.keep(label, name, quantized, comparison, seconds, session=session)


def read_text(tokenizer, text: TextSettings) -> tuple[list, list]:
    """(calibration, evaluation) windows: calibration from the first half of the default evaluation text,
    scoring on its held-out second half. Raises DataError when the text cannot be read."""
    corpus = load_text(DEFAULT_EVAL_SET.corpus)
    spec = WindowSpec(text.calib_tokens, text.calib_windows, split="calibration")
    calibration = token_windows(tokenizer, corpus, spec)
    evaluation = token_windows(
        tokenizer, corpus, WindowSpec(DEFAULT_EVAL_SET.window, text.eval_windows, split="evaluation")
    )
    return calibration, evaluation


def lab_work(job: Job, lab: LabRun, reference, calibration, evaluation) -> LabRun:
    """The job's work (its own thread, no Streamlit): each method in turn; one failing leaves the others'
    results. Stop raises `Stopped` from the next progress report (ui.jobs), ending the run there."""
    reference_cache = ReferenceCache()
    count = len(lab.todo)
    for index, config in enumerate(lab.todo.values()):
        if job.stopped:
            break
        name = method_info(config).name

        def progress(fraction: float, message: str, index=index, name=name) -> None:
            job.progress((index + fraction) / count, f"{name} ({index + 1}/{count}): {message}")

        progress(0.0, "starting")
        try:
            run = run_method(
                config, reference, calibration, evaluation, reference_cache, progress, lab.session
            )
        except Exception as exc:  # noqa: BLE001  (fails this method only; Stopped is a BaseException)
            with job.lock:
                lab.failed.append((name, exc))
            continue
        with job.lock:
            if lab.discard:
                run.forget()
            else:
                lab.into[run.label] = run
                lab.done.append(run.label)
    return lab


def start(todo: dict[str, object], loaded, text: TextSettings, into: dict[str, MethodRun]) -> None:
    """Start the run in the background; refused, in words, while one still runs. Stops the page (after
    saying why) when the text to calibrate and evaluate on cannot be read."""
    try:
        calibration, evaluation = read_text(loaded.tokenizer, text)
    except DataError as exc:
        show_error(exc)
        st.stop()
    lab = LabRun(dict(todo), into, session_models.session_id(), state.selection())
    reference = loaded.model
    try:
        jobs.start(JOB_KEY, lambda job: lab_work(job, lab, reference, calibration, evaluation), "methods run")
    except jobs.JobRunning as exc:
        st.warning(str(exc), icon=":material/hourglass_top:")
    else:
        st.session_state[LAB_KEY] = lab


def running_lab() -> tuple[Job, LabRun] | None:
    job, lab = jobs.current(JOB_KEY), st.session_state.get(LAB_KEY)
    return (job, lab) if job is not None and job.running and isinstance(lab, LabRun) else None


def guard_model() -> None:
    """Another model was loaded while a run goes on: stop it, and keep none of its models (the lab's runs
    belong to the model loaded now). Call before `method_runs.runs()`."""
    running = running_lab()
    if running is not None and running[1].model != state.selection():
        job, lab = running
        with job.lock:
            lab.discard = True
        job.stop()


def _failures(failed: list[tuple[str, BaseException]]) -> None:
    for name, exc in failed:
        show_error(exc, prefix=f"{name} failed: ")


def draw_running(job: Job, lab: LabRun, shown: int) -> None:
    """The running job, from a fragment (`ui.jobs.watch`): its progress; once another method has ended,
    the whole page reruns so that the table and charts show it."""
    snapshot = job.snapshot()
    with job.lock:
        ended = len(lab.done) + len(lab.failed)
    if ended != shown:
        st.rerun()
    st.progress(snapshot.fraction, text="Stopping…" if snapshot.stopped else snapshot.message)
    st.caption(f"{ended} of {len(lab.todo)} methods done; the results below add each one as it finishes.")


def collect() -> None:
    """The job ended: say what failed, or that it was stopped (once, on the page run that finds it)."""
    job, lab = jobs.finished(JOB_KEY), st.session_state.get(LAB_KEY)
    if job is None or not isinstance(lab, LabRun):
        return
    if job.error is not None:
        show_error(job.error)
    _failures(lab.failed)
    if job.stopped and not lab.discard:
        st.info(
            f"The run was stopped: {len(lab.done)} of {len(lab.todo)} methods finished, and are kept.",
            icon=":material/stop_circle:",
        )


def run_controls(
    runs: dict[str, MethodRun], configs: dict[str, object], loaded, text: TextSettings, number: NumberBoxes
) -> dict[str, MethodRun]:
    """Run, Clear and (while a run goes on) Stop; starts the configs not run yet (or whose model was freed)
    when Run was pressed, unless a number is out of range: then each is said under the buttons and nothing
    runs. Returns the runs to draw (a copy, taken under the running job's lock)."""
    buttons = st.columns([1, 1, 1, 3])
    buttons[0].button(
        "Run", type="primary", key="methods_run", on_click=lambda: st.session_state.update({REQUESTED: True})
    )
    if number.problems:  # a Run click with a number out of range runs nothing, now or later
        st.session_state.pop(REQUESTED, None)
    elif st.session_state.pop(REQUESTED, False) and (todo := to_run(configs, runs)):
        start(todo, loaded, text, runs)
    running = running_lab()
    if buttons[1].button("Clear results", key="methods_clear", disabled=running is not None) and not running:
        method_runs.clear_runs(runs)
    number.show()  # each number out of range, under the buttons
    todo = to_run(configs, runs)
    if running is not None:
        job, lab = running
        buttons[2].button("Stop", key="methods_stop", on_click=jobs.stop, args=(JOB_KEY,), help=STOP_HELP)
        with job.lock:
            failed, shown = list(lab.failed), len(lab.done) + len(lab.failed)
        _failures(failed)
        jobs.watch(JOB_KEY, lambda job: draw_running(job, lab, shown))
    else:
        collect()
        if todo and not number.problems:
            calib_note = " (with calibration)" if set(todo) & NEEDS_CALIBRATION else ""
            st.info(
                f"Press **Run** to quantize with {', '.join(todo)}{calib_note}.", icon=":material/play_arrow:"
            )
    with running[0].lock if running is not None else nullcontext():
        return dict(runs)
