"""Packed quantized linear layers that run real low-bit kernels, and the method that swaps them in.

`QuantLinear` holds its weight packed (int4 two per byte with group scales, or int8 per channel) in
buffers, so `engine.memory.measured_bytes` sees the real footprint. The codes come from our primitives
(`engine.primitives.quantize`), so a packed model sits on exactly the grid of the fake-quant RTN model;
only the kernels' 16-bit copies of the scales round them further (see `engine.kernels.cpu`).

Formats (the names the Speed page uses):
    W4A16  int4 group-wise weights, sym or asym, 16-bit activations   QuantScheme(4, "int", ..., "group", g)
    W8A16  int8 per-channel symmetric weights                        QuantScheme(8, "int", True, "channel")
    W8A8   W8A16 weights and int8 per-token activations (dynamic)    activations=QuantScheme(8, ...channel)

The layout is chosen once, for the device the linear lives on; the kernel is chosen per call from the
device and the number of tokens (`kernel_for`). On a GPU that picks a GEMV, a Triton GEMM or
dequantize-then-cuBLAS by batch (engine.kernels.cuda). On a CPU one packed kernel serves every batch:
unpacking the int4 layout to dequantize costs 0.6-6.8 ms per SmolLM2 layer (one thread), more than the
packed kernel loses to an fp32 matmul even at 256 tokens (e.g. 6.8 ms vs 5.9 ms on 1536 x 576).
`reference_forward` dequantizes the stored bytes and runs one float matmul: the tests hold every kernel
to it. `PackedRTNConfig` registers the whole thing as a method (round to nearest, then pack), so
`quantize_model(model, PackedRTNConfig(scheme))` returns a new model and never touches the one given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.kernels import cpu, reference
from engine.methods.registry import LayerReport, Progress, quantize_model, register
from engine.metrics import sqnr_db
from engine.modules import linear_names, replace_linears
from engine.primitives import pack_int4, quantize, unpack_int4
from engine.schemes import QuantScheme, check_shape

FORMATS = ("W4A16", "W8A16", "W8A8")


def packed_format(weights: QuantScheme, activations: QuantScheme | None = None) -> str:
    """W4A16, W8A16 or W8A8 for schemes our kernels run; ValueError saying what would, otherwise."""
    hint = (
        "packed kernels run int4 group-wise weights (sym or asym), int8 per-channel symmetric weights, "
        "and those int8 weights with int8 per-token activations; use RTNConfig (fake quantization) to "
        "study other schemes"
    )
    if weights.format != "int" or weights.double_quant or weights.zero_kind != "int":
        raise ValueError(f"weights {weights.label}: {hint}")
    if weights.bits == 4 and weights.granularity == "group" and activations is None:
        return "W4A16"
    if weights.bits == 8 and weights.granularity == "channel" and weights.symmetric:
        if activations is None:
            return "W8A16"
        if (
            activations.format == "int"
            and activations.bits == 8
            and activations.symmetric
            and activations.granularity == "channel"
            and activations.clip_ratio == 1.0
        ):
            return "W8A8"
    acts = f" with activations {activations.label}" if activations else ""
    raise ValueError(f"weights {weights.label}{acts}: {hint}")


def _cuda():
    from engine.kernels import cuda  # only ever imported for tensors on a GPU

    return cuda


class QuantLinear(nn.Module):
    """y = x @ W^T + b with W packed; see the module docstring for formats, layouts and kernels."""

    def __init__(
        self,
        fmt: str,
        layout: str,  # how the buffers are laid out: cpu_int4pack, nibbles, int8_rows or int8_cols
        in_features: int,
        out_features: int,
        group_size: int | None,
        buffers: dict[str, Tensor],
        bias: Tensor | None,
        weight_scheme: QuantScheme,
        act_scheme: QuantScheme | None = None,
    ) -> None:
        super().__init__()
        self.fmt, self.layout = fmt, layout
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.weight_scheme, self.act_scheme = weight_scheme, act_scheme
        for name, tensor in buffers.items():
            self.register_buffer(name, tensor)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    # -- construction -----------------------------------------------------------------------------------

    @classmethod
    @torch.no_grad()
    def from_linear(
        cls, linear: nn.Linear, weights: QuantScheme, activations: QuantScheme | None = None
    ) -> QuantLinear:
        fmt = packed_format(weights, activations)
        weight = linear.weight.detach()
        device = weight.device
        out_features, in_features = weight.shape
        qt = quantize(weight.to("cpu"), weights)  # our grid; the primitives run on the CPU
        bias = None if linear.bias is None else linear.bias.detach().clone()
        group = weights.group_size if fmt == "W4A16" else None
        if fmt == "W4A16":
            codes, scales, zeros = reference.int4_from_qtensor(qt)
            if device.type == "cpu" and cpu.int4_supported(out_features, in_features, group) is None:
                packed, scales_and_zeros = cpu.pack_int4(codes, scales, zeros)
                layout, buffers = "cpu_int4pack", {"qweight": packed, "scales_and_zeros": scales_and_zeros}
            else:  # our portable layout: pack_int4 order, the one the Triton kernel and tinygemm read
                stored = weights.torch_scale_dtype
                layout = "nibbles"
                buffers = {
                    "qweight": pack_int4(codes).view(out_features, in_features // 2),
                    "scales": scales.to(stored),
                    "zeros": zeros.to(stored),
                }
                if weights.symmetric:  # all zeros: do not store them
                    del buffers["zeros"]
        else:
            codes, scales = reference.int8_from_qtensor(qt)
            if fmt == "W8A8":  # the int32 product is scaled in float32
                layout = "int8_rows" if device.type == "cpu" else "int8_cols"
                qweight = codes if device.type == "cpu" else codes.t().contiguous()  # cuBLAS wants (K, N)
                buffers = {"qweight": qweight, "scales": scales}
            else:
                scale_dtype = cpu.COMPUTE_DTYPE if device.type == "cpu" else weights.torch_scale_dtype
                layout, buffers = "int8_rows", {"qweight": codes, "scales": scales.to(scale_dtype)}
        buffers = {name: tensor.to(device) for name, tensor in buffers.items()}
        return cls(fmt, layout, in_features, out_features, group, buffers, bias, weights, activations)

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
        if self.fmt == "W4A16":
            if self.layout == "cpu_int4pack":
                scales, zeros = cpu.unpack_scales_and_zeros(self.scales_and_zeros)
                return {"codes": cpu.unpack_int4(self.qweight), "scales": scales, "zeros": zeros}
            shape = (self.out_features, self.in_features)
            scales = self.scales.float().cpu()
            zeros = self.zeros.float().cpu() if hasattr(self, "zeros") else torch.zeros_like(scales)
            return {
                "codes": unpack_int4(self.qweight.cpu().view(-1), shape),
                "scales": scales,
                "zeros": zeros,
            }
        codes = self.qweight.cpu() if self.layout == "int8_rows" else self.qweight.cpu().t()
        return {"codes": codes, "scales": self.scales.float().cpu()}

    def dequantized_weight(self) -> Tensor:
        """(out, in) float32 on the CPU: exactly the values the reference path multiplies by."""
        parts = self.codes_and_qparams()
        if self.fmt == "W4A16":
            return reference.dequantize_int4(parts["codes"], parts["scales"], parts["zeros"], self.group_size)
        return reference.dequantize_int8(parts["codes"], parts["scales"])

    # -- running ----------------------------------------------------------------------------------------

    def kernel_for(self, tokens: int, device: torch.device | str | None = None) -> str:
        """Name of the kernel a call with `tokens` rows runs (the Speed page shows it)."""
        device_type = torch.device(device).type if device is not None else self.qweight.device.type
        if device_type != self.qweight.device.type:
            raise RuntimeError(
                f"this layer was packed for {self.qweight.device.type} ({self.layout}); input on "
                f"{device_type}: rebuild the packed model on that device instead of moving it"
            )
        if device_type == "cpu":
            if self.fmt == "W8A8":
                return "cpu_w8a8"
            if self.fmt == "W8A16":
                return "cpu_int8"
            return "cpu_int4" if self.layout == "cpu_int4pack" else "reference"
        return _cuda().kernel_for(self.fmt, tokens, self.group_size)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])  # (tokens, in)
        kernel = self.kernel_for(rows.shape[0], rows.device)
        if kernel == "cpu_int4":
            y = cpu.int4_mm(rows, self.qweight, self.scales_and_zeros, self.group_size)
        elif kernel == "cpu_int8":
            y = cpu.int8_mm(rows, self.qweight, self.scales)
        elif kernel == "cpu_w8a8":
            y = cpu.w8a8_mm(rows, self.qweight.t(), self.scales)
        elif kernel == "reference":
            return self.reference_forward(x)
        else:
            y = _cuda().run(kernel, self, rows)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def reference_forward(self, x: Tensor) -> Tensor:
        """Dequantize the stored bytes and multiply in float32: what every kernel must match."""
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).cpu()
        parts = self.codes_and_qparams()
        bias = None if self.bias is None else self.bias.cpu()
        if self.fmt == "W4A16":
            y = reference.int4_matmul(rows, **parts, group_size=self.group_size, bias=bias)
        elif self.fmt == "W8A16":
            y = reference.int8_matmul(rows, **parts, bias=bias)
        else:
            y = reference.w8a8_matmul(rows, **parts, bias=bias)
        return y.to(x.device).view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        acts = self.act_scheme.label if self.act_scheme else "16-bit"
        return (
            f"in={self.in_features}, out={self.out_features}, {self.fmt}, "
            f"weights={self.weight_scheme.label}, "
            f"activations={acts}, layout={self.layout}, {self.bits_per_weight:.3f} bits/weight"
        )


# -- the method ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackedRTNConfig:
    weights: QuantScheme  # int4 group-wise or int8 per-channel symmetric (packed_format says which run)
    activations: QuantScheme | None = None  # int8 per-token symmetric for W8A8; None keeps 16-bit inputs

    def __post_init__(self) -> None:
        packed_format(self.weights, self.activations)  # fail at construction, with the reason

    @property
    def label(self) -> str:
        return f"{packed_format(self.weights, self.activations)} packed ({self.weights.label})"


@register(PackedRTNConfig)
def packed_rtn(model, config: PackedRTNConfig, calib, progress) -> list[LayerReport]:
    for name in linear_names(model):  # check every shape before touching anything
        try:
            check_shape(config.weights, tuple(model.get_submodule(name).weight.shape))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
    reports: list[LayerReport] = []

    def make(linear: nn.Linear, name: str) -> QuantLinear:
        start = time.perf_counter()
        packed = QuantLinear.from_linear(linear, config.weights, config.activations)
        with torch.no_grad():
            sqnr = sqnr_db(linear.weight.detach().float().cpu(), packed.dequantized_weight())
        detail = {"format": packed.fmt, "layout": packed.layout, "decode kernel": packed.kernel_for(1)}
        reports.append(
            LayerReport(
                name, packed.bits_per_weight, sqnr, seconds=time.perf_counter() - start, detail=detail
            )
        )
        return packed

    replace_linears(model, make, progress=progress)
    return reports


def to_quant_linears(
    model: nn.Module,
    weights: QuantScheme,
    activations: QuantScheme | None = None,
    progress: Progress | None = None,
) -> nn.Module:
    """A new model with every linear (but the output head) packed; `model` itself is left untouched."""
    return quantize_model(model, PackedRTNConfig(weights, activations), progress=progress).model
