"""Which kernel multiplies a packed layer: a table of what can run, a measured choice, the reference below.

`ENTRIES` lists every kernel with `applies(layer, device_type, tokens)`: whether it *can* run a call with
`tokens` rows on that layer's layout. Which of those *does* run is measured, not preferred by hand:
engine.kernels.choice times every candidate once per (device, format, layout, group size, compute dtype,
batch bucket) on a probe layer, refuses wrong ones and keeps the fastest (one candidate is taken without
timing). The last entry, `reference` (dequantize the stored bytes, one float32 matmul on the CPU:
engine.kernels.reference), is the floor: it runs where nothing else applies, and after a failure. Adding
a kernel is adding one entry above it.

A kernel takes rows (tokens, in) already in the layer's compute dtype (engine.kernels.layouts fixes it at
pack time, and stores the scales in it) and returns (tokens, out) in that dtype, without the bias. The
layer's call around it (`bind`) adds the bias and, only when the activations come in another dtype, casts
them in and the result out: the result is always in the activations' dtype.

The hot path. The first call of a layer with a given (rows, dtype) resolves its kernel and binds it; the
layer keeps the bound call, so every later call is one dict lookup and the kernel itself: no table walk,
no casts when dtypes match, nothing allocated but the output (engine.speed.ops counts the aten ops;
tests/engine/kernels/test_call_path.py holds every layout to a small fixed number).

Safe fallback. A fast kernel that raises, or that returns NaN / inf where the reference does not, is
turned off for the rest of the process for its (kernel, layout, device type): that call returns the
reference result, every bound call of every layer is dropped and bound again (without it), and one
message naming the kernel and the reason is kept (`failures()`, which the Speed page shows). Out-of-
memory errors are re-raised: they are not a kernel's fault. An asynchronous CUDA fault (an illegal memory
access) cannot be caught: it poisons the process. The non-finite check costs a host sync, so it runs on
the first call of each kernel per (layout, device, weight shape, group size, input dtype) only; later
calls are trusted. A non-finite output whose reference is non-finite too (NaN or inf in the input) is not
the kernel's fault: it is returned as is and checked again next time.

Under torch.compile (engine.runtime.decode) `run_traced` calls the kernel the eager calls chose for that
bucket (kept per layer in a list filled in place, so later choices for other buckets do not invalidate
the compiled graph), with no check and no timing, so the compiled step keeps one graph.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from engine.kernels import choice, cpu, reference

GEMV_MAX_ROWS = (
    16  # a GEMV reads the whole weight once per row: beyond this it cannot win, so it is not timed
)
MAX_BOUND_CALLS = 64  # (rows, dtype) pairs a layer keeps bound; prefill lengths vary


@dataclass(frozen=True)
class KernelEntry:
    name: str  # what kernel_for returns and the Speed page shows
    applies: Callable[[object, str, int], bool]  # (layer, device_type, tokens) -> can it run here?
    kernel: Callable[[Tensor, object], Tensor]  # (rows in compute dtype, layer) -> (tokens, out), no bias

    def __deepcopy__(self, memo) -> KernelEntry:  # a copied layer keeps the table's very entries
        return self


_CUDA = None


def _cuda():
    global _CUDA
    if _CUDA is None:
        from engine.kernels import cuda  # only ever imported for tensors on a GPU

        _CUDA = cuda
    return _CUDA


# -- the kernels: rows (tokens, in) in the layer's compute dtype -> (tokens, out), no bias ---------------------


def _cpu_int4(rows: Tensor, layer) -> Tensor:
    return torch.ops.aten._weight_int4pack_mm_for_cpu(
        rows, layer.qweight, layer.group_size, layer.scales_and_zeros
    )


def _int8pack(rows: Tensor, layer) -> Tensor:  # aten's int8 weight-only op (CPU; CUDA where torch has it)
    return torch.ops.aten._weight_int8pack_mm(rows, layer.qweight, layer.scales)


def _cpu_w8a8(rows: Tensor, layer) -> Tensor:
    return cpu.w8a8_mm(rows, layer.qweight.t(), layer.scales)


def _cuda_int_mm(rows: Tensor, layer) -> Tensor:
    return _cuda().w8a8_mm(rows, layer.qweight, layer.scales)


def _tinygemm(rows: Tensor, layer) -> Tensor:
    return torch.ops.aten._weight_int4pack_mm(rows, layer.qweight, layer.group_size, layer.scales_and_zeros)


def _triton_w4a16(regime: str):
    def kernel(rows: Tensor, layer) -> Tensor:
        zeros = getattr(layer, "zeros", None)
        return _cuda().w4a16(rows, layer.qweight, layer.scales, zeros, layer.group_size, regime=regime)

    return kernel


def _triton_w8a16(regime: str):
    def kernel(rows: Tensor, layer) -> Tensor:
        return _cuda().w8a16(rows, layer.qweight, layer.scales, regime=regime)

    return kernel


def _dequant_matmul(rows: Tensor, layer) -> Tensor:
    if layer.layout == "nibbles":
        zeros = getattr(layer, "zeros", None)
        weight = reference.dequantize_nibbles(
            layer.qweight, layer.scales, zeros, layer.group_size, rows.dtype
        )
    else:  # int8_rows: scales stored in the compute dtype
        weight = layer.qweight.to(rows.dtype) * layer.scales.unsqueeze(-1)
    return F.linear(rows, weight)


def _reference(rows: Tensor, layer) -> Tensor:
    return reference.layer_forward(rows, layer, bias=False)


# -- when each can run ---------------------------------------------------------------------------------------


def _triton(layer, device_type: str, tokens: int, layout: str, max_rows: int | None = None) -> bool:
    if device_type != "cuda" or layer.layout != layout or (max_rows is not None and tokens > max_rows):
        return False
    if layout == "int8_rows" and layer.fmt != "W8A16":
        return False
    cuda = _cuda()
    return cuda.triton_available() and (layout != "nibbles" or cuda.triton_group_ok(layer.group_size))


REFERENCE = KernelEntry("reference", lambda layer, dev, t: True, _reference)
ENTRIES: list[KernelEntry] = [
    KernelEntry("cpu_int4", lambda layer, dev, t: dev == "cpu" and layer.layout == "cpu_int4pack", _cpu_int4),
    KernelEntry(
        "cpu_int8",
        lambda layer, dev, t: dev == "cpu" and layer.layout == "int8_rows" and layer.fmt == "W8A16",
        _int8pack,
    ),
    KernelEntry(
        "cpu_w8a8",
        lambda layer, dev, t: dev == "cpu" and layer.layout == "int8_rows" and layer.fmt == "W8A8",
        _cpu_w8a8,
    ),
    KernelEntry("tinygemm", lambda layer, dev, t: dev == "cuda" and layer.layout == "tinygemm", _tinygemm),
    KernelEntry(
        "cuda_int8pack",
        lambda layer, dev, t: dev == "cuda" and layer.layout == "int8_rows" and layer.fmt == "W8A16",
        _int8pack,
    ),
    KernelEntry(
        "cuda_int_mm", lambda layer, dev, t: dev == "cuda" and layer.layout == "int8_cols", _cuda_int_mm
    ),
    KernelEntry(
        "triton_w4a16_gemv",
        lambda layer, dev, t: _triton(layer, dev, t, "nibbles", GEMV_MAX_ROWS),
        _triton_w4a16("gemv"),
    ),
    KernelEntry(
        "triton_w4a16_gemm", lambda layer, dev, t: _triton(layer, dev, t, "nibbles"), _triton_w4a16("gemm")
    ),
    KernelEntry(
        "triton_w8a16_gemv",
        lambda layer, dev, t: _triton(layer, dev, t, "int8_rows", GEMV_MAX_ROWS),
        _triton_w8a16("gemv"),
    ),
    KernelEntry(
        "triton_w8a16_gemm", lambda layer, dev, t: _triton(layer, dev, t, "int8_rows"), _triton_w8a16("gemm")
    ),
    KernelEntry(
        "dequant_matmul",
        lambda layer, dev, t: (
            layer.layout == "nibbles" or (layer.layout == "int8_rows" and layer.fmt == "W8A16")
        ),
        _dequant_matmul,
    ),
    REFERENCE,  # last: applies to everything
]

_FAILED: dict[tuple[str, str, str], str] = {}  # (kernel, layout, device type) -> the message, in order
_CHECKED: set[tuple] = set()  # kernels whose first output for a layer shape and dtype was finite
_BOUND: weakref.WeakSet = weakref.WeakSet()  # layers holding bound calls, dropped after a failure


def failures() -> list[str]:
    """One message per fast kernel turned off in this process (which kernel, on what, and why)."""
    return list(_FAILED.values())


def forget_failures() -> None:
    """Turn every kernel back on, check first outputs again and re-bind every layer (tests)."""
    _FAILED.clear()
    _CHECKED.clear()
    _unbind_all()


def _unbind_all() -> None:
    for layer in list(_BOUND):
        layer._calls.clear()
        layer._by_bucket[:] = [None] * len(layer._by_bucket)


# -- choosing ---------------------------------------------------------------------------------------------------


def _check_device(layer, device_type: str) -> None:
    stored = layer.qweight.device.type
    if device_type != stored:
        raise RuntimeError(
            f"this layer was packed for {stored} ({layer.layout}); input on "
            f"{device_type}: rebuild the packed model on that device instead of moving it"
        )


def candidates(layer, device_type: str, tokens: int) -> list[KernelEntry]:
    """The fast kernels (the reference left out) that can run this call and have not failed here."""
    return [
        entry
        for entry in ENTRIES
        if entry is not REFERENCE
        and (entry.name, layer.layout, device_type) not in _FAILED
        and entry.applies(layer, device_type, tokens)
    ]


def select(layer, device_type: str, tokens: int, measure: bool = True) -> KernelEntry:
    """The entry a call with `tokens` rows on `device_type` runs: the measured fastest candidate, or the
    reference when none can (or every one was refused or has failed)."""
    _check_device(layer, device_type)
    found = candidates(layer, device_type, tokens)
    return choice.choose(layer, device_type, tokens, found, measure) or REFERENCE


# -- binding: the call a layer keeps per (rows, dtype) ---------------------------------------------------------


def _finish(entry: KernelEntry, layer, x_dtype: torch.dtype):
    """`entry`'s kernel as a call (rows, layer) -> (tokens, out) in x_dtype, bias added, in as few ops as
    the dtypes allow: none beyond the kernel (and the bias) when x comes in the compute dtype."""
    kernel, compute = entry.kernel, layer.compute_dtype
    bias = layer.bias
    if entry is REFERENCE:
        call = reference.layer_forward  # x's dtype in and out, the bias added in float32
    elif x_dtype == compute:
        call = kernel if bias is None else (lambda rows, layer: kernel(rows, layer).add_(layer.bias))
    elif bias is None:

        def call(rows, layer):
            return kernel(rows.to(compute), layer).to(x_dtype)

    elif bias.dtype == x_dtype and torch.promote_types(compute, x_dtype) == x_dtype:

        def call(rows, layer):  # the bias add casts up: one op for both
            return torch.add(kernel(rows.to(compute), layer), layer.bias)

    else:

        def call(rows, layer):
            return kernel(rows.to(compute), layer).add_(layer.bias).to(x_dtype)

    return call


def bind(layer, rows: Tensor, x_dtype: torch.dtype):
    """Resolve the kernel for a call with these rows and dtype and return the call the layer keeps; on the
    kernel's first call for its shape and dtype, a checking call that keeps the plain one once it passed."""
    device_type, tokens = rows.device.type, rows.shape[0]
    entry = select(layer, device_type, tokens)
    call = _finish(entry, layer, x_dtype)
    key = (tokens, x_dtype)
    slot = choice.BUCKETS.index(choice.bucket(tokens))
    checked = (
        entry.name,
        layer.layout,
        device_type,
        layer.out_features,
        layer.in_features,
        layer.group_size,
        x_dtype,
    )

    def keep() -> None:
        if len(layer._calls) >= MAX_BOUND_CALLS:
            layer._calls.clear()
        layer._calls[key] = call
        layer._by_bucket[slot] = entry
        _BOUND.add(layer)

    if entry is REFERENCE or checked in _CHECKED:
        keep()
        return call

    def first_call(rows: Tensor, layer) -> Tensor:
        try:
            y = call(rows, layer)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001  (any kernel failure means: use the reference)
            _fail(entry, layer, device_type, f"raised {type(exc).__name__}: {exc}")
            return reference.layer_forward(rows, layer)
        finite = torch.isfinite(y)
        if bool(finite.all()):  # the one host sync, on this first call only
            _CHECKED.add(checked)
            keep()
            return y
        expected = reference.layer_forward(rows, layer)
        if bool((~finite & torch.isfinite(expected)).any()):
            _fail(entry, layer, device_type, "returned NaN or inf where the reference is finite")
            return expected
        return y  # the input itself was not finite: nothing to blame the kernel for

    return first_call


def recover(layer, rows: Tensor, exc: Exception) -> Tensor:
    """A bound call raised after its first call: turn its kernel off and return the reference result."""
    entry = layer._by_bucket[choice.BUCKETS.index(choice.bucket(rows.shape[0]))] or REFERENCE
    if entry is REFERENCE:
        raise exc
    _fail(entry, layer, rows.device.type, f"raised {type(exc).__name__}: {exc}")
    return reference.layer_forward(rows, layer)


def _fail(entry: KernelEntry, layer, device_type: str, reason: str) -> None:
    key = (entry.name, layer.layout, device_type)
    if key not in _FAILED:
        _FAILED[key] = (
            f"kernel {entry.name} ({layer.fmt}, {layer.layout} layout, {device_type}) {reason}; "
            "running the next fastest kernel (or the reference: dequantize + matmul) instead from now on"
        )
    _unbind_all()


def run(layer, x: Tensor) -> Tensor:
    """y = x @ W^T + b for a packed layer, x (..., in) -> (..., out) in x's dtype, without a kept call."""
    rows = x.reshape(-1, layer.in_features)
    y = bind(layer, rows, x.dtype)(rows, layer)
    return y.view(*x.shape[:-1], layer.out_features)


def run_traced(layer, x: Tensor) -> Tensor:
    """`run` under torch.compile: the kernel the eager calls chose for this bucket, nothing timed or checked."""
    rows = x.reshape(-1, layer.in_features)
    entry = layer._by_bucket[choice.BUCKETS.index(choice.bucket(rows.shape[0]))]
    if entry is None:
        found = candidates(layer, rows.device.type, rows.shape[0])
        entry = found[0] if found else REFERENCE
    y = _finish(entry, layer, x.dtype)(rows, layer)
    return y.view(*x.shape[:-1], layer.out_features)
