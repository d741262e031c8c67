"""GPTQ (Frantar et al. 2022): quantize each linear's columns in order and push every column's rounding
error onto the columns not yet quantized, weighted by the inverse Hessian of the layer's inputs.

The model is processed one decoder layer at a time (memory holds one layer's calibration inputs, not the
whole model's activations): the inputs of decoder layer 0 are captured once (a pre-hook that stops the
forward), then for each layer the Gram matrix H = 2/n X^T X of every linear's input is collected with
forward pre-hooks, each linear is quantized with `gptq_quantize`, the linears become `FakeQuantLinear`s
holding the dequantized weights, and the quantized layer's outputs feed the next layer (as the reference
implementation does, so later layers calibrate on the errors of earlier ones).

`gptq_quantize` follows the reference `fasterquant`: dead columns (diag(H) = 0) are zeroed, damping adds
`damping * mean(diag(H))` to the diagonal, the upper Cholesky factor of H^-1 drives the updates, columns
are processed in lazy blocks of `block_size`, `act_order` visits columns by decreasing diag(H) and undoes
the permutation afterwards, and `static_groups` fixes every group's scale from the original weights.
Scales and zero points come from `engine.quant.primitives.choose_qparams` on a group slice and columns are
rounded with `engine.quant.formats.fake`, so the grid is exactly RTN's (with H = I, GPTQ returns RTN's weights).

Where we depart from the reference (and from gptqmodel, which keeps its behaviour):
- A group starting inside a lazy block takes its scale from the fully updated weights; the reference reads
  its `W`, which misses the updates from earlier columns of the same block (the two agree when group_size
  is a multiple of block_size, e.g. g128 with blocks of 128). Output errors agree with gptqmodel's within
  ~2% per linear on the same Hessian (tests/engine/methods/test_crosscheck_gptqmodel.py).
- `true_sequential` (off by default as in the reference; on in AutoGPTQ and gptqmodel) groups the linears
  of a layer by the tensor they read (q/k/v, o, gate/up, down on Llama) and quantizes group after group,
  each calibrated on inputs that already went through the quantized groups before it. Each group's
  forwards stop once its last linear has seen its input. Linears that read one tensor share one Gram.
- If the damped Hessian is not positive definite, damping is multiplied by 10 and retried (gptqmodel
  steps it up; the reference fails).
- A linear that no calibration token reached (an unrouted expert) falls back to RTN instead of zeros.
- With `act_order` and dynamic groups, a group is `group_size` consecutive columns *in the permuted order*
  (as the reference): GPTQ checkpoints then store a g_idx per column, which `bits_per_weight` ignores.
- Reported `output_error` is exact on all calibration tokens, computed from the Gram matrix:
  ||X (W - Q)^T|| / ||X W^T|| = sqrt(tr(D G D^T) / tr(W G W^T)) with D = W - Q, G = X^T X; the detail
  also gives RTN's error on the same inputs, so the page can show what compensation bought per layer.

Memory: one layer's calibration inputs and outputs (2 x samples x tokens x hidden floats: 75 MB for
32 x 512 tokens of SmolLM2-135M) and one Gram matrix per input site. Speed: the forwards and Gram
matrices dominate; the column loop runs on one thread (`engine.methods.calibration.one_thread`);
timings are in docs/benchmarks.md (bench/bench_methods.py). The layer-by-layer plumbing (capturing
layer 0's inputs, input sites, Gram matrices) lives in engine/methods/calibration.py, shared with AWQ.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine._types import Progress
from engine.analysis.stats import decoder_layers
from engine.methods.calibration import (
    GramCollector,
    capture_layer_inputs,
    check_calibration,
    check_shapes,
    forward_layer,
    input_sites,
    layer_linears,
    one_thread,
    relative_output_error,
    set_linear,
)
from engine.methods.registry import Calibration, LayerReport, register
from engine.quant import formats
from engine.quant.linear import FakeQuantLinear, keeps_scales
from engine.quant.metrics import sqnr_db
from engine.quant.primitives import QParams, choose_qparams, quantize
from engine.quant.schemes import QuantScheme, bits_per_weight, check_shape

__all__ = ["GPTQConfig", "GPTQDetail", "GPTQResult", "gptq_quantize", "relative_output_error"]


@dataclass(frozen=True)
class GPTQConfig:
    weights: QuantScheme  # the grid (int, group or channel); same grid as RTN's
    damping: float = 0.01  # added to diag(H) as a fraction of its mean (the reference's percdamp)
    act_order: bool = False  # visit columns by decreasing diag(H) ("desc_act"): outlier inputs first
    block_size: int = 128  # columns per lazy batch update: speed; same result up to rounding if a
    #                        multiple of group_size
    static_groups: bool = False  # group scales from the original weights, before any update
    true_sequential: bool = False  # q/k/v, then o, then gate/up, then down, each on already-quantized inputs

    def __post_init__(self) -> None:
        if not isinstance(self.weights, QuantScheme):
            raise ValueError(f"weights must be a QuantScheme (got {type(self.weights).__name__})")
        if self.weights.double_quant:
            raise ValueError("GPTQ fixes each group's scale as it goes; double_quant is not supported")
        if not 0.0 < self.damping < 1.0:
            raise ValueError(f"damping must be in (0, 1) (got {self.damping}); the papers use 0.01")
        if self.block_size < 1:
            raise ValueError(f"block_size must be a positive number of columns (got {self.block_size})")

    @property
    def label(self) -> str:
        return f"GPTQ {self.weights.label}" + (" act-order" if self.act_order else "")


@dataclass
class GPTQResult:
    weight: Tensor  # (out_features, in_features) dequantized, float32
    loss: float  # sum of the reference's Losses: (w - q)^2 / Hinv_jj^2 / 2 over every weight
    dead_columns: int  # inputs that were zero on every calibration token
    damping: float  # the damping that made H positive definite (>= the configured one)
    qparams: QParams | None = None  # scale, zero: (out_features, groups) in g_idx order
    g_idx: Tensor | None = None  # (in_features,) group of each input column; None: column // group


@dataclass(frozen=True)
class GPTQDetail:
    """What GPTQ reports per linear (LayerReport.detail)."""

    loss: float | None = None  # the reference's Losses summed over the weight; None: RTN fallback
    rtn_output_error: float | None = None  # RTN's relative output error on the same calibration inputs
    dead_columns: int = 0  # inputs that were zero on every calibration token
    damping: float | None = None  # the damping that made H positive definite
    fallback: str | None = None  # why this linear was rounded to nearest instead (no calibration token)


# -- the column loop -----------------------------------------------------------------------------------


def _inverse_cholesky(hessian: Tensor, damping: float) -> tuple[Tensor, float]:
    """Upper Cholesky factor of (H + damp I)^-1, retrying with 10x damping while H is not PD."""
    mean_diag = float(torch.mean(torch.diag(hessian)))
    for _ in range(6):
        damped = hessian.clone()
        damped.diagonal().add_(damping * mean_diag)
        factor, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper, damping
        damping *= 10
    raise ValueError("the Hessian is not positive definite even with heavy damping; add calibration data")


@torch.no_grad()
def gptq_quantize(
    weight: Tensor,
    hessian: Tensor,
    scheme: QuantScheme,
    damping: float = 0.01,
    act_order: bool = False,
    block_size: int = 128,
    static_groups: bool = False,
) -> GPTQResult:
    """GPTQ of one weight (out_features, in_features) given H (in_features, in_features)."""
    check_shape(scheme, tuple(weight.shape))
    with one_thread(weight.device):
        return _gptq(weight, hessian, scheme, damping, act_order, block_size, static_groups)


def _gptq(weight, hessian, scheme, damping, act_order, block_size, static_groups) -> GPTQResult:
    W = weight.detach().float().clone()  # (rows, columns)
    H = hessian.detach().float().clone()
    rows, columns = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    group = scheme.group_size if scheme.granularity == "group" else None
    scale, zero = (None, None) if group else choose_qparams(W, scheme)  # channel (rows, 1), tensor (1, 1)
    fixed_groups = None
    if group and static_groups:
        fixed_groups = [choose_qparams(W[:, c : c + group], scheme) for c in range(0, columns, group)]
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    Hinv, used_damping = _inverse_cholesky(H, damping)
    del H
    # Transposed layout: row j of WT is column j of W, so a column is contiguous and the rank-1
    # update of the remaining columns is one `addr_` over contiguous rows.
    WT = W.T.contiguous()  # (columns, rows)
    QT = torch.empty_like(WT)
    chosen: list[QParams] = []
    loss = _column_loop(WT, QT, Hinv, scheme, group, block_size, scale, zero, fixed_groups, perm, chosen)
    g_idx = None
    if fixed_groups is not None:
        chosen = fixed_groups  # in the columns' own order whatever act-order did
    elif group and perm is not None:  # groups were formed in quantization order
        g_idx = (torch.argsort(perm) // group).to(torch.int32)
    if not group:
        chosen = [QParams(scale.expand(rows, 1), None if zero is None else zero.expand(rows, 1))]
    qparams = QParams(
        torch.cat([q.scale for q in chosen], dim=1),
        None if chosen[0].zero_point is None else torch.cat([q.zero_point for q in chosen], dim=1),
    )
    if perm is not None:
        QT = QT[torch.argsort(perm)]
    return GPTQResult(QT.T.contiguous(), loss, int(dead.sum()), used_damping, qparams, g_idx)


def _column_loop(WT, QT, Hinv, scheme, group, block_size, scale, zero, fixed_groups, perm, chosen) -> float:
    """Quantize WT (columns, rows) row by row into QT with lazy-batched error feedback; returns the loss.

    Appends each group's (scale, zero) to `chosen` as it is formed (in quantization order)."""
    columns = WT.shape[0]
    loss = 0.0
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1 = WT[i1:i2].clone()  # (block, rows): this block's columns, updated as we go
        Err1 = torch.empty_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        diag = Hinv1.diagonal().tolist()
        for i in range(i2 - i1):
            col = i1 + i
            if fixed_groups is not None:
                scale, zero = fixed_groups[int(perm[col] if perm is not None else col) // group]
            elif group and col % group == 0:
                end = col + group  # the group's current weights: this block's updated ones, then later
                current = W1[i : i + group] if end <= i2 else torch.cat([W1[i:], WT[i2:end]])
                scale, zero = choose_qparams(current.T, scheme)  # (rows, 1) each
                chosen.append(QParams(scale, zero))
            w = W1[i]  # (rows,)
            q = formats.fake(w, scale.view(-1), None if zero is None else zero.view(-1), scheme)
            err = torch.sub(w, q, out=Err1[i]).div_(diag[i])  # (w - q) / Hinv_ii
            W1[i + 1 :].addr_(Hinv1[i, i + 1 :], err, alpha=-1)
            QT[col] = q
        loss += float(Err1.double().square().sum()) / 2  # the reference's Losses: (w - q)^2 / d^2 / 2
        WT[i2:].addmm_(Hinv[i1:i2, i2:].T, Err1, alpha=-1)
    return loss


# -- the method -------------------------------------------------------------------------------------------


def _quantize_linear(
    name: str, linear: nn.Linear, gram: Tensor | None, samples: int, config: GPTQConfig
) -> tuple[LayerReport, tuple[QParams | None, Tensor | None]]:
    """GPTQ one linear in place (its weight becomes the dequantized one); the report says how it went,
    (scale and zero point, g_idx) say how to export it."""
    start = time.perf_counter()
    original = linear.weight.detach().float().clone()  # the weight is overwritten below
    rtn_codes = quantize(original, config.weights)
    rtn = rtn_codes.dequantize()
    if gram is None:  # no calibration token reached this linear
        quantized, detail = rtn, GPTQDetail(fallback="rtn: no calibration token reached this linear")
        output_error = None
        kept = (QParams(rtn_codes.scale, rtn_codes.zero_point), None)  # (rows or 1, groups)
    else:
        result = gptq_quantize(
            original,
            gram * (2 / samples),  # the reference's H = 2/n sum X^T X, n = calibration samples
            config.weights,
            config.damping,
            config.act_order,
            config.block_size,
            config.static_groups,
        )
        quantized = result.weight
        kept = (result.qparams, result.g_idx)
        output_error = relative_output_error(original, quantized, gram)
        detail = GPTQDetail(
            loss=result.loss,
            rtn_output_error=relative_output_error(original, rtn, gram),
            dead_columns=result.dead_columns,
            damping=result.damping,
        )
    linear.weight.data.copy_(quantized.to(linear.weight.dtype))
    report = LayerReport(
        name,
        bits_per_weight(config.weights, original.shape[1], original.shape[0]),
        sqnr_db(original, quantized),
        output_error,
        seconds=time.perf_counter() - start,
        detail=detail,
    )
    return report, kept if keeps_scales(config.weights) else (None, None)


@register(GPTQConfig, name="GPTQ", calibration=Calibration.REQUIRED, detail_type=GPTQDetail)
def gptq(model: nn.Module, config: GPTQConfig, calib, progress: Progress | None) -> list[LayerReport]:
    ids = check_calibration(calib, "GPTQ")
    prefix, layers = decoder_layers(model)
    check_shapes(model, config.weights, prefix + ".")  # fail fast, before any forward
    say: Progress = progress or (lambda fraction, message: None)
    say(0.0, "Capturing the inputs of decoder layer 0")
    inputs = capture_layer_inputs(model, layers, ids)
    reports: list[LayerReport] = []
    sites = None
    for index, layer in enumerate(layers):
        linears = layer_linears(model, prefix, index)
        if sites is None or {name for site in sites for name in site} != set(linears):
            sites = input_sites(layer, linears, inputs)  # found on layer 0, reused while names match
        stages = [[site] for site in sites] if config.true_sequential else [sites]
        kept: dict[str, tuple[QParams | None, Tensor | None]] = {}
        for stage_index, stage in enumerate(stages):
            collector = GramCollector(linears)
            say(
                (index + stage_index / len(stages)) / len(layers),
                f"Layer {index + 1}/{len(layers)}: Hessians of {', '.join(s[0] for s in stage)}",
            )
            collector.collect(layer, inputs, stage, stop_after=stage[-1][-1])
            for site in stage:
                gram = collector.gram.get(site[0])
                for name in site:
                    full = f"{prefix}.{index}.{name}"
                    report, kept[name] = _quantize_linear(full, linears[name], gram, inputs.samples, config)
                    reports.append(report)
        for name, linear in linears.items():
            weight = linear.weight.detach()
            bias = None if linear.bias is None else linear.bias.detach()
            qparams, g_idx = kept.get(name, (None, None))
            set_linear(layer, name, FakeQuantLinear(weight, bias, config.weights, None, qparams, g_idx))
        say((index + 1) / len(layers), f"Layer {index + 1}/{len(layers)}: recomputing outputs")
        inputs = forward_layer(layer, inputs)
    say(1.0, "GPTQ done")
    return reports
