"""SmoothQuant (Xiao et al. 2023): migrate activation outliers into the weights, then W8A8.

Calibration records max |X_j| over tokens for every input channel j of every linear. For each group of
linears that read one normalized tensor (q/k/v after `input_layernorm`, gate/up after
`post_attention_layernorm`, as the smoothquant repository's `smooth_lm` does for Llama)

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)      (max|W_j| over every output row of the group)

clamped to at least 1e-5; 1/s is folded into the norm's weight and s into the linears' input columns,
so the model computes the same function while the activations the linears see are divided by s. Then
every linear (the head excepted) gets per-channel int weights and dynamic per-token int activations
(`FakeQuantLinear`). o_proj and down_proj are quantized without smoothing, as the paper does for
Llama-like models (no norm precedes them to fold into).

The per-layer report carries, for the page's plot, the channel maxima of the layer's input before and
after smoothing (after = before / s: the norm's output scales channel by channel, so no second pass is
needed), the weights' per-input-channel maxima likewise, and the relative error of the layer's output
on the first calibration windows. `alpha_sweep` calibrates once and evaluates perplexity per alpha.

Where we depart from the paper and its repository:
- Activations are quantized per token, dynamically (the paper's O1 setting, the repository's
  `W8A8Linear(act_quant="per_token")`); the static per-tensor O2/O3 settings are not offered.
- The attention's batched matmuls (Q @ K^T, P @ V) stay in float; the repository can quantize them
  (`quantize_bmm_input`, off by default for Llama).
- Scales are stored at fp16 and rounded up (engine.quant.primitives), the repository keeps them in the
  model's dtype; the codes are the same otherwise (absmax / 127).
- After folding we check, on one calibration window, that the smoothed model still computes what the
  original did; architectures whose norm is not a plain per-channel scale (Gemma's 1 + weight, norms
  placed after the block) are refused before anything is changed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine._types import Progress
from engine.analysis.stats import decoder_layers
from engine.hooks import pre_hooks
from engine.methods.calibration import (
    OutputErrors,
    calibration_batches,
    first_windows,
    run_calibration,
    scaled,
)
from engine.methods.llm_int8 import ERROR_WINDOWS, absmax
from engine.methods.registry import Calibration, LayerReport, check_room_for_copy, register
from engine.quant.linear import fake_quant_linear, linear_names, replace_linears
from engine.quant.metrics import relative_error, sqnr_db
from engine.quant.schemes import QuantScheme

SCALE_FLOOR = 1e-5  # the repository's clamp on s (and on max|W_j|)
# (norm, linears reading its output) in a Llama-style decoder layer; fused projections also count
SMOOTH_GROUPS = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.qkv_proj")),
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj", "mlp.gate_up_proj")),
)


@dataclass(frozen=True)
class SmoothQuantConfig:
    alpha: float = 0.5  # migration strength: 0 leaves activations alone, 1 moves all their range to weights
    weight_bits: int = 8  # per-output-channel symmetric int weights
    act_bits: int = 8  # per-token dynamic symmetric int activations

    def __post_init__(self) -> None:
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not 0 <= self.alpha <= 1
        ):
            raise ValueError(f"alpha must be a number in [0, 1] (got {self.alpha!r}); the paper uses 0.5")
        object.__setattr__(self, "alpha", float(self.alpha))
        QuantScheme(self.weight_bits)  # validates bits with its own message
        QuantScheme(self.act_bits)

    @property
    def label(self) -> str:
        return f"SmoothQuant W{self.weight_bits}A{self.act_bits} α={self.alpha:g}"


@dataclass(frozen=True)
class SmoothQuantDetail:
    """What SmoothQuant reports per linear (LayerReport.detail); the maxima are per input channel."""

    alpha: float  # the migration strength used
    smoothed: bool  # False for o_proj / down_proj: no norm precedes them to fold into
    act_max_before: list[float] | None = None  # max |x| over calibration tokens, before smoothing
    act_max_after: list[float] | None = None  # ... after (before / s)
    weight_max_before: list[float] | None = None  # max |w| over output rows, before smoothing
    weight_max_after: list[float] | None = None  # ... after (before * s)


@dataclass
class SmoothGroup:
    norm: str  # module path of the norm whose output the linears read
    linears: list[str]  # module paths of those linears


# -- calibration ---------------------------------------------------------------------------------------


def smooth_groups(model: nn.Module) -> list[SmoothGroup]:
    """The norm -> linears groups of every decoder layer; ValueError for architectures we cannot fold."""
    config = getattr(model, "config", None)
    model_type = str(getattr(config, "model_type", ""))
    if model_type.startswith("gemma"):
        raise ValueError(
            f"SmoothQuant cannot fold scales into {model_type}'s norms (they multiply by 1 + weight); "
            "use RTN W8A8, LLM.int8() or a weight-only method for this model"
        )
    prefix, layers = decoder_layers(model)
    groups = []
    for index, layer in enumerate(layers):
        for norm_name, candidates in SMOOTH_GROUPS:
            norm = getattr(layer, norm_name, None)
            present = [c for c in candidates if _find(layer, c) is not None]
            if norm is None or getattr(norm, "weight", None) is None or not present:
                raise ValueError(
                    f"SmoothQuant needs Llama-style decoder layers ({norm_name} followed by "
                    f"{' / '.join(c.rsplit('.', 1)[-1] for c in candidates)}); layer {index} of this "
                    f"{type(model).__name__} has no such pair"
                )
            width = norm.weight.shape[-1]
            for name in present:
                if _find(layer, name).in_features != width:
                    raise ValueError(
                        f"layer {index}: {name} reads {_find(layer, name).in_features} "
                        f"features but {norm_name} has {width}"
                    )
            groups.append(
                SmoothGroup(f"{prefix}.{index}.{norm_name}", [f"{prefix}.{index}.{name}" for name in present])
            )
    return groups


def _find(layer: nn.Module, path: str) -> nn.Linear | None:
    try:
        module = layer.get_submodule(path)
    except AttributeError:
        return None
    return module if isinstance(module, nn.Linear) else None


@torch.no_grad()
def collect_input_maxima(
    model: nn.Module, batches: list[Tensor], progress: Progress | None = None
) -> dict[str, Tensor]:
    """{linear name: (in_features,) float32 max |x| over every calibration token} for every linear."""
    maxima: dict[str, Tensor] = {}
    last: list = [None, None]  # (input tensor, its maxima): q/k/v read the same tensor, reduce it once

    def hook_for(name: str):
        def hook(module, args):
            x = args[0]
            if last[0] is not x:
                last[0], last[1] = x, absmax(x.detach().reshape(-1, x.shape[-1]).float(), 0)  # (in,)
            current = maxima.get(name)
            maxima[name] = last[1].clone() if current is None else torch.maximum(current, last[1])

        return hook

    try:
        with pre_hooks((model.get_submodule(name), hook_for(name)) for name in linear_names(model)):
            run_calibration(model, batches, progress)
    finally:
        last[0] = last[1] = None
    return {name: value.cpu() for name, value in maxima.items()}


# -- smoothing -----------------------------------------------------------------------------------------


def smoothing_scales(act_max: Tensor, weights: Sequence[Tensor], alpha: float) -> Tensor:
    """s = max|X|^alpha / max|W|^(1 - alpha), clamped at 1e-5; act_max (in,), weights (out_i, in)."""
    weight_max = torch.stack([w.detach().float().abs().amax(0).cpu() for w in weights]).amax(0)  # (in,)
    weight_max = weight_max.clamp(min=SCALE_FLOOR)
    return (act_max.float().pow(alpha) / weight_max.pow(1 - alpha)).clamp(min=SCALE_FLOOR)


@torch.no_grad()
def smooth_model(model: nn.Module, input_maxima: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """Fold smoothing scales into every group in place; returns {linear name: s} for the smoothed ones."""
    applied = {}
    for group in smooth_groups(model):
        linears = [model.get_submodule(name) for name in group.linears]
        missing = [name for name in group.linears if name not in input_maxima]
        if missing:
            raise ValueError(f"no calibration statistics for {missing[0]}: did the calibration run reach it?")
        scales = smoothing_scales(input_maxima[group.linears[0]], [m.weight for m in linears], alpha)
        norm = model.get_submodule(group.norm)
        scales_here = scales.to(device=norm.weight.device)
        norm.weight.div_(scales_here.to(norm.weight.dtype))
        if getattr(norm, "bias", None) is not None:
            norm.bias.div_(scales_here.to(norm.bias.dtype))
        for name, linear in zip(group.linears, linears, strict=True):
            linear.weight.mul_(scales_here.to(linear.weight.dtype).unsqueeze(0))  # (out, in) * (1, in)
            applied[name] = scales
    return applied


def fold_tolerance(dtype: torch.dtype) -> float:
    """Relative change of the body's output that folding may cause by rounding alone in `dtype`.

    Measured on SmolLM2-135M: 9e-7 in float32, 0.24% in float16, 1.8% in bfloat16; a fold that does not
    fit the architecture (Gemma's 1 + weight norms, a norm that does not feed the group) changes it by
    tens of percent.
    """
    return max(1e-3, 16 * torch.finfo(dtype).eps)


@torch.no_grad()
def _body_output(model: nn.Module, batch: Tensor) -> Tensor:
    body = getattr(model, "base_model", model)
    device = next(model.parameters()).device
    return body(input_ids=batch.to(device), use_cache=False).last_hidden_state.float().cpu()


def _smooth_and_quantize(
    model: nn.Module,
    config: SmoothQuantConfig,
    input_maxima: dict[str, Tensor],
    batches: list[Tensor],
    progress: Progress | None,
    measure_errors: bool = True,
) -> list[LayerReport]:
    """Smooth (checked on one window), then W8A8 every linear; per-layer reports with smoothing detail."""
    probe = batches[0][:1]  # one window: enough to catch a fold that changes the function
    before = _body_output(model, probe)
    start = time.perf_counter()
    applied = smooth_model(model, input_maxima, config.alpha)
    smoothing_seconds = time.perf_counter() - start
    change = relative_error(before, _body_output(model, probe))
    if change > fold_tolerance(next(model.parameters()).dtype):
        raise ValueError(
            f"folding the smoothing scales changed this model's output by {change:.2%}: its norms do not "
            "feed the linears directly (an architecture SmoothQuant's Llama recipe does not fit)"
        )
    weight_scheme, act_scheme = QuantScheme(config.weight_bits), QuantScheme(config.act_bits)
    references: dict[str, tuple[Tensor, Tensor | None]] = {}
    built: dict[str, dict] = {}  # name -> sqnr, bits, seconds, detail

    def make(linear: nn.Linear, name: str) -> nn.Module:
        begin = time.perf_counter()
        quantized = fake_quant_linear(linear, weight_scheme, act_scheme)
        weight_max_after = linear.weight.detach().float().abs().amax(0).cpu()  # (in,)
        scales = applied.get(name)
        act_max = input_maxima.get(name)
        detail = SmoothQuantDetail(config.alpha, smoothed=scales is not None)
        if act_max is not None:
            after = act_max if scales is None else act_max / scales
            weight_before = weight_max_after if scales is None else weight_max_after / scales
            detail = SmoothQuantDetail(
                config.alpha,
                smoothed=scales is not None,
                act_max_before=act_max.tolist(),
                act_max_after=after.tolist(),
                weight_max_before=weight_before.tolist(),
                weight_max_after=weight_max_after.tolist(),
            )
        built[name] = {
            "sqnr": sqnr_db(linear.weight.detach().float(), quantized.weight.float()),
            "bits": quantized.bits_per_weight,
            "seconds": time.perf_counter()
            - begin
            + (smoothing_seconds / len(applied) if scales is not None else 0.0),
            "detail": detail,
        }
        if measure_errors:
            references[name] = (linear.weight.detach(), None if linear.bias is None else linear.bias.detach())
        return quantized

    names = linear_names(model)
    replace_linears(model, make, progress=scaled(progress, 0.0, 0.5 if measure_errors else 1.0))
    errors: dict[str, float] = {}
    if measure_errors:
        windows, _ = first_windows(batches, ERROR_WINDOWS)
        with OutputErrors(model, references) as measured:
            run_calibration(model, windows, scaled(progress, 0.5, 1.0))
        errors = measured.relative()
        references.clear()
    return [
        LayerReport(
            name,
            built[name]["bits"],
            built[name]["sqnr"],
            errors.get(name),
            built[name]["seconds"],
            built[name]["detail"],
        )
        for name in names
    ]


# -- the method ----------------------------------------------------------------------------------------


@register(
    SmoothQuantConfig, name="SmoothQuant", calibration=Calibration.REQUIRED, detail_type=SmoothQuantDetail
)
def smoothquant(model, config: SmoothQuantConfig, calib, progress) -> list[LayerReport]:
    if calib is None:
        raise ValueError(
            "SmoothQuant needs calibration text: pass calib, (count, window) token ids, to measure the "
            "activation channel maxima it migrates"
        )
    smooth_groups(model)  # refuse unsupported architectures before the calibration pass
    batches = calibration_batches(calib)
    maxima = collect_input_maxima(model, batches, scaled(progress, 0.0, 0.6))
    return _smooth_and_quantize(model, config, maxima, batches, scaled(progress, 0.6, 1.0))


def alpha_sweep(
    model: nn.Module,
    calib: Tensor | Sequence[Tensor],
    eval_windows: Tensor | Sequence[Tensor],
    alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    progress: Progress | None = None,
    weight_bits: int = 8,
    act_bits: int = 8,
) -> list[tuple[float, float]]:
    """[(alpha, perplexity on eval_windows)] of SmoothQuant W8A8 per alpha; `model` is never changed.

    Calibrates once on the original model, then for each alpha smooths and quantizes a fresh copy.
    """
    from engine.evaluation.perplexity import perplexity

    configs = [SmoothQuantConfig(alpha, weight_bits, act_bits) for alpha in alphas]  # validate first
    if not configs:
        raise ValueError("give at least one alpha to sweep")
    smooth_groups(model)
    batches = calibration_batches(calib)
    maxima = collect_input_maxima(model, batches, scaled(progress, 0.0, 0.2))
    results = []
    for index, config in enumerate(configs):
        step = scaled(progress, 0.2 + 0.8 * index / len(configs), 0.2 + 0.8 * (index + 1) / len(configs))
        check_room_for_copy(model)
        candidate = copy.deepcopy(model).eval()
        _smooth_and_quantize(candidate, config, maxima, batches, scaled(step, 0.0, 0.3), measure_errors=False)
        result = perplexity(candidate, eval_windows, progress=scaled(step, 0.3, 1.0))
        results.append((config.alpha, result.perplexity))
        del candidate
    return results
