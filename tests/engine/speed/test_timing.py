"""Kernel time and call time (engine.speed.timing.two_figures) and the microbenchmark rows that carry both.

No timing assertions: a shared machine makes any inequality between two timings flaky. The tests hold
the structure instead: which callable runs how many times and in what order, which method is reported,
and that every figure the rows derive (GB/s, TFLOP/s, speed-ups) comes from the figure it should.
The CUDA branch (CUDA-graph capture, its CUDA-events fallback) is checked by the gpu-marked tests at the
end, on a GPU machine only (bench/gpu_run.sh runs them)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from engine import speed
from engine.kernels import QuantLinear
from engine.speed import microbench, timing
from engine.speed.timing import CUDA_EVENTS, CUDA_GRAPH, WALL_CLOCK, KernelAndCall, two_figures

pytestmark = pytest.mark.usefixtures("single_thread")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class Counted:
    """A callable that records its calls (in a shared log, under its name) and does a little work."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log, self.calls = name, log, 0
        self.x = torch.randn(32, 32)

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        self.log.append(self.name)
        return self.x @ self.x


def test_cpu_times_kernel_and_call_alternately_by_wall_clock():
    log: list[str] = []
    call, kernel = Counted("call", log), Counted("kernel", log)
    figures = two_figures(call, kernel, "cpu", repeats=7, warmup=3)
    assert isinstance(figures, KernelAndCall) and figures.method == WALL_CLOCK
    assert figures.kernel_seconds > 0 and figures.call_seconds > 0
    assert figures.overhead_seconds == figures.call_seconds - figures.kernel_seconds
    assert call.calls == kernel.calls == 3 + 7  # warm-up, then one timed call each per repeat
    assert log[6:] == ["call", "kernel"] * 7  # interleaved call by call: load drift hits both alike


def test_cpu_rotates_over_copies_and_warms_every_copy():
    log: list[str] = []
    calls = [Counted(f"call{i}", log) for i in range(3)]
    kernels = [Counted(f"kernel{i}", log) for i in range(3)]
    two_figures(calls, kernels, "cpu", repeats=7, warmup=1)  # warm-up covers the rotation: 3, not 1
    assert [c.calls for c in calls] == [1 + 3, 1 + 2, 1 + 2]  # timed calls 0..6 rotate over 3 copies
    assert [k.calls for k in kernels] == [1 + 2, 1 + 3, 1 + 2]  # the same, half a rotation on
    # never the copy the call has just read (its weights would still be in cache)
    assert log[6:12] == ["call0", "kernel1", "call1", "kernel2", "call2", "kernel0"]


def test_a_call_with_no_separate_kernel_is_timed_once_for_both_figures_on_cpu():
    log: list[str] = []
    call = Counted("call", log)
    figures = two_figures(call, None, "cpu", repeats=5, warmup=2)
    assert call.calls == 2 + 5
    assert figures.kernel_seconds == figures.call_seconds > 0 and figures.overhead_seconds == 0
    assert figures.method == WALL_CLOCK


def test_two_figures_refuses_what_it_cannot_time():
    log: list[str] = []
    with pytest.raises(ValueError, match="2 calls but 1 kernels"):
        two_figures([Counted("a", log), Counted("b", log)], [Counted("k", log)], "cpu")
    with pytest.raises(ValueError, match="nothing to time"):
        two_figures([], None, "cpu")
    with pytest.raises(ValueError, match="repeats"):
        two_figures(Counted("a", log), None, "cpu", repeats=0)


def test_median_seconds_still_times_one_call_with_a_sync_around_each():
    log: list[str] = []
    calls = [Counted("a", log), Counted("b", log)]
    assert timing.median_seconds(calls, repeats=4, warmup=2, device="cpu") > 0
    assert log == ["a", "b"] * 3


def test_measured_bandwidth_is_positive_on_cpu():
    assert speed.measure_bandwidth("cpu", nbytes=1 << 20, repeats=3) > 0


def test_kernel_of_is_quantlinears_kernel_call_and_none_for_a_float_layer():
    weight = torch.randn(64, 128) * 0.02
    x = torch.randn(4, 128)
    packed = speed.layer_for("W8A16", weight)
    dense = speed.layer_for("fp32", weight)
    assert isinstance(packed, QuantLinear) and microbench.kernel_of(dense, x) is None
    kernel = microbench.kernel_of(packed, x)
    with torch.inference_mode():
        y, forward = kernel(), packed(x)  # the kernel a forward runs, on x in its compute dtype (bf16 on CPU)
    assert y.shape == forward.shape and packed.bias is None  # no bias to leave out here
    torch.testing.assert_close(y.float(), forward, rtol=2e-2, atol=2e-3)


def test_microbenchmark_rows_carry_kernel_and_call_time(monkeypatch):
    """Packed formats are timed through their kernel_call (counted here), the float baseline through its
    forward, which is its kernel: one figure for both on a CPU."""
    made, ran = [], []
    original = QuantLinear.kernel_call

    def counted_kernel_call(self, x):
        kernel = original(self, x)
        made.append((self.fmt, x.shape[0]))

        def run():
            ran.append((self.fmt, x.shape[0]))
            return kernel()

        return run

    monkeypatch.setattr(QuantLinear, "kernel_call", counted_kernel_call)
    results = speed.microbenchmark(
        [speed.LinearShape(192, 576)],
        batches=[1, 16],
        formats=["fp32", "W8A16", "W4A16"],
        repeats=4,
        warmup=2,
        rotate=False,  # one copy: the counts below are exact
    )
    assert [(r.format, r.batch) for r in results] == [
        (fmt, batch) for fmt in ("fp32", "W8A16", "W4A16") for batch in (1, 16)
    ]
    assert sorted(made) == sorted({(fmt, b) for fmt in ("W8A16", "W4A16") for b in (1, 16)})
    for key in made:
        assert ran.count(key) == 2 + 4  # warm-up, then one per repeat
    for r in results:
        assert r.kernel_seconds > 0 and r.call_seconds > 0 and r.method == WALL_CLOCK
        assert r.seconds == r.call_seconds  # `seconds` is call time, as before
        assert r.overhead_seconds == r.call_seconds - r.kernel_seconds
        assert r.gbytes_per_s == pytest.approx(r.bytes / r.kernel_seconds / 1e9)
        assert r.tflops == pytest.approx(r.flops / r.kernel_seconds / 1e12)
        base = next(b for b in results if b.format == "fp32" and b.batch == r.batch)
        assert r.speedup == pytest.approx(base.kernel_seconds / r.kernel_seconds)
        assert r.call_speedup == pytest.approx(base.call_seconds / r.call_seconds)
    for r in (r for r in results if r.format == "fp32"):
        assert r.kernel_seconds == r.call_seconds and r.speedup == r.call_speedup == 1.0
        assert r.kernel == "linear fp32"


def test_bench_kernel_table_has_kernel_call_and_overhead_columns():
    from bench.bench_kernels import kernel_tables

    results = speed.microbenchmark(
        [speed.LinearShape(192, 576)], batches=[1], formats=["fp32", "W4A16"], repeats=2, warmup=1
    )
    table = kernel_tables(results, "fp32")
    assert "| batch | format | kernel | kernel µs | call µs | overhead µs |" in table
    assert "| 1 | fp32 | `linear fp32` |" in table and "| 1 | W4A16 | `cpu_int4` |" in table
    assert table.count(f"| {WALL_CLOCK} |") == 2


# -- the CUDA branch's control flow, on a fake torch.cuda -------------------------------------------------


class FakeCuda:
    """Just enough of torch.cuda to walk the CUDA branch without a GPU: a GPU clock that each kernel moves
    on by 1 µs when it runs, graphs that record that work at capture and add it to the clock at each
    replay, events that read the clock. Capture leaves its stream current when capture_end raises, as
    torch.cuda.graph does. No real time is read anywhere but for call time."""

    def __init__(self, refuse_capture: bool = False) -> None:
        self.clock_ms = 0.0
        self.capturing = None
        self.refuse_capture = refuse_capture
        self.captures = 0
        fake = self

        class Graph:
            def __init__(self) -> None:
                self.work_ms = 0.0

            def replay(self) -> None:
                fake.clock_ms += self.work_ms

            def reset(self) -> None:
                self.work_ms = 0.0

        class GraphContext:
            def __init__(self, graph, stream=None, capture_error_mode="global") -> None:
                assert capture_error_mode == "thread_local"
                self.graph, self.stream = graph, stream

            def __enter__(self):
                fake.current, fake.capturing = self.stream, self.graph
                fake.captures += 1

            def __exit__(self, *exc) -> None:
                fake.capturing = None
                if exc[0] is not None:  # torch: capture_end raises on top, the stream stays current
                    raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
                fake.current = None  # torch restores the stream before; the test checks that ours does

        class StreamContext:
            def __init__(self, stream) -> None:
                self.stream = stream

            def __enter__(self):
                self.before, fake.current = fake.current, self.stream

            def __exit__(self, *exc) -> None:
                fake.current = self.before

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                self.at_ms = None

            def record(self) -> None:
                self.at_ms = fake.clock_ms

            def synchronize(self) -> None:
                pass

            def elapsed_time(self, end) -> float:
                return end.at_ms - self.at_ms

        class Stream:
            def wait_stream(self, other) -> None:
                pass

        self.default = self.current = Stream()
        self.attributes = {
            "Stream": Stream,
            "stream": StreamContext,
            "current_stream": lambda: fake.current,
            "set_stream": lambda stream: setattr(fake, "current", stream),
            "synchronize": lambda: None,
            "device": lambda device: contextlib.nullcontext(),
            "CUDAGraph": Graph,
            "graph": GraphContext,
            "Event": Event,
            "_sleep": lambda cycles: setattr(fake, "clock_ms", fake.clock_ms + cycles / 1e6),  # 1 GHz
        }

    def kernel(self, log: list[str], name: str):
        def run() -> None:
            log.append(name)
            if self.capturing is None:
                self.clock_ms += 1e-3
            elif self.refuse_capture:
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
            else:
                self.capturing.work_ms += 1e-3

        return run


def fake_cuda(monkeypatch, refuse_capture: bool = False) -> FakeCuda:
    fake = FakeCuda(refuse_capture)
    for name, value in fake.attributes.items():
        monkeypatch.setattr(torch.cuda, name, value, raising=False)
    monkeypatch.setattr(timing, "_SLEEP_CYCLES_PER_SECOND", [])
    return fake


def test_cuda_branch_times_kernels_from_a_graph_replay(monkeypatch):
    fake = fake_cuda(monkeypatch)
    log: list[str] = []
    calls = [fake.kernel(log, f"call{i}") for i in range(3)]
    kernels = [fake.kernel(log, f"kernel{i}") for i in range(3)]
    figures = two_figures(calls, kernels, "cuda", repeats=5, warmup=2, per_sample=6)
    assert figures.method == CUDA_GRAPH and fake.captures == 1
    assert figures.kernel_seconds == pytest.approx(1e-6)  # the graph's work per call, on the GPU clock
    assert figures.call_seconds > 0
    # warm-up: the rotation once (3 > warmup 2); call time: 5 rounds of 6; the graph: Python runs at capture
    # only (6 calls), its 1 + 5 replays run none
    assert sum(name.startswith("call") for name in log) == 3 + 5 * 6
    assert sum(name.startswith("kernel") for name in log) == 3 + 6
    assert fake.current == fake.default  # the stream current before is current again


def test_cuda_branch_falls_back_to_events_when_capture_is_refused(monkeypatch):
    fake = fake_cuda(monkeypatch, refuse_capture=True)
    log: list[str] = []
    figures = two_figures(fake.kernel(log, "call"), fake.kernel(log, "kernel"), "cuda", repeats=4, warmup=1)
    assert figures.method.startswith(f"{CUDA_EVENTS} (no CUDA graph: RuntimeError: CUDA error: operation not")
    assert figures.kernel_seconds == pytest.approx(1e-6)  # the sleep queued first is outside the events
    assert fake.current == fake.default  # restored although capture_end raised
    per_sample = timing.MIN_CALLS_PER_SAMPLE  # the default: 16 (fewer than 256 // 4 queued)
    assert log.count("kernel") == 1 + 1 + 4 * per_sample  # warm-up, the refused capture, then the events


# -- GPU --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_cuda_kernel_time_is_a_graph_replay_and_call_time_runs_python():
    log: list[str] = []
    weight = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(4, 1024, device="cuda", dtype=torch.bfloat16)

    def call():
        log.append("call")
        return torch.nn.functional.linear(x.float().to(torch.bfloat16), weight)

    def kernel():
        log.append("kernel")
        return torch.nn.functional.linear(x, weight)

    figures = two_figures(call, kernel, "cuda", repeats=5, warmup=2, per_sample=8)
    assert figures.method == CUDA_GRAPH
    assert figures.kernel_seconds > 0 and figures.call_seconds > 0
    # warm-up 2 each; call time: 5 rounds of 8 calls; the graph: Python runs once, at capture (8 calls)
    assert log.count("kernel") == 2 + 8 and log.count("call") == 2 + 5 * 8
    assert torch.cuda.current_stream() == torch.cuda.default_stream()


@pytest.mark.gpu
@needs_cuda
def test_cuda_kernel_that_refuses_capture_is_timed_with_events():
    """A host sync inside the kernel breaks capture: the events fallback times it, says so and why, and
    the process goes on (the default stream is current again, later captures work)."""
    x = torch.randn(256, 256, device="cuda")

    def syncing():
        y = x @ x
        float(y[0, 0])  # a copy to the host and a sync: not permitted while capturing
        return y

    figures = two_figures(lambda: x @ x, syncing, "cuda", repeats=3, warmup=1, per_sample=4)
    assert figures.method.startswith(f"{CUDA_EVENTS} (no CUDA graph:")
    assert figures.kernel_seconds > 0 and figures.call_seconds > 0
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    assert two_figures(lambda: x @ x, None, "cuda", repeats=3, warmup=1).method == CUDA_GRAPH


@pytest.mark.gpu
@needs_cuda
def test_cuda_microbenchmark_rows_have_both_figures():
    results = speed.microbenchmark(
        [speed.LinearShape(4096, 4096)], batches=[1, 64], formats=["bf16", "W4A16", "W8A16"], repeats=5
    )
    assert {r.format for r in results} == {"bf16", "W4A16", "W8A16"}
    for r in results:
        assert r.kernel_seconds > 0 and r.call_seconds > 0 and r.speedup > 0 and r.call_speedup > 0
        assert r.method == CUDA_GRAPH, (r.format, r.batch, r.method)
    assert speed.measure_bandwidth("cuda", nbytes=256 << 20) > 1e11  # any GPU copies over 100 GB/s
