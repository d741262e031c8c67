"""Quantization-aware training (QAT) building blocks: the fake-quantization node and the straight-through
estimator.

`FakeQuantSTE` quantizes and dequantizes in the forward pass (`engine.quant.primitives.fake_quantize`, so the
forward is the same staircase the rest of the app measures) and passes the gradient straight through in
the backward pass. `QATLinear` puts one such node on its weight (and optionally on its input), and
`prepare_qat` returns a copy of a model with every `nn.Linear` swapped for a `QATLinear`, so training
updates full-precision "latent" weights while the loss always sees their quantized values. The Learn
page's spiral demo built on them lives in `engine.lessons.qat_spiral`; QAT of a language model in
`engine.methods.qat`.

Where we depart from the literature and from torch.ao:
- Backward is the *clipped* straight-through estimator: identity where the value lands on the grid
  (`qmin <= round(x / s) + z <= qmax`, codebooks and fp8: `|x / s| <= grid max`) and zero where it was
  clipped, as torch.ao's `FakeQuantize` does. `clip_gradient=False` gives the plain identity of
  Bengio et al. (2013). With the default dynamic absmax scales nothing is clipped, so both agree.
- Scales are not learned: each forward recomputes them from the current latent weights (absmax, as in
  post-training RTN) and the backward treats them as constants. LSQ (Esser et al., 2020) learns the step
  size with its own gradient and PACT (Choi et al., 2018) learns the activation clip; we do neither.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.quant import formats
from engine.quant.primitives import choose_qparams, fake_quantize
from engine.quant.schemes import QuantScheme, check_shape

# -- the fake-quantization node ----------------------------------------------------------------------


def in_grid_mask(
    x: Tensor, scheme: QuantScheme, scale: Tensor | None = None, zero_point: Tensor | None = None
) -> Tensor:
    """Bool mask, shaped like x: True where fake quantization rounds x instead of clipping it."""
    if scale is None:
        scale, zero_point = choose_qparams(x, scheme)  # blocked: (*x.shape[:-1], blocks per row)
        if scheme.granularity != "tensor":
            per_block = x.shape[-1] // scale.shape[-1]
            scale = scale.repeat_interleave(per_block, dim=-1)  # like x
            if zero_point is not None:
                zero_point = zero_point.repeat_interleave(per_block, dim=-1)
    ratio = x.detach().float() / scale.float()
    if scheme.is_int:
        qmin, qmax = formats.int_range(scheme.bits, scheme.symmetric)
        q = torch.round(ratio) + (0.0 if zero_point is None else zero_point.float())
        return (q >= qmin) & (q <= qmax)
    return ratio.abs() <= formats.grid_max(scheme)


class FakeQuantSTE(torch.autograd.Function):
    """forward: fake_quantize(x) (the staircase); backward: identity, zero where x was clipped."""

    @staticmethod
    def forward(ctx, x, scheme, scale=None, zero_point=None, clip_gradient=True):
        if clip_gradient:
            ctx.save_for_backward(in_grid_mask(x, scheme, scale, zero_point))
        ctx.clip_gradient = clip_gradient
        return fake_quantize(x, scheme, scale, zero_point)

    @staticmethod
    def backward(ctx, grad_output):
        grad = grad_output
        if ctx.clip_gradient:
            (mask,) = ctx.saved_tensors
            grad = grad_output * mask.to(grad_output.dtype)
        return grad, None, None, None, None


def fake_quant_ste(
    x: Tensor,
    scheme: QuantScheme,
    scale: Tensor | None = None,
    zero_point: Tensor | None = None,
    clip_gradient: bool = True,
) -> Tensor:
    """Differentiable fake quantization (see FakeQuantSTE); dynamic scales unless `scale` is given."""
    return FakeQuantSTE.apply(x, scheme, scale, zero_point, clip_gradient)


class QATLinear(nn.Linear):
    """nn.Linear whose forward sees fake-quantized weights (and, optionally, fake-quantized inputs).

    The bias stays in float, as integer kernels keep it in int32 / fp32. Input quantization is dynamic
    (scales from each input); with granularity "channel" that is one scale per token.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        weight_scheme: QuantScheme | None = None,
        act_scheme: QuantScheme | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        if weight_scheme is None:
            raise ValueError("QATLinear needs a weight_scheme (e.g. QuantScheme(4, granularity='channel'))")
        check_shape(weight_scheme, (out_features, in_features))
        if act_scheme is not None:
            check_shape(act_scheme, (1, in_features))
        self.weight_scheme = weight_scheme
        self.act_scheme = act_scheme

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, weight_scheme: QuantScheme, act_scheme: QuantScheme | None = None
    ) -> QATLinear:
        out = cls(linear.in_features, linear.out_features, linear.bias is not None, weight_scheme, act_scheme)
        out.to(device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(linear.weight)
            if linear.bias is not None:
                out.bias.copy_(linear.bias)
        return out

    def forward(self, x: Tensor) -> Tensor:  # x: (..., in_features)
        if self.act_scheme is not None:
            x = fake_quant_ste(x, self.act_scheme)
        return F.linear(x, fake_quant_ste(self.weight, self.weight_scheme), self.bias)

    def extra_repr(self) -> str:
        acts = self.act_scheme.label if self.act_scheme else "float"
        return f"{super().extra_repr()}, weights={self.weight_scheme.label}, inputs={acts}"


def prepare_qat(
    model: nn.Module,
    scheme: QuantScheme,
    act_scheme: QuantScheme | None = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> nn.Module:
    """A deep copy of `model` with every nn.Linear (that `filter_fn(module, fqn)` accepts) made a QATLinear.

    The original is never touched, so a shared float model can be the starting point of many runs.
    """
    prepared = copy.deepcopy(model)
    targets = [
        (name, module)
        for name, module in prepared.named_modules()
        if isinstance(module, nn.Linear)
        and not isinstance(module, QATLinear)
        and (filter_fn is None or filter_fn(module, name))
    ]
    if not targets:
        raise ValueError("prepare_qat found no nn.Linear to quantize (check filter_fn)")
    for name, module in targets:
        try:
            replacement = QATLinear.from_linear(module, scheme, act_scheme)
        except ValueError as exc:
            raise ValueError(f"cannot quantize {name or 'the model'} with {scheme.label}: {exc}") from exc
        if name:
            parent_name, _, child = name.rpartition(".")
            setattr(prepared.get_submodule(parent_name), child, replacement)
        else:
            prepared = replacement
    return prepared
