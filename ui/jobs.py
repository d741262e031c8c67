"""Background jobs for one browser session: long work that survives the user's other clicks.

Streamlit reruns the whole page script on every click and stops the run that was going, so work done in
the script thread dies with it. A `Job` runs its work in a daemon thread instead and keeps what it makes
(progress, partial output, the result) in a plain object guarded by one lock; the job lives in
`st.session_state[key]`, so every rerun of the page, and a return from another page, finds it. `watch`
draws it from a fragment that reruns every half second on its own; when the job ends, the fragment reruns
the page once so the page draws the finished result the usual way.

The work must not call Streamlit (it runs outside any script run): it reports through `Job.progress`
and `Job.publish`, writes shared objects under `Job.lock`, and checks `Job.stopped` (or lets
`Job.progress` raise `Stopped`) so that Stop still stops. One job per key: `start` refuses a second one
while the first runs (`JobRunning`, a message in words); the page says so and the running job goes on.

Server-wide limits are the work's own: models come from the shared caches (`ui.cache`), and the per-
session memory budget applies as it does in the script thread. Grad mode is per thread in PyTorch; a new
thread starts with the defaults, as a script thread does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

POLL_SECONDS = 0.5  # how often a running job's fragment redraws
STOP_WAIT_SECONDS = 3.0  # how long a Stop click waits for the work to notice before the page redraws


class Stopped(BaseException):  # noqa: N818  (a signal, like Streamlit's own StopException)
    """Raised inside the work when Stop was pressed. A BaseException, so that an `except Exception`
    that fails one part of the work (one column, one layer) does not swallow it."""


class JobRunning(RuntimeError):
    """`start` was asked for a second job under a key whose job still runs."""


@dataclass(frozen=True)
class Snapshot:
    """What a job shows at one moment, read under its lock."""

    fraction: float  # 0..1
    message: str
    partial: object  # the work's latest `publish`ed value (None before any)
    running: bool
    stopped: bool  # Stop was pressed (the work may still be finishing)


class Job:
    """One piece of work in a daemon thread; `work(job)` returns the result."""

    def __init__(self, work: Callable[[Job], object], label: str = "") -> None:
        self.label = label  # what runs, in words ("generation")
        self.lock = threading.Lock()  # guards this job's fields and whatever the work shares with the page
        self._work = work
        self._stop = threading.Event()
        self._done = threading.Event()
        self._fraction, self._message, self._partial = 0.0, "Starting", None
        self.result: object = None  # set when the work returns
        self.error: BaseException | None = None  # what the work raised (Stopped is not an error)
        self.collected = False  # the page has drawn the finished result (see `finished`)
        self._thread = threading.Thread(target=self._run, name=f"job {label}", daemon=True)

    def start(self) -> Job:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            result = self._work(self)
        except Stopped:
            result = None
        except BaseException as exc:  # noqa: BLE001  (kept for the page to show; the thread ends here)
            with self.lock:
                self.error = exc
            result = None
        with self.lock:
            self.result = result
        self._done.set()

    # -- called by the work (its thread) -------------------------------------------------------------

    def update(self, fraction: float, message: str) -> None:
        """Set the progress shown (0..1 and a line of text)."""
        with self.lock:
            self._fraction, self._message = min(max(float(fraction), 0.0), 1.0), message

    def progress(self, fraction: float, message: str) -> None:
        """An engine `progress` callback: `update`, then raise Stopped once Stop was pressed, which ends
        engine work that only reports progress."""
        self.update(fraction, message)
        if self._stop.is_set():
            raise Stopped

    def publish(self, partial: object) -> None:
        with self.lock:
            self._partial = partial

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # -- called by the page ----------------------------------------------------------------------------

    def stop(self, wait: float = 0.0) -> None:
        """Ask the work to stop; wait up to `wait` seconds for it to end."""
        self._stop.set()
        if wait:
            self.wait(wait)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the work ends (or `timeout` passes); True when it has ended."""
        return self._done.wait(timeout)

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def snapshot(self) -> Snapshot:
        with self.lock:
            return Snapshot(self._fraction, self._message, self._partial, self.running, self.stopped)


# -- one job per session and key ------------------------------------------------------------------------


def current(key: str) -> Job | None:
    job = st.session_state.get(key)
    return job if isinstance(job, Job) else None


def start(key: str, work: Callable[[Job], object], label: str) -> Job:
    """Start `work` in the background as this session's job under `key`; refuses (JobRunning) while the
    job already there runs."""
    running = current(key)
    if running is not None and running.running:
        raise JobRunning(
            f"A {running.label} is still running: wait for it to finish or press Stop, then try again."
        )
    job = Job(work, label)
    st.session_state[key] = job
    return job.start()


def stop(key: str, wait: float = STOP_WAIT_SECONDS) -> None:
    """A Stop button's `on_click`: stop the job under `key` and give it a moment to end, so the rerun
    that follows usually draws the stopped result at once."""
    job = current(key)
    if job is not None:
        job.stop(wait)


def finished(key: str) -> Job | None:
    """The job under `key` if it has ended and the page has not yet taken its result (then it counts as
    taken); None otherwise."""
    job = current(key)
    if job is None or job.running or job.collected:
        return None
    job.collected = True
    return job


def watch(key: str, draw: Callable[[Job], None], every: float = POLL_SECONDS) -> None:
    """Draw the running job under `key` with `draw(job)` every `every` seconds (a fragment, so the rest
    of the page does not rerun); once the job ends, rerun the whole page once to show the result."""

    @st.fragment(run_every=every)
    def poll() -> None:
        job = current(key)
        if job is None or job.collected:
            return  # a timer left from before the result was drawn
        if not job.running:
            st.rerun()
        draw(job)

    poll()
