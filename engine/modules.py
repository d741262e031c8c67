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

from engine.primitives import fake_quantize
from engine.schemes import QuantScheme, bits_per_weight


class FakeQuantLinear(nn.Module):
    """y = Q_a(x) @ Q_w(W)^T + b, with Q_w applied once at construction and Q_a per call, per token."""

    def __init__(
        self,
        weight: Tensor,  # (out_features, in_features), already fake-quantized
        bias: Tensor | None,
        weight_scheme: QuantScheme | None,  # for reporting bits; None: the weight is unquantized
        act_scheme: QuantScheme | None = None,  # per-token dynamic quantization of the input
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.weight_scheme = weight_scheme
        self.act_scheme = act_scheme
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        if self.act_scheme is not None:
            shape = x.shape
            x = fake_quantize(x.reshape(-1, shape[-1]), self.act_scheme).view(shape)  # (tokens, in) rows
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
    progress: Callable[[float, str], None] | None = None,
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
    weight = linear.weight.detach()
    if weight_scheme is not None:
        weight = fake_quantize(weight, weight_scheme)
    bias = None if linear.bias is None else linear.bias.detach().clone()
    return FakeQuantLinear(weight.clone(), bias, weight_scheme, act_scheme)
