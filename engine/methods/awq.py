"""AWQ (Lin et al. 2023): scale up the weight channels that see large activations before rounding, fold
the inverse scale into whatever produces those activations, then round to nearest.

Per decoder layer (llm-awq's `run_awq`, AutoAWQ's scaling groups for Llama):
    input_layernorm          -> q_proj, k_proj, v_proj
    v_proj                   -> o_proj        (only when v_proj's outputs are o_proj's inputs one to one,
                                               i.e. no grouped-query attention; AutoAWQ skips it too)
    post_attention_layernorm -> gate_proj, up_proj
    up_proj                  -> down_proj
For each group, with x_mean = mean |x| per input channel on the calibration tokens, the search tries
s = x_mean^alpha for alpha = 0, 1/grid, ..., (grid-1)/grid, normalised s / sqrt(max(s) min(s)) as in
llm-awq, and keeps the alpha whose quantized group (weights Q(W diag(s)), inputs X diag(s)^-1) has the
smallest output MSE against the unquantized group. Then 1/s is folded into the preceding norm's weight
(or the previous linear's rows), W diag(s) replaces W, and every linear is rounded with RTN. alpha = 0
gives s = 1: the curve's first point is RTN itself, so the chosen alpha never does worse on calibration.

Where we depart from llm-awq / AutoAWQ:
- The search loss is the MSE of the group's own linear outputs (q, k and v together; gate and up), not of
  the whole block's output (llm-awq runs self_attn / mlp for every grid point). Linear outputs are exact
  and cheap from the Gram matrix G = X^T X of all calibration tokens: MSE = tr(D G D^T) / (tokens * out)
  with D = W - Q(W diag(s)) diag(s)^-1, so a grid point costs one (out, in) x (in, in) product instead
  of a forward over every token. It ignores the attention softmax's sensitivity to q/k errors.
- `clip_search` (llm-awq's `auto_clip`, off by default here) shrinks each group's range to 1 - i/20
  (i < 10) of its absmax, clipping weights to +-max as llm-awq does, and keeps the best per output row and
  group; its error uses the diagonal blocks of G on all tokens rather than 512 sampled tokens. q_proj and
  k_proj are skipped, as in llm-awq.
- The next layer's inputs come from the unquantized layer (as llm-awq and AutoAWQ do: scaling preserves
  the function, and quantization is applied layer by layer only after the search).
- Reported `output_error` and `weight_sqnr_db` are in the original model's coordinates (the quantized
  weight as the unscaled inputs see it), so they compare directly with RTN's (`rtn_output_error`).
Supported: Llama, Mistral and Qwen2 (an RMSNorm with a plain multiplicative weight before q/k/v and
gate/up). Other architectures raise a ValueError rather than fold scales into the wrong place.

Cost per layer: one forward of the unquantized layer with hooks (Gram matrices and mean |x| of the four
input sites), then grid x (out x in x in) products for the search, independent of the token count
(timings: docs/benchmarks.md). SmolLM2-135M with 32 x 512 calibration tokens: perplexity 70.7 against
RTN's 80.7 (int4 asym g64, bench/bench_methods.py). The layer-by-layer plumbing is
engine/methods/calibration.py, shared with GPTQ.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from engine._types import Progress
from engine.analysis.stats import decoder_layers
from engine.methods.calibration import (
    GramCollector,
    capture_layer_inputs,
    check_calibration,
    check_shapes,
    layer_linears,
    relative_output_error,
    set_linear,
)
from engine.methods.registry import Calibration, LayerReport, register
from engine.quant.linear import quantized_linear
from engine.quant.metrics import sqnr_db
from engine.quant.primitives import fake_quantize
from engine.quant.schemes import QuantScheme, bits_per_weight

SUPPORTED = ("llama", "mistral", "qwen2")
CLIP_GRID, CLIP_MAX_SHRINK = 20, 0.5  # llm-awq's auto_clip: ratios 1, 0.95, ..., 0.55


@dataclass(frozen=True)
class AWQConfig:
    weights: QuantScheme  # AWQ's default grid is int4 asym g128 (g64 on 576-wide models)
    grid: int = 20  # alphas tried: 0, 1/grid, ..., (grid - 1)/grid
    clip_search: bool = False  # also search a per-group clipping range (llm-awq's auto_clip)

    def __post_init__(self) -> None:
        if not isinstance(self.weights, QuantScheme):
            raise ValueError(f"weights must be a QuantScheme (got {type(self.weights).__name__})")
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 1:
            raise ValueError(
                f"grid must be a positive number of alphas to try (got {self.grid!r}); AWQ uses 20"
            )

    @property
    def label(self) -> str:
        return f"AWQ {self.weights.label}"


@dataclass(frozen=True)
class AWQDetail:
    """What AWQ reports per linear (LayerReport.detail)."""

    alpha: float | None = None  # the chosen s = x_mean^alpha; None: the linear was not scaled
    curve: list[tuple[float, float]] = field(default_factory=list)  # [(alpha, output MSE)] of the search
    rtn_output_error: float | None = None  # RTN's relative output error on the same calibration inputs
    search_seconds: float = 0.0  # this linear's share of its group's scale search
    note: str | None = None  # why it was not scaled


@dataclass
class ScaleGroup:
    prev: str  # module (relative to the layer) whose output feeds the group: a norm or a linear
    linears: list[str]  # the linears reading that output


def scale_groups(layer: nn.Module) -> list[ScaleGroup]:
    """AutoAWQ's Llama groups; v_proj -> o_proj only when their shapes match (no GQA)."""
    groups = [ScaleGroup("input_layernorm", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"])]
    v, o = layer.get_submodule("self_attn.v_proj"), layer.get_submodule("self_attn.o_proj")
    if v.weight.shape[0] == o.weight.shape[1]:
        groups.append(ScaleGroup("self_attn.v_proj", ["self_attn.o_proj"]))
    groups.append(ScaleGroup("post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"]))
    groups.append(ScaleGroup("mlp.up_proj", ["mlp.down_proj"]))
    return groups


def check_architecture(model: nn.Module, layers: nn.ModuleList) -> None:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    needed = [
        "input_layernorm",
        "post_attention_layernorm",
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ]
    present = {name for name, _ in layers[0].named_modules()}
    missing = [name for name in needed if name not in present]
    if model_type not in SUPPORTED or missing:
        why = f"missing {', '.join(missing)}" if missing else f"model_type {model_type!r}"
        raise ValueError(
            f"AWQ here folds scales into Llama-style decoders ({', '.join(SUPPORTED)}: a norm before "
            f"q/k/v and gate/up); this {type(model).__name__} is not supported ({why}). Use GPTQ or RTN."
        )


def _effective(weight: Tensor, scales: Tensor, scheme: QuantScheme) -> Tensor:
    """Q(W diag(s)) diag(s)^-1: the quantized weight as seen by the unscaled inputs."""
    return fake_quantize(weight * scales, scheme) / scales


def _error_energy(weight: Tensor, quantized: Tensor, gram: Tensor) -> float:
    D = weight - quantized  # (out, in)
    return float(((D @ gram) * D).sum(dtype=torch.float64))


@torch.no_grad()
def search_scales(
    weights: list[Tensor], gram: Tensor, x_mean: Tensor, tokens: int, scheme: QuantScheme, grid: int
) -> tuple[Tensor, float, list[tuple[float, float]]]:
    """(best scales (in,), best alpha, [(alpha, output MSE)]) for linears sharing one input."""
    outputs = sum(w.shape[0] for w in weights) * tokens
    best = (None, 0.0, float("inf"))
    curve = []
    for step in range(grid):
        alpha = step / grid
        scales = x_mean.pow(alpha).clamp(min=1e-4)
        scales = scales / (scales.max() * scales.min()).sqrt()
        loss = sum(_error_energy(w, _effective(w, scales, scheme), gram) for w in weights) / outputs
        curve.append((alpha, loss))
        if loss < best[2]:
            best = (scales, alpha, loss)
    return best[0], best[1], curve


@torch.no_grad()
def search_clip(weight: Tensor, gram: Tensor, scheme: QuantScheme) -> Tensor:
    """weight clipped per (row, group) to the range that minimises that group's output error."""
    rows, columns = weight.shape
    size = scheme.group_size if scheme.granularity == "group" else columns
    n = columns // size
    blocks = torch.stack([gram[g * size : (g + 1) * size, g * size : (g + 1) * size] for g in range(n)])
    w = weight.view(rows, n, size)
    absmax = w.abs().amax(dim=-1, keepdim=True)  # (rows, groups, 1)
    best_err = torch.full((rows, n, 1), float("inf"), dtype=torch.float64)
    best_max = absmax.clone()
    for step in range(int(CLIP_MAX_SHRINK * CLIP_GRID)):
        limit = absmax * (1 - step / CLIP_GRID)
        q = fake_quantize(torch.maximum(torch.minimum(w, limit), -limit).view(rows, columns), scheme)
        d = (w - q.view(rows, n, size)).transpose(0, 1)  # (groups, rows, size)
        err = (torch.bmm(d, blocks) * d).sum(-1, dtype=torch.float64).T.unsqueeze(-1)  # (rows, groups, 1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better, limit, best_max)
    return torch.maximum(torch.minimum(w, best_max), -best_max).view(rows, columns)


def _fold(layer: nn.Module, group: ScaleGroup, scales: Tensor) -> None:
    """prev's output / s, the group's weight columns * s: the float function is unchanged."""
    prev = layer.get_submodule(group.prev)
    if isinstance(prev, nn.Linear):
        prev.weight.div_(scales.view(-1, 1).to(prev.weight.dtype))
    else:
        prev.weight.div_(scales.to(prev.weight.dtype))
    if getattr(prev, "bias", None) is not None:
        prev.bias.div_(scales.to(prev.bias.dtype))
    for name in group.linears:
        linear = layer.get_submodule(name)
        linear.weight.mul_(scales.view(1, -1).to(linear.weight.dtype))


@torch.no_grad()
def awq_layer(
    layer: nn.Module, linears: dict[str, nn.Linear], inputs, config: AWQConfig, quantize: bool = True
):
    """Search, fold (and quantize unless told not to) one decoder layer; returns (outputs, reports).

    Report names are relative to the layer; errors are measured in the original model's coordinates:
    the quantized linear computes diag(r) Q(diag(1/r) W diag(s)) diag(1/s) on the original inputs, with
    s folded into its inputs and r into its outputs (up_proj's rows carry down_proj's scales).
    """
    groups = scale_groups(layer)
    leader = {name: group.linears[0] for group in groups for name in group.linears}
    leader.update({name: name for name in linears if name not in leader})  # o_proj under GQA
    sites = [[name] for name in dict.fromkeys(leader.values())]
    collector = GramCollector(linears, keep_abs_sum=True)
    outputs = collector.collect(layer, inputs, sites)  # the unquantized layer's outputs: next inputs
    originals = {name: linear.weight.float().clone() for name, linear in linears.items()}
    in_scale = {name: w.new_ones(w.shape[1]) for name, w in originals.items()}
    out_scale = {name: w.new_ones(w.shape[0]) for name, w in originals.items()}
    unscaled = "not scaled: its input is not a norm's or a linear's own output (v_proj feeds several heads)"
    detail = {name: AWQDetail(note=unscaled) for name in linears}
    for group in groups:
        start = time.perf_counter()
        site = group.linears[0]
        tokens = collector.tokens[site]
        x_mean = collector.abs_sum[site] / tokens
        weights = [linears[name].weight.float() for name in group.linears]
        scales, alpha, curve = search_scales(
            weights, collector.gram[site], x_mean, tokens, config.weights, config.grid
        )
        _fold(layer, group, scales)
        if group.prev in out_scale:
            out_scale[group.prev] = out_scale[group.prev] * scales
        seconds = (time.perf_counter() - start) / len(group.linears)
        for name in group.linears:
            in_scale[name] = in_scale[name] * scales
            detail[name] = AWQDetail(alpha=alpha, curve=curve, search_seconds=seconds)
    reports = []
    for name, linear in linears.items():
        start = time.perf_counter()
        gram = collector.gram[leader[name]]  # of the original inputs
        s, r = in_scale[name].view(1, -1), out_scale[name].view(-1, 1)
        if config.clip_search and not name.endswith(("q_proj", "k_proj")):
            scaled_gram = gram / s / s.T  # the linear now reads X / s
            linear.weight.copy_(search_clip(linear.weight.float(), scaled_gram, config.weights))
        if not quantize:
            continue
        module = quantized_linear(linear.weight.detach(), linear.bias, config.weights)  # keeps its scales
        quantized = module.weight.float()
        original = originals[name]
        rtn = fake_quantize(original, config.weights)
        reports.append(
            LayerReport(
                name,
                bits_per_weight(config.weights, original.shape[1], original.shape[0]),
                sqnr_db(original, quantized * r / s),  # the weight as the original inputs see it
                relative_output_error(original, quantized * r / s, gram),
                seconds=time.perf_counter() - start + detail[name].search_seconds,
                detail=replace(detail[name], rtn_output_error=relative_output_error(original, rtn, gram)),
            )
        )
        set_linear(layer, name, module)
    return outputs, reports


@register(AWQConfig, name="AWQ", calibration=Calibration.REQUIRED, detail_type=AWQDetail)
def awq(model: nn.Module, config: AWQConfig, calib, progress: Progress | None) -> list[LayerReport]:
    return run_awq(model, config, calib, progress)


def run_awq(model: nn.Module, config: AWQConfig, calib, progress: Progress | None, quantize: bool = True):
    """AWQ in place on `model` (the registry hands it a copy); quantize=False only searches and folds."""
    ids = check_calibration(calib, "AWQ")
    prefix, layers = decoder_layers(model)
    check_architecture(model, layers)
    check_shapes(model, config.weights, prefix + ".")
    if progress:
        progress(0.0, "Capturing the inputs of decoder layer 0")
    inputs = capture_layer_inputs(model, layers, ids)
    reports: list[LayerReport] = []
    for index, layer in enumerate(layers):
        if progress:
            progress(index / len(layers), f"Layer {index + 1}/{len(layers)}: searching scales")
        linears = layer_linears(model, prefix, index)
        inputs, layer_reports = awq_layer(layer, linears, inputs, config, quantize)
        reports += [replace(report, name=f"{prefix}.{index}.{report.name}") for report in layer_reports]
    if progress:
        progress(1.0, "AWQ done")
    return reports
