"""Packed quantized linear layers that run real low-bit kernels, and the method that swaps them in.

`QuantLinear` holds its weight packed (int4 two per byte with group scales, or int8 per channel) in
buffers, so `engine.sizing.estimate.measured_bytes` sees the real footprint. The codes come from our primitives
(`engine.quant.primitives.quantize`), so a packed model sits on exactly the grid of the fake-quant RTN model;
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

import copy
import time
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from engine.kernels import cpu, reference
from engine.methods.registry import LayerReport, Progress, quantize_model, register
from engine.quant.linear import FakeQuantLinear, linear_names, replace_linears
from engine.quant.metrics import sqnr_db
from engine.quant.primitives import pack_int4, quantize, unpack_int4
from engine.quant.schemes import QuantScheme, check_shape

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
        qt = quantize(weight.to("cpu"), weights)  # our grid; the primitives run on the CPU
        bias = None if linear.bias is None else linear.bias.detach().clone()
        if fmt == "W4A16":
            codes, scales, zeros = reference.int4_from_qtensor(qt)
        else:
            (codes, scales), zeros = reference.int8_from_qtensor(qt), None
        return cls.pack(fmt, codes, scales, zeros, bias, weight.device, weights, activations)

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
        if fmt == "W4A16":  # unsigned codes with integer zeros -> the kernels' (code - 8) * s + z form
            zeros = (reference.INT4_MIDPOINT - c.zeros.float()) * c.scales
            codes, scales = c.codes.to(torch.uint8), c.scales
        else:  # symmetric int8: int_codes offset the codes by 128
            codes, scales, zeros = (c.codes - c.zeros).to(torch.int8), c.scales.reshape(-1), None
        return cls.pack(
            fmt, codes, scales, zeros, bias, module.weight.device, module.weight_scheme, module.act_scheme
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
    ) -> QuantLinear:
        """Lay codes in the plain formats of engine.kernels.reference out for `device`'s kernels."""
        out_features, in_features = codes.shape
        group = weights.group_size if fmt == "W4A16" else None
        if fmt == "W4A16":
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


def pack_refusal(model: nn.Module) -> str | None:
    """Why `pack_quantized_model` would refuse `model`, found without building anything: the first layer
    no kernel runs, and why; None when it packs."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    if not layers:
        kinds = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith("Linear")})
        return (
            "this model has no fake-quantized layers to pack (its linears are "
            f"{', '.join(kinds) or 'none'}); RTN, GPTQ, AWQ, QAT and SmoothQuant results can be packed"
        )
    for name, module in layers:
        reason = layer_refusal(module)
        if reason is not None:
            return f"{name}: {reason}"
    return None


def pack_quantized_model(model: nn.Module, progress: Progress | None = None) -> nn.Module:
    """A copy of a method's quantized model (RTN, GPTQ, AWQ, QAT, SmoothQuant: FakeQuantLinear layers that
    kept their scales) with every quantized layer packed from its own integer codes, so it runs the real
    kernels with the weights the method chose. `model` is left untouched. ValueError naming the first
    layer no kernel runs, and why (NF4, 3-bit, per-tensor, act-order without static groups, ...).
    """
    reason = pack_refusal(model)
    if reason is not None:
        raise ValueError(reason)
    names = [name for name, module in model.named_modules() if isinstance(module, FakeQuantLinear)]
    packed: dict[str, QuantLinear] = {}
    for index, name in enumerate(names):
        try:
            packed[name] = QuantLinear.from_fake_quant(model.get_submodule(name))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
        if progress:
            progress((index + 1) / len(names), f"packing {name} ({index + 1}/{len(names)})")
    # deepcopy everything else; the memo hands back the packed layer wherever a fake one would be copied
    memo = {id(model.get_submodule(name)): layer for name, layer in packed.items()}
    return copy.deepcopy(model, memo)
