"""ui.jobs: work in a background thread that a session's reruns find, that Stop stops and that keeps its
result; and the page side (start, the polling fragment, one job per key) under AppTest."""

from __future__ import annotations

import threading

from streamlit.testing.v1 import AppTest

from tests.app.conftest import no_exceptions
from ui.jobs import Job, Stopped


def _steps(gate: threading.Event, steps: int = 5):
    """Work that reports each step and waits at the gate before the next; returns the steps' squares."""

    def work(job: Job) -> list[int]:
        made = []
        for step in range(steps):
            gate.wait(10)
            made.append(step * step)
            job.publish(list(made))
            job.progress((step + 1) / steps, f"step {step + 1} of {steps}")
        return made

    return work


def test_a_job_runs_in_its_own_thread_shows_progress_and_keeps_its_result():
    gate = threading.Event()
    seen = {}

    def work(job: Job):
        seen["thread"] = threading.current_thread()
        return _steps(gate)(job)

    job = Job(work, "count").start()
    assert job.running and job.snapshot().message == "Starting"
    gate.set()
    assert job.wait(10)
    assert seen["thread"] is not threading.current_thread() and seen["thread"].daemon
    snapshot = job.snapshot()
    assert not snapshot.running and snapshot.fraction == 1.0 and snapshot.message == "step 5 of 5"
    assert job.result == [0, 1, 4, 9, 16] and snapshot.partial == job.result and job.error is None


def test_stop_ends_the_work_at_its_next_progress_report_and_keeps_what_it_published():
    gate = threading.Event()
    job = Job(_steps(gate), "count").start()
    job.stop()  # before the first step: the first report raises Stopped
    gate.set()
    assert job.wait(10)
    assert job.snapshot().stopped and job.result is None and job.error is None
    assert job.snapshot().partial == [0]  # published before the report that stopped it


def test_a_failure_in_the_work_is_kept_for_the_page_and_the_thread_ends():
    def work(job: Job):
        raise ValueError("group size 100 does not divide 576")

    job = Job(work, "count").start()
    assert job.wait(10)
    assert isinstance(job.error, ValueError) and not job.running


def test_stopped_is_not_swallowed_by_except_exception():
    assert not issubclass(Stopped, Exception)


def _page():
    """A tiny page: Start runs a counting job; while it runs a fragment shows its progress; once done the
    result is drawn. The gate (an Event in session state that the test opens) holds each step."""
    import threading

    import streamlit as st

    from ui import jobs

    gate = st.session_state.setdefault("gate", threading.Event())

    def work(job):
        for step in range(3):
            while not gate.wait(0.02) and not job.stopped:
                pass
            job.progress((step + 1) / 3, f"step {step + 1} of 3")
        return "counted to 3"

    if st.button("Start", key="start"):
        try:
            jobs.start("count_job", work, "count")
        except jobs.JobRunning as exc:
            st.warning(str(exc))
    job = jobs.current("count_job")
    if job is not None and job.running:
        st.button("Stop", key="stop", on_click=jobs.stop, args=("count_job", 5.0))
        jobs.watch("count_job", lambda job: st.markdown(f"progress: {job.snapshot().message}"))
    elif job is not None:
        jobs.finished("count_job")
        st.markdown(f"result: {job.result}" if job.result else "stopped")
    st.checkbox("Another widget", key="other")


def _texts(app):
    return [markdown.value for markdown in app.markdown]


def test_a_sessions_job_survives_reruns_refuses_a_second_start_and_draws_its_result():
    app = AppTest.from_function(_page, default_timeout=30)
    app.run()
    gate = app.session_state["gate"]
    app.button(key="start").click().run()
    no_exceptions(app)
    job = app.session_state["count_job"]
    assert job.running and "progress: Starting" in _texts(app)
    app.checkbox(key="other").check().run()  # another widget: the page reruns, the job goes on
    app.button(key="start").click().run()  # one job per key: refused while it runs
    no_exceptions(app)
    assert app.session_state["count_job"] is job and job.running
    assert any("A count is still running" in warning.value for warning in app.warning)
    gate.set()
    assert job.wait(10)
    app.run()
    no_exceptions(app)
    assert "result: counted to 3" in _texts(app) and job.collected
    app.button(key="start").click().run()  # a new one once the first has finished
    assert app.session_state["count_job"] is not job
    assert app.session_state["count_job"].wait(10)


def test_the_stop_button_stops_the_sessions_job():
    app = AppTest.from_function(_page, default_timeout=30)
    app.run()
    app.button(key="start").click().run()
    job = app.session_state["count_job"]
    app.button(key="stop").click().run()  # the gate stays shut: Stop ends it at its first report
    no_exceptions(app)
    assert not job.running and "stopped" in _texts(app)
