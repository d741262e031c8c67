"""The kernel table (engine.kernels.dispatch) and its measured choice (engine.kernels.choice).

Runtime fallback: a kernel that raises, or returns NaN where the reference is finite, is made the only
candidate: the call returns the reference result, the kernel is off for that (kernel, layout, device) from
then on, and `failures()` names it and the reason exactly once. Measured choice: among several candidates
the fastest correct one runs; a wrong or failing one is refused when it is timed, with the reason; each
choice is timed once and kept (in memory and in a file). CPU only.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest
import torch

from engine.kernels import QuantLinear, choice, dispatch, failures
from engine.kernels.dispatch import KernelEntry
from engine.quant.schemes import QuantScheme

pytestmark = pytest.mark.usefixtures("single_thread")

INT8 = QuantScheme(8, "int", True, "channel")
INT4_ASYM_G64 = QuantScheme(4, "int", False, "group", 64)


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch, tmp_path):
    """Measurements in memory and in a private folder; a clean failure record; restored afterwards."""
    monkeypatch.setenv("QE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("QE_KERNEL_CHOICE_CACHE", raising=False)
    choice.forget()
    dispatch.forget_failures()
    yield
    choice.forget()
    dispatch.forget_failures()


@pytest.fixture
def table(monkeypatch):
    """A private copy of the table, restored afterwards."""
    monkeypatch.setattr(dispatch, "ENTRIES", list(dispatch.ENTRIES))
    return dispatch.ENTRIES


@pytest.fixture
def only(monkeypatch):
    """Make an injected kernel the only candidate for int8 layers (nothing to time: it runs)."""

    def install(name: str, kernel, calls: list) -> None:
        monkeypatch.setattr(dispatch, "ENTRIES", [counted_entry(name, kernel, calls), dispatch.REFERENCE])

    return install


def counted_entry(name: str, kernel, calls: list, layout: str = "int8_rows") -> KernelEntry:
    def counted(rows, module):
        calls.append(rows.shape[0])
        return kernel(rows, module)

    return KernelEntry(name, lambda module, device, tokens: module.layout == layout, counted)


def layer(scheme: QuantScheme = INT8, out_features: int = 192, in_features: int = 576) -> QuantLinear:
    torch.manual_seed(0)
    return QuantLinear.from_linear(torch.nn.Linear(in_features, out_features), scheme)


def inputs(rows: int = 3, in_features: int = 576) -> torch.Tensor:
    return torch.randn(rows, in_features, generator=torch.Generator().manual_seed(rows))


def reference_rows(rows, module):
    return dispatch.REFERENCE.kernel(rows, module).to(rows.dtype)


def test_the_reference_is_the_last_entry_and_applies_to_everything():
    assert dispatch.ENTRIES[-1] is dispatch.REFERENCE
    assert dispatch.REFERENCE.applies(layer(), "cpu", 1) and dispatch.REFERENCE.applies(layer(), "cuda", 4096)
    names = [entry.name for entry in dispatch.ENTRIES]
    assert len(names) == len(set(names)), "kernel names must be unique: the Speed page shows them"


# -- runtime fallback -------------------------------------------------------------------------------------------


def test_a_kernel_that_raises_falls_back_to_the_reference_once(only):
    module, x = layer(), inputs()
    calls: list[int] = []

    def broken(rows, module):
        raise RuntimeError("illegal memory access (injected)")

    only("broken_int8", broken, calls)
    assert module.kernel_for(3) == "broken_int8"
    y = module(x)
    assert torch.equal(y, module.reference_forward(x))  # that very call returns the reference result
    assert module.kernel_for(3) == "reference"  # and the kernel is off from now on
    assert torch.equal(module(inputs(5)), module.reference_forward(inputs(5)))
    assert calls == [3], "a failed kernel is not tried again"

    messages = failures()
    assert len(messages) == 1
    assert "broken_int8" in messages[0] and "illegal memory access (injected)" in messages[0]
    assert "RuntimeError" in messages[0] and "int8_rows" in messages[0] and "cpu" in messages[0]


def test_a_kernel_that_raises_after_its_first_call_falls_back_too(only):
    module = layer()
    calls: list[int] = []

    def breaks_later(rows, module):
        if len(calls) > 1:
            raise RuntimeError("launch failed (injected)")
        return reference_rows(rows, module)

    only("later_int8", breaks_later, calls)
    module(inputs())  # checked and kept
    y = module(inputs())  # the kept call raises: reference result, kernel off
    assert torch.equal(y, module.reference_forward(inputs()))
    assert module.kernel_for(3) == "reference" and len(failures()) == 1
    assert "launch failed (injected)" in failures()[0]


def test_a_kernel_that_returns_nan_falls_back_to_the_reference_once(only):
    module, x = layer(), inputs()
    calls: list[int] = []

    def nan_kernel(rows, module):
        y = reference_rows(rows, module).clone()
        y[0, 0] = float("nan")
        return y

    only("nan_int8", nan_kernel, calls)
    y = module(x)
    assert torch.isfinite(y).all() and torch.equal(y, module.reference_forward(x))
    other = layer(out_features=64)  # another layer with the same layout and device: off for it too
    assert other.kernel_for(1) == "reference"
    assert torch.equal(other(inputs(1)), other.reference_forward(inputs(1)))
    assert calls == [3]
    messages = failures()
    assert len(messages) == 1 and "nan_int8" in messages[0] and "NaN" in messages[0]


def test_a_failure_turns_off_only_its_layout(table):
    calls: list[int] = []
    table[:] = [counted_entry("broken_int8", lambda rows, module: 1 / 0, calls), *table]
    dispatch._fail(table[0], layer(), "cpu", "raised ZeroDivisionError: injected")
    int4 = layer(INT4_ASYM_G64)
    assert int4.kernel_for(1) == "cpu_int4"  # another layout keeps its fast kernel
    assert layer().kernel_for(1) == "cpu_int8"  # and its own layout the next candidate
    assert len(failures()) == 1 and "ZeroDivisionError" in failures()[0]


def test_a_failure_drops_every_layers_kept_call(only):
    """Layer A keeps a call to a kernel; the kernel then fails on layer B: A binds again, without it."""
    calls: list[int] = []
    poisoned = {"on": False}

    def flaky(rows, module):
        if poisoned["on"]:
            raise RuntimeError("bad (injected)")
        return reference_rows(rows, module)

    only("shared_int8", flaky, calls)
    first, second = layer(), layer(out_features=64)
    first(inputs())
    assert first._calls, "a checked call is kept"
    poisoned["on"] = True
    second(inputs())  # fails on its first call: off everywhere
    assert not first._calls, "every kept call is dropped"
    before = len(calls)
    assert torch.equal(first(inputs()), first.reference_forward(inputs()))
    assert len(calls) == before, "the failed kernel does not run again on the other layer"


def test_a_finite_first_call_is_trusted_afterwards(only):
    module = layer()
    calls: list[int] = []
    outputs = iter([None, float("nan")])  # finite first, NaN later: no second check, by design

    def flaky(rows, module):
        y = reference_rows(rows, module).clone()
        value = next(outputs)
        if value is not None:
            y[0, 0] = value
        return y

    only("flaky_int8", flaky, calls)
    module(inputs())
    assert not torch.isfinite(module(inputs())).all()
    assert failures() == [] and module.kernel_for(1) == "flaky_int8"


def test_non_finite_inputs_do_not_blame_the_kernel():
    module, x = layer(), inputs()
    x[1, 7] = float("inf")
    y = module(x)  # inf in, NaN / inf out, as the reference gives
    assert not torch.isfinite(y).all()
    assert failures() == [] and module.kernel_for(3) != "reference"


def test_real_kernels_pass_the_check_and_match_the_reference():
    for scheme, activations, kernels in (
        (INT4_ASYM_G64, None, {"cpu_int4"}),
        (INT8, None, {"cpu_int8", "dequant_matmul"}),
        (INT8, INT8, {"cpu_w8a8"}),
    ):
        torch.manual_seed(0)
        module = QuantLinear.from_linear(torch.nn.Linear(576, 192), scheme, activations)
        assert module.kernel_for(2) in kernels
        x = inputs(2)
        y = module(x)
        assert float((y - module.reference_forward(x)).norm() / y.norm()) < 1e-2
    assert failures() == []


# -- the measured choice ----------------------------------------------------------------------------------------


def slow(kernel, seconds: float = 0.004):
    def run(rows, module):
        time.sleep(seconds)
        return kernel(rows, module)

    return run


def test_the_fastest_correct_candidate_runs_and_wrong_ones_are_refused(table):
    slow_calls, fast_calls, wrong_calls, raising_calls = [], [], [], []
    table[:] = [
        counted_entry("slow_int8", slow(reference_rows), slow_calls),
        counted_entry("wrong_int8", lambda rows, module: 2 * reference_rows(rows, module), wrong_calls),
        counted_entry("raising_int8", lambda rows, module: 1 / 0, raising_calls),
        counted_entry("fast_int8", reference_rows, fast_calls),
        dispatch.REFERENCE,
    ]
    module = layer()
    assert module.kernel_for(1) == "fast_int8"
    rows = {r["candidate"]: r for r in choice.measured_rows("cpu")}
    assert set(rows) == {"slow_int8", "wrong_int8", "raising_int8", "fast_int8"}
    assert rows["fast_int8"]["chosen"] and not rows["slow_int8"]["chosen"]
    assert rows["slow_int8"]["µs"] > rows["fast_int8"]["µs"]
    assert "relative error" in rows["wrong_int8"]["note"] and rows["wrong_int8"]["µs"] is None
    assert "ZeroDivisionError" in rows["raising_int8"]["note"]
    assert rows["fast_int8"]["probe"] == "{}×{}".format(*choice.PROBE_SHAPES["cpu"])
    assert failures() == [], "a candidate refused while timing is not a runtime failure"

    timed = len(slow_calls)
    assert timed > 0
    other = layer(out_features=64)  # same format, layout and bucket: no second measurement
    assert other.kernel_for(1) == "fast_int8" and len(slow_calls) == timed
    y, expected = other(inputs(1)), other.reference_forward(inputs(1))
    assert float((y - expected).norm() / expected.norm()) < 1e-2  # the kernel ran in bfloat16


def test_each_bucket_is_timed_once_and_kept_in_a_file(table, tmp_path):
    calls: list[int] = []
    table[:] = [
        counted_entry("slow_int8", slow(reference_rows), calls),
        counted_entry("fast_int8", reference_rows, []),
        dispatch.REFERENCE,
    ]
    module = layer()
    module.kernel_for(1)
    module.kernel_for(3)  # bucket 4: timed too
    assert sorted({r["rows"] for r in choice.measured_rows("cpu")}) == [1, 4]
    timed = len(calls)
    assert (tmp_path / "kernel-choice.json").exists()
    choice.forget()  # a new process: reads the file instead of timing again
    assert module.kernel_for(1) == "fast_int8" and len(calls) == timed


def test_with_one_candidate_nothing_is_timed(only):
    calls: list[int] = []
    only("sole_int8", reference_rows, calls)
    assert layer().kernel_for(1) == "sole_int8"
    assert calls == [] and choice.measured_rows("cpu") == []


def test_the_w4a16_layout_is_chosen_by_measurement():
    module = layer(INT4_ASYM_G64)
    assert module.layout == "cpu_int4pack"
    rows = [r for r in choice.measured_rows("cpu") if r["choice"] == "layout"]
    assert {r["candidate"] for r in rows} == {"cpu_int4pack", "nibbles"}
    assert next(r for r in rows if r["chosen"])["candidate"] == "cpu_int4pack"


def test_kernels_never_import_the_methods():
    """engine.kernels sits below engine.methods: packing as a method lives in engine.methods.packed."""
    root = Path(__file__).resolve().parents[3] / "engine" / "kernels"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(name.startswith("engine.methods") for name in names), (
                f"{path.name} imports {names}"
            )
