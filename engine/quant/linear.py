"""Quantized linear layers and the one function that swaps them into a model.

`FakeQuantLinear` holds its weight already quantized and dequantized (so any kernel-free device runs it)
and, optionally, quantizes its input per token on the fly (dynamic activation quantization, the "A" in
W8A8 / W4A8 / W4A4). This is how accuracy studies (Qllm-Eval, SmoothQuant's and GPTQ's papers) measure
quality; real memory savings and speed come from the packed kernels of `engine.kernels` (issue 8).
`replace_linears(model, make, filter_fn)` follows torchao's `quantize_(model, config, filter_fn)` shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from engine._types import Progress
from engine.quant.primitives import QParams, fake_quantize, fake_quantize_tokens, quantize
from engine.quant.schemes import QuantScheme, bits_per_weight


class FakeQuantLinear(nn.Module):
    """y = Q_a(x) @ Q_w(W)^T + b, with Q_w applied once at construction and Q_a per call, per token."""

    def __init__(
        self,
        weight: Tensor,  # (out_features, in_features), already fake-quantized
        bias: Tensor | None,
        weight_scheme: QuantScheme | None,  # for reporting bits; None: the weight is unquantized
        act_scheme: QuantScheme | None = None,  # per-token dynamic quantization of the input
        qparams: QParams | None = None,  # the scale (and zero point) the weight was quantized with
        g_idx: Tensor | None = None,  # (in_features,) group of each input column when not in order
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.weight_scheme = weight_scheme
        self.act_scheme = act_scheme
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        # Kept so the weight can be exported as integer codes (engine.models.export); not part of state_dict.
        scale, zero = qparams if qparams is not None else (None, None)
        self.register_buffer("scale", None if scale is None else scale.float(), persistent=False)
        self.register_buffer("zero_point", None if zero is None else zero.float(), persistent=False)
        self.register_buffer("g_idx", g_idx, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.act_scheme is not None:
            shape = x.shape
            # (tokens, in) rows; a block scheme ("fp8_e4m3 block128") runs in 1 x 128 groups per token
            x = fake_quantize_tokens(x.reshape(-1, shape[-1]), self.act_scheme).view(shape)
        return nn.functional.linear(x, self.weight, self.bias)

    @property
    def bits_per_weight(self) -> float:
        if self.weight_scheme is None:
            return float(self.weight.element_size() * 8)
        return bits_per_weight(self.weight_scheme, self.in_features, self.out_features)

    def extra_repr(self) -> str:
        w = self.weight_scheme.label if self.weight_scheme else "unquantized"
        a = self.act_scheme.label if self.act_scheme else "unquantized"
        return f"in={self.in_features}, out={self.out_features}, weights={w}, activations={a}"


def default_filter(module: nn.Module, name: str) -> bool:
    """Quantize every linear layer except the output head (kept 16-bit by every method we mirror)."""
    return isinstance(module, nn.Linear) and not name.endswith("lm_head")


def linear_names(model: nn.Module, filter_fn: Callable[[nn.Module, str], bool] = default_filter) -> list[str]:
    return [name for name, module in model.named_modules() if filter_fn(module, name)]


def replace_linears(
    model: nn.Module,
    make: Callable[[nn.Linear, str], nn.Module],
    filter_fn: Callable[[nn.Module, str], bool] = default_filter,
    progress: Progress | None = None,
) -> nn.Module:
    """Swap, in place, every module passing `filter_fn` for `make(module, name)`; returns the model."""
    names = linear_names(model, filter_fn)
    for index, name in enumerate(names):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(getattr(parent, child), name))
        if progress:
            progress((index + 1) / len(names), f"{name} ({index + 1}/{len(names)})")
    return model


@torch.no_grad()
def fake_quant_linear(
    linear: nn.Linear, weight_scheme: QuantScheme | None, act_scheme: QuantScheme | None = None
) -> FakeQuantLinear:
    bias = None if linear.bias is None else linear.bias.detach().clone()
    if weight_scheme is None:
        return FakeQuantLinear(linear.weight.detach().clone(), bias, None, act_scheme)
    return quantized_linear(linear.weight.detach(), bias, weight_scheme, act_scheme)


@torch.no_grad()
def quantized_linear(
    weight: Tensor, bias: Tensor | None, scheme: QuantScheme, act_scheme: QuantScheme | None = None
) -> FakeQuantLinear:
    """Round-to-nearest of `weight` under `scheme` as a FakeQuantLinear that keeps its scales."""
    if not keeps_scales(scheme):
        return FakeQuantLinear(fake_quantize(weight, scheme), bias, scheme, act_scheme)
    qt = quantize(weight, scheme)
    dequantized = qt.dequantize().to(weight.dtype)
    return FakeQuantLinear(dequantized, bias, scheme, act_scheme, QParams(qt.scale, qt.zero_point))


def keeps_scales(scheme: QuantScheme | None) -> bool:
    """Integer grids with an integer zero point and scales along rows: codes = round(w / scale) + zero
    recover exactly (2-D block scales are not kept: exports read one scale per row or per group)."""
    return (
        scheme is not None
        and scheme.is_int
        and scheme.zero_kind == "int"
        and not scheme.double_quant
        and scheme.granularity != "block"
    )
