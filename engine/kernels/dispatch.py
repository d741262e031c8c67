"""Which kernel multiplies a packed layer: one ordered table, and a safe fallback to the reference.

`ENTRIES` is read top to bottom; the first entry whose `applies(layer, device_type, tokens)` holds runs
`kernel(rows, layer)` on rows (tokens, in) and returns (tokens, out) with the bias added. `applies` reads
the layer's layout (and, where a layout serves two formats, its format and group size). The last entry,
`reference` (dequantize the stored bytes, one float32 matmul: engine.kernels.reference), applies to
everything, so every layer runs somewhere. Adding a kernel is adding one entry above the reference.

On a CPU one packed aten op serves every batch (see engine.kernels.cpu): unpacking the int4 layout to
dequantize costs more per call than the packed kernel loses to a float matmul even at prefill sizes. On a
GPU the batch picks a Triton GEMV, a Triton GEMM, or dequantize-then-cuBLAS (engine.kernels.cuda).

Safe fallback. A fast kernel (Triton, tinygemm-style aten ops, a CPU packed op) that raises, or that
returns NaN / inf where the reference does not, is turned off for the rest of the process for its
(kernel, layout, device type): that call returns the reference result, every later call on such a layer
runs the reference, and one message naming the kernel and the reason is kept (`failures()`, which the
Speed page can show once). Out-of-memory errors are re-raised: they are not a kernel's fault. Only
errors raised at call time (a Triton compile or launch error, an op that refuses a shape or dtype) and
wrong values can be caught: an asynchronous CUDA fault (an illegal memory access) poisons the process.

The non-finite check costs a host sync (`isfinite(...).all()` is read on the host), so it runs only on
the first call of each kernel per (layout, device, weight shape, group size, input dtype); later calls
are trusted and add nothing to the hot path. A kernel that is right on its first call and wrong later is
not caught; the tests hold every kernel to the reference instead. A non-finite output whose reference is
non-finite too (NaN or inf in the input) is not the kernel's fault: it is returned as is and checked
again next time. Under torch.compile (engine.runtime.decode) the table is traced as plain Python and the
chosen kernel is called directly, with no check, so the compiled step keeps one graph; the eager prefill
before it has run (and checked) the same kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from engine.kernels import cpu, reference


@dataclass(frozen=True)
class KernelEntry:
    name: str  # what kernel_for returns and the Speed page shows
    applies: Callable[[object, str, int], bool]  # (layer, device_type, tokens) -> runs here?
    kernel: Callable[[Tensor, object], Tensor]  # (rows (tokens, in), layer) -> (tokens, out), bias added


def _cuda():
    from engine.kernels import cuda  # only ever imported for tensors on a GPU

    return cuda


def _plus_bias(y: Tensor, layer) -> Tensor:
    return y if layer.bias is None else y + layer.bias


# -- the kernels, as the table calls them --------------------------------------------------------------------


def _cpu_int4(rows: Tensor, layer) -> Tensor:
    return _plus_bias(cpu.int4_mm(rows, layer.qweight, layer.scales_and_zeros, layer.group_size), layer)


def _cpu_int8(rows: Tensor, layer) -> Tensor:
    return _plus_bias(cpu.int8_mm(rows, layer.qweight, layer.scales), layer)


def _cpu_w8a8(rows: Tensor, layer) -> Tensor:
    return _plus_bias(cpu.w8a8_mm(rows, layer.qweight.t(), layer.scales), layer)


def _cuda_int_mm(rows: Tensor, layer) -> Tensor:
    return _plus_bias(_cuda().w8a8_mm(rows, layer.qweight, layer.scales), layer)


def _triton_w4a16(rows: Tensor, layer) -> Tensor:
    zeros = getattr(layer, "zeros", None)
    return _plus_bias(_cuda().w4a16(rows, layer.qweight, layer.scales, zeros, layer.group_size), layer)


def _triton_w8a16(rows: Tensor, layer) -> Tensor:
    return _plus_bias(_cuda().w8a16(rows, layer.qweight, layer.scales), layer)


def _dequant_matmul(rows: Tensor, layer) -> Tensor:
    if layer.layout == "nibbles":
        zeros = getattr(layer, "zeros", None)
        weight = _cuda().dequantize_nibbles(layer.qweight, layer.scales, zeros, layer.group_size, rows.dtype)
    else:  # int8_rows
        weight = layer.qweight.to(rows.dtype) * layer.scales.to(rows.dtype).unsqueeze(-1)
    return _plus_bias(F.linear(rows, weight), layer)


def _reference(rows: Tensor, layer) -> Tensor:
    return reference.layer_forward(rows, layer)


# -- when each applies ---------------------------------------------------------------------------------------


def _triton(layer, device_type: str, tokens: int, layout: str, max_tokens: str) -> bool:
    if device_type == "cpu" or layer.layout != layout:
        return False
    cuda = _cuda()
    if not cuda.triton_available() or tokens > getattr(cuda, max_tokens):
        return False
    return layout != "nibbles" or cuda.triton_group_ok(layer.group_size)


REFERENCE = KernelEntry("reference", lambda layer, dev, t: True, _reference)
ENTRIES: list[KernelEntry] = [
    KernelEntry("cpu_int4", lambda layer, dev, t: dev == "cpu" and layer.layout == "cpu_int4pack", _cpu_int4),
    KernelEntry(
        "cpu_int8",
        lambda layer, dev, t: dev == "cpu" and layer.layout == "int8_rows" and layer.fmt == "W8A16",
        _cpu_int8,
    ),
    KernelEntry(
        "cpu_w8a8",
        lambda layer, dev, t: dev == "cpu" and layer.layout == "int8_rows" and layer.fmt == "W8A8",
        _cpu_w8a8,
    ),
    KernelEntry(
        "cuda_int_mm", lambda layer, dev, t: dev != "cpu" and layer.layout == "int8_cols", _cuda_int_mm
    ),
    KernelEntry(
        "triton_w4a16_gemv",
        lambda layer, dev, t: _triton(layer, dev, t, "nibbles", "GEMV_MAX_TOKENS"),
        _triton_w4a16,
    ),
    KernelEntry(
        "triton_w4a16_gemm",
        lambda layer, dev, t: _triton(layer, dev, t, "nibbles", "TRITON_GEMM_MAX_TOKENS"),
        _triton_w4a16,
    ),
    KernelEntry(
        "triton_w8a16_gemv",
        lambda layer, dev, t: _triton(layer, dev, t, "int8_rows", "GEMV_MAX_TOKENS"),
        _triton_w8a16,
    ),
    KernelEntry(
        "triton_w8a16_gemm",
        lambda layer, dev, t: _triton(layer, dev, t, "int8_rows", "TRITON_GEMM_MAX_TOKENS"),
        _triton_w8a16,
    ),
    KernelEntry(
        "dequant_matmul",
        lambda layer, dev, t: dev != "cpu" and layer.layout in ("nibbles", "int8_rows"),
        _dequant_matmul,
    ),
    REFERENCE,  # last: applies to everything
]

_FAILED: dict[tuple[str, str, str], str] = {}  # (kernel, layout, device type) -> the message, in order
_CHECKED: set[tuple] = set()  # kernels whose first output for a layer shape was finite


def failures() -> list[str]:
    """One message per fast kernel turned off in this process (which kernel, on what, and why)."""
    return list(_FAILED.values())


def forget_failures() -> None:
    """Turn every kernel back on and check first outputs again (tests; a fresh process does the same)."""
    _FAILED.clear()
    _CHECKED.clear()


def select(layer, device_type: str, tokens: int) -> KernelEntry:
    """The entry a call with `tokens` rows on `device_type` runs: the first that applies, or the
    reference when that one has failed before on this layout and device."""
    stored = layer.qweight.device.type
    if device_type != stored:
        raise RuntimeError(
            f"this layer was packed for {stored} ({layer.layout}); input on "
            f"{device_type}: rebuild the packed model on that device instead of moving it"
        )
    for entry in ENTRIES:
        if entry.applies(layer, device_type, tokens):
            if (entry.name, layer.layout, device_type) in _FAILED:
                return REFERENCE
            return entry
    raise RuntimeError("the kernel table has no entry for this layer (its last entry must be the reference)")


def _fail(entry: KernelEntry, layer, device_type: str, reason: str) -> None:
    key = (entry.name, layer.layout, device_type)
    if key not in _FAILED:
        _FAILED[key] = (
            f"kernel {entry.name} ({layer.fmt}, {layer.layout} layout, {device_type}) {reason}; "
            "running the reference kernel (dequantize + matmul) instead from now on"
        )


def run(layer, x: Tensor) -> Tensor:
    """y = x @ W^T + b for a packed layer, x (..., in) -> (..., out), through the table."""
    shape = x.shape
    rows = x.reshape(-1, shape[-1])  # (tokens, in)
    device_type = rows.device.type
    entry = select(layer, device_type, rows.shape[0])
    if torch.compiler.is_compiling() or entry is REFERENCE:
        y = entry.kernel(rows, layer)
    else:
        y = _guarded(entry, layer, rows, device_type)
    return y.view(*shape[:-1], layer.out_features)


def _guarded(entry: KernelEntry, layer, rows: Tensor, device_type: str) -> Tensor:
    """Run a fast kernel; on an error, or non-finite output on its first call per shape, the reference."""
    try:
        y = entry.kernel(rows, layer)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001  (any kernel failure means: use the reference)
        _fail(entry, layer, device_type, f"raised {type(exc).__name__}: {exc}")
        return REFERENCE.kernel(rows, layer)
    key = (
        entry.name,
        layer.layout,
        device_type,
        layer.out_features,
        layer.in_features,
        layer.group_size,
        rows.dtype,
    )
    if key in _CHECKED:
        return y
    finite = torch.isfinite(y)
    if bool(finite.all()):
        _CHECKED.add(key)
        return y
    expected = REFERENCE.kernel(rows, layer)
    if bool((~finite & torch.isfinite(expected)).any()):
        _fail(entry, layer, device_type, "returned NaN or inf where the reference is finite")
        return expected
    return y  # the input itself was not finite: nothing to blame the kernel for
