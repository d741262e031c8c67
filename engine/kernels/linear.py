"""Packed quantized linear layers that run real low-bit kernels.

`QuantLinear` holds its weight packed (int4 two per byte with group scales, or int8 per channel) in
buffers, so `engine.sizing.estimate.measured_bytes` sees the real footprint. The codes come from our primitives
(`engine.quant.primitives.quantize`), so a packed model sits on exactly the grid of the fake-quant RTN model;
only the kernels' 16-bit copies of the scales round them further (see `engine.kernels.cpu`).

Formats (the names the Speed page uses; engine.kernels.formats):
    W4A16  int4 group-wise weights, sym or asym, 16-bit activations   QuantScheme(4, "int", ..., "group", g)
    W8A16  int8 per-channel symmetric weights                        QuantScheme(8, "int", True, "channel")
    W8A8   W8A16 weights and int8 per-token activations (dynamic)    activations=QuantScheme(8, ...channel)

Three separate choices: the format (what is multiplied), the layout (how its bits are stored:
engine.kernels.layouts, chosen once at pack time for the device the linear lives on, by measurement where
several fit) and the kernel (how they are multiplied: engine.kernels.dispatch lists what can run,
engine.kernels.choice times the candidates once per device and batch bucket, the reference is the
fallback). The layout fixes the compute dtype and stores the scales in it; the result always comes back
in the activations' dtype. A layer keeps the call it bound per (rows, dtype), so a forward after the first
is a dict lookup and the kernel. `reference_forward` dequantizes the stored bytes and runs one float
matmul: the tests hold every kernel to it. `to_quant_linears` packs a whole model (engine.methods.packed
wraps the same packing as a method, `PackedRTNConfig`, with a per-layer report).
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from engine._types import Progress, require_free
from engine.kernels import dispatch, reference
from engine.kernels.choice import choose_layout
from engine.kernels.formats import FORMATS, format_named, packed_format
from engine.kernels.layouts import fitting_layouts, layout_named
from engine.quant.linear import FakeQuantLinear, linear_names, replace_linears
from engine.quant.primitives import quantize
from engine.quant.schemes import QuantScheme, check_shape

__all__ = [
    "FORMATS",
    "QuantLinear",
    "check_linear_shapes",
    "layer_refusal",
    "packed_format",
    "to_quant_linears",
]


class QuantLinear(nn.Module):
    """y = x @ W^T + b with W packed; see the module docstring for formats, layouts and kernels."""

    def __init__(
        self,
        fmt: str,
        layout: str,  # how the buffers are laid out (engine.kernels.layouts)
        in_features: int,
        out_features: int,
        group_size: int | None,
        buffers: dict[str, Tensor],
        bias: Tensor | None,
        weight_scheme: QuantScheme,
        act_scheme: QuantScheme | None = None,
        compute_dtype: torch.dtype = torch.float32,  # what the kernels take and return (the layout's)
    ) -> None:
        super().__init__()
        self.fmt, self.layout = fmt, layout
        self.weight_format, self.storage = format_named(fmt), layout_named(layout)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.weight_scheme, self.act_scheme = weight_scheme, act_scheme
        self.compute_dtype = compute_dtype
        for name, tensor in buffers.items():
            self.register_buffer(name, tensor)
        # the bias stays in the model's dtype: added to a compute-dtype result it casts it up in one op
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self._calls: dict = {}  # (rows, dtype) -> the bound call (engine.kernels.dispatch.bind)
        self._by_bucket: list = [None] * len(dispatch.choice.BUCKETS)  # chosen entry per batch bucket

    # -- construction -----------------------------------------------------------------------------------

    @classmethod
    @torch.no_grad()
    def from_linear(
        cls,
        linear: nn.Linear,
        weights: QuantScheme,
        activations: QuantScheme | None = None,
        layout: str | None = None,
    ) -> QuantLinear:
        """Pack `linear` on its device; it expects activations in its weight's dtype. `layout` forces a
        layout (engine.kernels.choice times each); None picks one (see `pack`)."""
        fmt = packed_format(weights, activations)
        weight = linear.weight.detach()
        qt = quantize(weight.to("cpu"), weights)  # our grid; the primitives run on the CPU
        bias = None if linear.bias is None else linear.bias.detach().clone()
        codes, scales, zeros = format_named(fmt).from_qtensor(qt)
        return cls.pack(
            fmt, codes, scales, zeros, bias, weight.device, weights, activations, weight.dtype, layout
        )

    @classmethod
    @torch.no_grad()
    def from_fake_quant(cls, module: FakeQuantLinear) -> QuantLinear:
        """Pack a method's fake-quantized layer (RTN, GPTQ, AWQ, QAT, SmoothQuant) from the integer codes
        it kept, on the device its weight is on: the packed layer holds the very grid values the method
        chose, not a re-rounding of them. ValueError, with the reason, for layers no kernel runs."""
        from engine.models.export import ExportError, int_codes  # export imports engine.quant.linear only

        reason = layer_refusal(module)
        if reason is not None:
            raise ValueError(reason)
        fmt = packed_format(module.weight_scheme, module.act_scheme)
        on_cpu = SimpleNamespace(  # int_codes reads these; its arithmetic runs on the CPU
            weight=module.weight.detach().cpu(),
            scale=None if module.scale is None else module.scale.cpu(),
            zero_point=None if module.zero_point is None else module.zero_point.cpu(),
            g_idx=None if module.g_idx is None else module.g_idx.cpu(),
            weight_scheme=module.weight_scheme,
        )
        try:
            c = int_codes(on_cpu)
        except ExportError as exc:
            raise ValueError(str(exc)) from exc
        bias = None if module.bias is None else module.bias.detach().clone()
        codes, scales, zeros = format_named(fmt).from_int_codes(c)
        return cls.pack(
            fmt,
            codes,
            scales,
            zeros,
            bias,
            module.weight.device,
            module.weight_scheme,
            module.act_scheme,
            module.weight.dtype,
        )

    @classmethod
    def pack(
        cls,
        fmt: str,
        codes: Tensor,  # W4A16: (N, K) uint8 in [0, 15]; W8A16 / W8A8: (N, K) int8
        scales: Tensor,  # W4A16: (N, K / group) float; int8: (N,)
        zeros: Tensor | None,  # W4A16: (N, K / group) float (reference.py's form); int8: None
        bias: Tensor | None,
        device: torch.device,
        weights: QuantScheme,
        activations: QuantScheme | None,
        io_dtype: torch.dtype = torch.float32,
        layout: str | None = None,
    ) -> QuantLinear:
        """Lay codes in the plain formats of engine.kernels.reference out for `device`'s kernels, for a
        model whose activations come in `io_dtype`. The layout: `layout` if given, else the one that fits,
        else the one whose fastest kernel is fastest at one row on this device (engine.kernels.choice)."""
        out_features, in_features = codes.shape
        group = weights.group_size if format_named(fmt).grouped else None
        device = torch.device(device)
        io_dtype = io_dtype if io_dtype.is_floating_point else torch.float32
        if layout is None:
            fitting = [f.name for f in fitting_layouts(fmt, device.type, out_features, in_features, group)]
            layout = fitting[0]
            if len(fitting) > 1:
                layout = choose_layout(
                    fitting,
                    fmt,
                    device.type,
                    weights,
                    activations,
                    io_dtype,
                    group,
                    build=cls.from_linear,
                    candidates=dispatch.candidates,
                )
        storage = layout_named(layout)
        if not storage.fits(fmt, device.type, out_features, in_features, group):
            raise ValueError(f"the {layout} layout does not store {fmt} on {device.type} at this shape")
        compute = storage.compute_dtype(fmt, device.type, io_dtype)
        buffers = storage.pack(fmt, codes, scales, zeros, weights, device, compute)
        bias = None if bias is None else bias.to(device, io_dtype)
        return cls(
            fmt, layout, in_features, out_features, group, buffers, bias, weights, activations, compute
        )

    # -- what is stored ---------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    @property
    def bits_per_weight(self) -> float:
        """Real storage of the packed weight with its scales (and zeros), per weight."""
        return 8 * self.nbytes / (self.in_features * self.out_features)

    def codes_and_qparams(self) -> dict[str, Tensor]:
        """The stored weight in the plain format of engine.kernels.reference, on the CPU."""
        return self.storage.unpack(self)

    def dequantized_weight(self) -> Tensor:
        """(out, in) float32 on the CPU: exactly the values the reference path multiplies by."""
        return self.weight_format.dequantize(self.codes_and_qparams(), self.group_size)

    # -- running ----------------------------------------------------------------------------------------

    def kernel_for(self, tokens: int, device: torch.device | str | None = None) -> str:
        """Name of the kernel a call with `tokens` rows runs (the Speed page shows it)."""
        device_type = torch.device(device).type if device is not None else self.qweight.device.type
        return dispatch.select(self, device_type, tokens).name

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return dispatch.run_traced(self, x)
        rows = x.reshape(-1, self.in_features)  # a view when x is contiguous
        call = self._calls.get((rows.shape[0], x.dtype))
        if call is None:
            call = dispatch.bind(self, rows, x.dtype)
        try:
            y = call(rows, self)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001  (a kernel failing after its first call: the reference)
            y = dispatch.recover(self, rows, exc)
        return y.view(*x.shape[:-1], self.out_features)

    def kernel_call(self, x: Tensor):
        """A zero-argument callable running only the kernel a forward of `x` runs, on `x` prepared once
        (rows in the compute dtype), without the bias: what "kernel time" times, beside a forward's."""
        rows = x.reshape(-1, self.in_features).to(self.compute_dtype).contiguous()
        entry = dispatch.select(self, rows.device.type, rows.shape[0])
        if entry is dispatch.REFERENCE:
            return lambda: dispatch.REFERENCE.kernel(rows, self)
        kernel = entry.kernel
        return lambda: kernel(rows, self)

    def reference_forward(self, x: Tensor) -> Tensor:
        """Dequantize the stored bytes and multiply in float32: what every kernel must match."""
        return reference.layer_forward(x, self)

    def reference_matmul(self, rows: Tensor) -> Tensor:
        """rows (tokens, in) @ W^T in float32 on the CPU, no bias: what engine.kernels.choice checks with."""
        return reference.layer_forward(rows.float(), self, bias=False).cpu()

    def extra_repr(self) -> str:
        acts = self.act_scheme.label if self.act_scheme else "16-bit"
        return (
            f"in={self.in_features}, out={self.out_features}, {self.fmt}, "
            f"weights={self.weight_scheme.label}, "
            f"activations={acts}, layout={self.layout}, computes in {str(self.compute_dtype)[6:]}, "
            f"{self.bits_per_weight:.3f} bits/weight"
        )


# -- whole models ------------------------------------------------------------------------------------------


def check_linear_shapes(model: nn.Module, weights: QuantScheme) -> None:
    """ValueError naming the first linear (but the output head) whose shape `weights` does not fit."""
    for name in linear_names(model):
        try:
            check_shape(weights, tuple(model.get_submodule(name).weight.shape))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc


def to_quant_linears(
    model: nn.Module,
    weights: QuantScheme,
    activations: QuantScheme | None = None,
    progress: Progress | None = None,
) -> nn.Module:
    """A new model with every linear (but the output head) packed; `model` itself is left untouched.

    The packing `engine.methods.packed.PackedRTNConfig` runs as a method, without its per-layer report
    (so this package never imports engine.methods)."""
    packed_format(weights, activations)  # refuse unsupported schemes, with the reason, before copying
    check_linear_shapes(model, weights)
    tensors = [*model.parameters(), *model.buffers()]
    require_free(
        1.3 * sum(t.numel() * t.element_size() for t in tensors),  # the copy, plus transients
        next(model.parameters()).device,
        "Quantizing makes a copy of the model",
        "Close other quantized variants (they are evicted oldest first), use a smaller model, or load it "
        "in a 16-bit dtype.",
    )
    copied = copy.deepcopy(model)
    copied.eval()
    return replace_linears(
        copied, lambda linear, name: QuantLinear.from_linear(linear, weights, activations), progress=progress
    )


def layer_refusal(module: FakeQuantLinear) -> str | None:
    """Why no packed kernel runs this fake-quantized layer, from its schemes and kept scales alone (its
    codes are checked against its grid while packing); None when one does."""
    if module.weight_scheme is None:
        return "this layer's weights are not quantized: there is nothing to pack"
    try:
        packed_format(module.weight_scheme, module.act_scheme)
    except ValueError as exc:
        return str(exc)
    if module.scale is None:
        return "this layer did not keep its scales"
    group = module.weight_scheme.group_size
    if (
        module.g_idx is not None
        and group is not None
        and not torch.equal(module.g_idx.cpu().long(), torch.arange(module.in_features) // group)
    ):
        return (
            "act-order GPTQ without static groups reads its groups out of order (g_idx); the packed "
            "kernels need contiguous groups (GPTQ's static groups give them)"
        )
    return None
