"""The kernel table (engine.kernels.dispatch): a failing fast kernel falls back to the reference, once.

A kernel that raises, or returns NaN where the reference is finite, is injected at the top of the table:
the call returns the reference result, the kernel is off for that (kernel, layout, device) from then on,
and `failures()` names it and the reason exactly once. CPU only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from engine.kernels import QuantLinear, dispatch, failures
from engine.kernels.dispatch import KernelEntry
from engine.quant.schemes import QuantScheme

pytestmark = pytest.mark.usefixtures("single_thread")

INT8 = QuantScheme(8, "int", True, "channel")
INT4_ASYM_G64 = QuantScheme(4, "int", False, "group", 64)


@pytest.fixture
def table(monkeypatch):
    """A private copy of the table and a clean failure record, restored afterwards."""
    monkeypatch.setattr(dispatch, "ENTRIES", list(dispatch.ENTRIES))
    dispatch.forget_failures()
    yield dispatch.ENTRIES
    dispatch.forget_failures()


def layer(scheme: QuantScheme = INT8, out_features: int = 192, in_features: int = 576) -> QuantLinear:
    torch.manual_seed(0)
    return QuantLinear.from_linear(torch.nn.Linear(in_features, out_features), scheme)


def inputs(rows: int = 3, in_features: int = 576) -> torch.Tensor:
    return torch.randn(rows, in_features, generator=torch.Generator().manual_seed(rows))


def inject(table, name: str, kernel, calls: list) -> None:
    def counted(rows, module):
        calls.append(rows.shape[0])
        return kernel(rows, module)

    table.insert(0, KernelEntry(name, lambda module, device, tokens: module.layout == "int8_rows", counted))


def test_the_reference_is_the_last_entry_and_applies_to_everything():
    assert dispatch.ENTRIES[-1] is dispatch.REFERENCE
    assert dispatch.REFERENCE.applies(layer(), "cpu", 1) and dispatch.REFERENCE.applies(layer(), "cuda", 4096)
    names = [entry.name for entry in dispatch.ENTRIES]
    assert len(names) == len(set(names)), "kernel names must be unique: the Speed page shows them"


def test_a_kernel_that_raises_falls_back_to_the_reference_once(table):
    module, x = layer(), inputs()
    calls: list[int] = []

    def broken(rows, module):
        raise RuntimeError("illegal memory access (injected)")

    inject(table, "broken_int8", broken, calls)
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


def test_a_kernel_that_returns_nan_falls_back_to_the_reference_once(table):
    module, x = layer(), inputs()
    calls: list[int] = []

    def nan_kernel(rows, module):
        y = dispatch.REFERENCE.kernel(rows, module).clone()
        y[0, 0] = float("nan")
        return y

    inject(table, "nan_int8", nan_kernel, calls)
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
    inject(table, "broken_int8", lambda rows, module: 1 / 0, calls)
    layer()(inputs())
    int4 = layer(INT4_ASYM_G64)
    assert int4.kernel_for(1) == "cpu_int4"  # another layout keeps its fast kernel
    assert len(failures()) == 1 and "ZeroDivisionError" in failures()[0]


def test_a_finite_first_call_is_trusted_afterwards(table):
    module = layer()
    calls: list[int] = []
    outputs = iter([None, float("nan")])  # finite first, NaN later: no second check, by design

    def flaky(rows, module):
        y = dispatch.REFERENCE.kernel(rows, module).clone()
        value = next(outputs)
        if value is not None:
            y[0, 0] = value
        return y

    inject(table, "flaky_int8", flaky, calls)
    module(inputs())
    assert not torch.isfinite(module(inputs())).all()
    assert failures() == [] and module.kernel_for(1) == "flaky_int8"


def test_non_finite_inputs_do_not_blame_the_kernel(table):
    module, x = layer(), inputs()
    x[1, 7] = float("inf")
    y = module(x)  # cpu_int8: inf in, NaN / inf out, as the reference gives
    assert not torch.isfinite(y).all()
    assert failures() == [] and module.kernel_for(3) == "cpu_int8"


def test_real_kernels_pass_the_check_and_match_the_reference(table):
    for scheme, activations, kernel in (
        (INT4_ASYM_G64, None, "cpu_int4"),
        (INT8, None, "cpu_int8"),
        (INT8, INT8, "cpu_w8a8"),
    ):
        torch.manual_seed(0)
        module = QuantLinear.from_linear(torch.nn.Linear(576, 192), scheme, activations)
        assert module.kernel_for(2) == kernel
        x = inputs(2)
        y = module(x)
        assert float((y - module.reference_forward(x)).norm() / y.norm()) < 1e-2
    assert failures() == []


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
