"""Timing helpers shared by the microbenchmarks, the bandwidth probe and the decode loops.

Two figures, never confused (`two_figures`):
- **kernel time**: the device work alone. On a GPU the kernel calls are captured in a CUDA graph and its
  replays are timed with CUDA events, so no Python, dispatch or launch cost is in it; where an op refuses
  capture, CUDA events around many back-to-back calls (queued behind a short GPU sleep, so the host runs
  ahead of the GPU) with one synchronize at the end. On a CPU, the wall time of the kernel function
  called directly on input prepared once.
- **call time**: what a model's forward pays per call in steady state: the wall time of back-to-back
  calls, the GPU synchronized once at the end of each round (never around each call, which would add a
  round trip to every call that a model's forward does not pay).

Each figure is a median (of rounds on a GPU, of single calls on a CPU, where kernel and call are timed
alternately so load drift hits both alike), which shrugs off the odd slow call (a page fault, another
process on a shared core) that a mean would carry. `median_seconds` is the older single figure (a
synchronize around every call), kept for callers that time one large operation.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Call = Callable[[], object]

CUDA_GRAPH = "CUDA graph"
CUDA_EVENTS = "CUDA events"
WALL_CLOCK = "wall clock"
MIN_CALLS_PER_SAMPLE = 16  # on a GPU: back-to-back calls per timed sample (at least the whole rotation)
MAX_QUEUED_CALLS = 256  # CUDA events fallback: calls queued at once, well inside the launch queue


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on a CPU, which runs synchronously)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(calls: list[Callable[[], object]], repeats: int, warmup: int, device: str) -> float:
    """Median wall time of one call, rotating over `calls` (one per weight copy), synchronized around each."""
    for index in range(warmup):
        calls[index % len(calls)]()
    sync(device)
    samples = []
    for index in range(repeats):
        start = time.perf_counter()
        calls[index % len(calls)]()
        sync(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


@dataclass(frozen=True)
class KernelAndCall:
    kernel_seconds: float  # median: the kernel alone
    call_seconds: float  # median: a call as a model's forward makes it
    method: str  # how kernel time was taken: CUDA graph, CUDA events (with the reason) or wall clock

    @property
    def overhead_seconds(self) -> float:
        """What a call pays beyond its kernel: Python, dispatch, casts, launches (noise where ~0)."""
        return self.call_seconds - self.kernel_seconds


def _rotation(calls: Call | Sequence[Call]) -> list[Call]:
    rotation = [calls] if callable(calls) else list(calls)
    if not rotation:
        raise ValueError("nothing to time: no calls given")
    return rotation


def two_figures(
    call: Call | Sequence[Call],
    kernel: Call | Sequence[Call] | None = None,
    device: str = "cpu",
    repeats: int = 20,
    warmup: int = 3,
    per_sample: int | None = None,
) -> KernelAndCall:
    """Kernel time and call time of one operation on `device`.

    `call` is what a model runs (a layer's forward); `kernel` runs only the device work of the same
    operation on input prepared once (QuantLinear.kernel_call); None where there is no separate kernel
    (a float linear, a bitsandbytes layer): the call itself, whose host cost a CUDA graph still removes,
    and on a CPU the very same figure. Either may be a list, rotated over call by call (one per weight
    copy, so each call reads its weights from memory); both lists then have the same length.

    Warm-up first: `max(warmup, len(list))` calls and as many kernel calls, rotating (every copy at least
    once). On a CPU then `repeats` timed calls of each, rotating, kernel and call alternately. On a GPU
    each of `repeats` samples is `per_sample` back-to-back calls (default: the whole rotation, at least
    MIN_CALLS_PER_SAMPLE); the kernel's Python runs `per_sample` times more, at capture.
    """
    calls = _rotation(call)
    kernels = calls if kernel is None else _rotation(kernel)
    if len(kernels) != len(calls):
        raise ValueError(f"{len(calls)} calls but {len(kernels)} kernels: rotate over the same copies")
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    if device.startswith("cuda"):
        with torch.cuda.device(torch.device(device)):
            return _cuda_figures(calls, kernels, kernel is None, repeats, warmup, per_sample)
    return _wall_figures(calls, kernels, kernel is None, repeats, warmup)


# -- CPU (and any device that runs synchronously) ---------------------------------------------------------


def _wall_figures(calls, kernels, same: bool, repeats: int, warmup: int) -> KernelAndCall:
    """Wall-clock medians, kernel and call alternately so load drift hits both alike; one figure for both
    where the kernel is the call. The kernel runs on the copy half a rotation away from the call's: run on
    the copy the call has just read, it would find the weights in cache and look faster than it is."""
    shift = len(calls) // 2  # both then read a copy last touched half a rotation ago
    for index in range(max(warmup, len(calls))):
        calls[index % len(calls)]()
        if not same:
            kernels[(index + shift) % len(kernels)]()
    call_samples, kernel_samples = [], []
    for index in range(repeats):
        start = time.perf_counter()
        calls[index % len(calls)]()
        call_samples.append(time.perf_counter() - start)
        if same:
            continue
        start = time.perf_counter()
        kernels[(index + shift) % len(kernels)]()
        kernel_samples.append(time.perf_counter() - start)
    call_seconds = statistics.median(call_samples)
    kernel_seconds = call_seconds if same else statistics.median(kernel_samples)
    return KernelAndCall(kernel_seconds, call_seconds, WALL_CLOCK)


# -- CUDA -------------------------------------------------------------------------------------------------


def _cuda_figures(calls, kernels, same: bool, repeats: int, warmup: int, per_sample: int | None):
    per_sample = per_sample or max(len(calls), MIN_CALLS_PER_SAMPLE)
    # Warm up on the stream the graph is captured on, as torch's CUDA-graph notes ask: Triton compiles and
    # autotunes, cuBLAS creates its handle and this stream's workspace, the caching allocator grows, and
    # QuantLinear's first-call checks (a host sync) run, all before capture, where none of them may.
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for index in range(max(warmup, len(calls))):
            calls[index % len(calls)]()
            if not same:
                kernels[index % len(kernels)]()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    call_seconds = _call_seconds(calls, repeats, per_sample)
    try:
        kernel_seconds, method = _graph_seconds(kernels, repeats, per_sample, stream), CUDA_GRAPH
    except Exception as exc:  # noqa: BLE001  (an op that refuses capture: time it with events instead)
        torch.cuda.synchronize()
        reason = _first_error(exc)
        kernel_seconds = _event_seconds(kernels, repeats, per_sample, call_seconds)
        method = f"{CUDA_EVENTS} (no CUDA graph: {reason})"
    return KernelAndCall(kernel_seconds, call_seconds, method)


def _first_error(exc: BaseException) -> str:
    """The error that broke a capture, in one short line: the first raised, not the capture_end error
    that torch.cuda.graph raises on top of it."""
    while exc.__context__ is not None:
        exc = exc.__context__
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line}"[:160]


def _call_seconds(calls, rounds: int, per_round: int) -> float:
    """Median over `rounds` of the wall time per call of `per_round` back-to-back calls, synchronized at
    the end of each round only: what a forward costs when the GPU keeps up with the host, and the host's
    own cost per call when it does not."""
    samples = []
    for round_index in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for index in range(per_round):
            calls[(round_index * per_round + index) % len(calls)]()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) / per_round)
    return statistics.median(samples)


def _graph_seconds(kernels, repeats: int, per_sample: int, stream: torch.cuda.Stream) -> float:
    """Capture `per_sample` kernel calls (rotating) in one CUDA graph on `stream` (warmed up already) and
    time `repeats` replays with CUDA events: median seconds per call. Raises if any op refuses capture."""
    original = torch.cuda.current_stream()
    graph = torch.cuda.CUDAGraph()
    try:
        # thread_local: another thread's CUDA calls (another Streamlit session) do not break this capture
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            for index in range(per_sample):
                kernels[index % len(kernels)]()
    finally:
        torch.cuda.set_stream(original)  # torch.cuda.graph leaves its stream current if capture_end raises
    graph.replay()  # the first replay uploads the graph: untimed
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)
    ]
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    seconds = statistics.median(start.elapsed_time(end) / 1e3 for start, end in events) / per_sample
    graph.reset()
    return seconds


_SLEEP_CYCLES_PER_SECOND: list[float] = []  # measured once per process


def _sleep_cycles_per_second() -> float:
    if not _SLEEP_CYCLES_PER_SECOND:
        cycles = 1 << 20
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(cycles)  # once untimed: its first launch loads the kernel
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        _SLEEP_CYCLES_PER_SECOND.append(cycles / max(start.elapsed_time(end) / 1e3, 1e-6))
    return _SLEEP_CYCLES_PER_SECOND[0]


def _event_seconds(kernels, repeats: int, per_sample: int, host_seconds_per_call: float) -> float:
    """CUDA events around blocks of back-to-back kernel calls, one synchronize at the end: median seconds
    per call. A GPU sleep queued first, as long as the host takes to queue every call, lets the host run
    ahead, so that the events time the GPU's work rather than the host's launches (where the kernels
    sync with the host themselves, they time both)."""
    per_sample = max(1, min(per_sample, MAX_QUEUED_CALLS // repeats))
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)
    ]
    if hasattr(torch.cuda, "_sleep"):
        ahead = min(1.2 * host_seconds_per_call * per_sample * repeats, 1.0)
        torch.cuda._sleep(max(1, math.ceil(ahead * _sleep_cycles_per_second())))
    next_index = 0  # the rotation runs on across samples, so every copy is read
    for start, end in events:
        start.record()
        for _ in range(per_sample):
            kernels[next_index % len(kernels)]()
            next_index += 1
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) / 1e3 for start, end in events) / per_sample
