"""Quantization-aware training (QAT) as a method: fine-tune the quantized linears of a language model for a
few steps on calibration text, through the straight-through estimator, then freeze them.

Every linear the other methods quantize (all but lm_head) becomes an `engine.quant.ste.QATLinear`, whose forward
sees its weight fake-quantized (dynamic scales, recomputed every step) and whose backward hands the
gradient straight through to the full-precision "latent" weight (the clipped STE of `engine.quant.ste`). Only
those latent weights train: embeddings, norms, biases and lm_head stay frozen. The loss is next-token
cross-entropy on the calibration windows, the optimizer Adam with a cosine decay to zero over `steps`.
At step 0 the model *is* round-to-nearest of the same scheme, so PTQ's loss is QAT's starting point. At
the end every QATLinear becomes the `engine.quant.linear.FakeQuantLinear` that RTN would build from the trained
latent weight, so the rest of the app (Compare, Evaluate, export) sees the same module type as RTN / GPTQ
/ AWQ, with the weights on the scheme's grid.

Where we depart from the QAT literature (LLM-QAT, EfficientQAT, torchao's QAT recipes):
- Tens of steps on a few thousand tokens, not thousands of steps on a corpus: enough on a CPU to show the
  loss recovering from PTQ at 3 bits, not to reach the papers' numbers. The schedule has no warm-up.
- The loss is plain next-token cross-entropy on the calibration text (torchao's recipe), not LLM-QAT's
  distillation from the float model's logits, so on text like the calibration text QAT also adapts to
  it and can end below the float model's loss; the page says so. Scales are not learned (LSQ,
  EfficientQAT's block-wise scale training are not here); they follow the latent weights.
- No weight decay (Adam, not AdamW's default 0.01): decay would shrink every group's range, and so its
  scale, towards zero.
- A 16-bit model trains in float32 (the whole copy is upcast, and every tensor cast back to its own dtype
  after rounding), as mixed-precision training keeps float32 master weights; the held-out float loss is
  taken before the upcast.
- The model stays in eval mode (dropout off; SmolLM2 and Llama have none anyway), so a run is
  deterministic for a seed on one thread.

What the steps change: on SmolLM2-135M after 4 steps about half the weights end on a different value
than RTN's, but only 0.4% moved to another level of RTN's grid (0.6% after 10 steps; `moved` in each
layer's detail, int grids): most of the change is each group's scale and zero point following its latent
range (min / max), which the STE treats as constants but training moves anyway.

Held-out loss: `calib` is either (n, tokens) token ids, whose last `held_out` windows are kept out of
training, or a pair (train, held_out) of such tensors (the Methods page passes its evaluation windows, so
the held-out loss is the log of the perplexity it reports). Calibration windows are drawn at random
offsets and can overlap by chance; pass a separate held-out tensor for a strictly disjoint measurement.
The float, PTQ and QAT held-out losses and the training loss of every step ride on the first layer's
report as a `QATTrace` (its `QATDetail.trace`; read it with `qat_trace(reports)`).

Measured (bench/bench_qat.py, SmolLM2-135M, int3 asym g64, one 256-token window a step, lr 3e-4, held
out 4 x 256 evaluation tokens): float 4.290 nats (perplexity 72.9), PTQ 5.308 (201.9), QAT after 4 / 10 /
20 steps 4.923 / 4.716 / 4.671 (137.4 / 111.7 / 106.8): 38% / 58% / 63% of what PTQ lost.

Cost: one forward and backward of the whole model per step plus two fake-quantization passes over every
linear weight (the forward, and the STE's grid mask); timings per step are in docs/benchmarks.md
(bench/bench_qat.py). Training runs on one thread, like GPTQ's column loop
(`engine.methods.calibration.one_thread`): on a shared CPU, two OpenMP threads were many times slower
per step than one. Memory: the model plus a copy of the original linear weights (for SQNR), their
gradients and Adam's two moments, about 4x the linear weights (1.7 GB for SmolLM2-135M in float32; 4.4 GB
resident in all, with the shared reference model).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine._types import Progress, require_free
from engine.evaluation.perplexity import perplexity
from engine.methods.calibration import check_calibration, check_shapes, one_thread
from engine.methods.registry import Calibration, LayerReport, register
from engine.quant.linear import fake_quant_linear, linear_names, replace_linears
from engine.quant.metrics import sqnr_db
from engine.quant.primitives import choose_qparams, fake_quantize
from engine.quant.schemes import QuantScheme, bits_per_weight
from engine.quant.ste import QATLinear

DEFAULT_SCHEME = QuantScheme(3, "int", False, "group", 64)  # 3-bit, where PTQ hurts; 576 = 9 x 64, not 128
TRAINING_MEMORY = 4  # float32 linear-weight sized buffers QAT adds: original copy, gradient, Adam's moments


@dataclass(frozen=True)
class QATConfig:
    weights: QuantScheme = DEFAULT_SCHEME  # the grid every linear trains against and ends on
    steps: int = 10  # Adam steps, one forward + backward of `batch` calibration windows each
    lr: float = 3e-4  # peak learning rate, cosine-decayed to 0 over `steps`
    batch: int = 1  # calibration windows per step (their length is the calibration tensor's)
    held_out: int = 2  # windows kept out of training to measure the loss (when calib is one tensor)
    seed: int = 0  # order in which training windows are visited

    def __post_init__(self) -> None:
        if not isinstance(self.weights, QuantScheme):
            raise ValueError(f"weights must be a QuantScheme (got {type(self.weights).__name__})")
        for name in ("steps", "batch", "held_out", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer (got {value!r})")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1 (got {self.steps})")
        if self.batch < 1:
            raise ValueError(f"batch must be at least one window per step (got {self.batch})")
        if self.held_out < 1:
            raise ValueError(f"held_out must keep at least one window out of training (got {self.held_out})")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and 0 < self.lr < 1):
            raise ValueError(f"lr must be in (0, 1) (got {self.lr!r}); 3e-4 suits a few steps")
        object.__setattr__(self, "lr", float(self.lr))

    @property
    def label(self) -> str:
        return f"QAT {self.weights.label} {self.steps} steps lr {self.lr:g}"


@dataclass(frozen=True)
class QATTrace:
    """How training went: the curve the Methods page draws and the held-out losses it compares."""

    train_loss: list[float]  # mean next-token NLL (nats) of each step's batch, before that step's update
    float_loss: float  # held-out mean NLL of the unquantized model
    ptq_loss: float  # ... of round-to-nearest with the same scheme (QAT before any step)
    qat_loss: float  # ... after the last step
    train_windows: int  # windows training drew from
    tokens_per_step: int  # tokens in one step's batch
    held_out_tokens: int  # tokens scored for each held-out loss
    seconds_per_step: float  # mean wall time of a training step (forward, backward, Adam)

    @property
    def recovered(self) -> float:
        """Share of the loss PTQ added that QAT took back (1.0 = all of it; > 1 when it ends below float)."""
        lost = self.ptq_loss - self.float_loss
        return math.nan if lost <= 0 else (self.ptq_loss - self.qat_loss) / lost


@dataclass(frozen=True)
class QATDetail:
    """What QAT reports per linear (LayerReport.detail)."""

    rtn_sqnr_db: float  # SQNR of round-to-nearest of the original weight, for comparison
    moved: float | None = None  # int grids: share of weights more than half a step from RTN's value
    trace: QATTrace | None = None  # how training went; on the first layer's report only


def qat_trace(reports: list[LayerReport]) -> QATTrace | None:
    """The run's QATTrace, from the reports `quantize_model(..., QATConfig(...))` returned."""
    return next(
        (r.detail.trace for r in reports if isinstance(r.detail, QATDetail) and r.detail.trace is not None),
        None,
    )


# -- data ---------------------------------------------------------------------------------------------


def split_calibration(calib, held_out: int) -> tuple[Tensor, Tensor]:
    """(train, held_out) token ids: a given pair, or the last `held_out` windows of one tensor."""
    if isinstance(calib, (tuple, list)) and len(calib) == 2:
        return check_calibration(calib[0], "QAT"), check_calibration(calib[1], "QAT")
    ids = check_calibration(calib, "QAT")
    if ids.shape[0] <= held_out:
        raise ValueError(
            f"QAT holds out {held_out} calibration window(s) to measure the loss and trains on the rest, "
            f"but got {ids.shape[0]}; pass more windows, lower held_out, or pass (train, held_out) tensors"
        )
    return ids[:-held_out], ids[-held_out:]


def _batches(windows: int, batch: int, steps: int, seed: int) -> list[Tensor]:
    """Window indices for each step: seeded shuffles of all windows, one after another (epochs)."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps * batch:
        order += torch.randperm(windows, generator=generator).tolist()
    return [torch.tensor(order[s * batch : (s + 1) * batch]) for s in range(steps)]


def next_token_loss(model: nn.Module, ids: Tensor) -> Tensor:
    """Mean cross-entropy of predicting ids[:, 1:] from the prefix; ids (batch, tokens)."""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1]  # (batch, tokens - 1, vocab)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def held_out_loss(model: nn.Module, ids: Tensor) -> tuple[float, int]:
    """(mean NLL in nats, tokens scored) over held-out windows, as `engine.evaluation.perplexity.perplexity` scores."""
    result = perplexity(model, ids)
    return result.mean_nll, result.token_count


# -- the method ---------------------------------------------------------------------------------------


def prepare_qat_linears(model: nn.Module, scheme: QuantScheme) -> list[nn.Parameter]:
    """In place: freeze every parameter, make each quantizable linear a QATLinear; returns their weights.

    The returned latent weights are the only parameters left trainable.
    """
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    replace_linears(model, lambda linear, name: QATLinear.from_linear(linear, scheme))
    latent = [m.weight for m in model.modules() if isinstance(m, QATLinear)]
    for weight in latent:
        weight.requires_grad_(True)
    return latent


def _check_room(model: nn.Module, names: list[str]) -> None:
    """Refuse before training when float32 training state would not fit in free memory."""
    linear_elements = sum(model.get_submodule(n).weight.numel() for n in names)
    upcast = sum(p.numel() * (4 - p.element_size()) for p in model.parameters())  # 16-bit: float32 copy
    require_free(
        TRAINING_MEMORY * linear_elements * 4 + max(upcast, 0),
        next(model.parameters()).device,
        "QAT trains in float32 and keeps a copy of the linear weights, their gradients and Adam's two "
        "moments, in addition to the model",
        "Use a smaller model, or a post-training method (RTN, GPTQ, AWQ).",
    )


@register(QATConfig, name="QAT", calibration=Calibration.TRAIN_AND_HELD_OUT, detail_type=QATDetail)
def qat(model: nn.Module, config: QATConfig, calib, progress: Progress | None) -> list[LayerReport]:
    train_ids, held_ids = split_calibration(calib, config.held_out)
    names = linear_names(model)
    if not names:
        raise ValueError("QAT found no linear layer to quantize")
    check_shapes(model, config.weights)  # fail fast, before any forward
    _check_room(model, names)
    device = next(model.parameters()).device
    dtypes = {name: t.dtype for name, t in [*model.named_parameters(), *model.named_buffers()]}
    with one_thread(device):
        reports = _train(model, config, names, train_ids.to(device), held_ids.to(device), progress)
    with torch.no_grad():  # trained in float32 (see _train): every tensor gets back the dtype it came with
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name in dtypes and tensor.dtype != dtypes[name]:
                tensor.data = tensor.data.to(dtypes[name])
    return reports


def _train(model, config: QATConfig, names, train_ids, held_ids, progress) -> list[LayerReport]:
    say: Progress = progress or (lambda fraction, message: None)
    start = time.perf_counter()
    trainable_before = {name: p.requires_grad for name, p in model.named_parameters()}
    original = {n: model.get_submodule(n).weight.detach().float().clone() for n in names}  # for the SQNRs

    say(0.0, "Held-out loss of the float model")
    float_loss, held_tokens = held_out_loss(model, held_ids)
    model.float()  # Adam's second moment underflows in float16 (g^2 < 6e-8), and bfloat16 steps are coarse
    latent = prepare_qat_linears(model, config.weights)
    say(0.05, f"Held-out loss after rounding to {config.weights.label} (PTQ, step 0)")
    ptq_loss, _ = held_out_loss(model, held_ids)

    optimizer = torch.optim.Adam(latent, lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps)
    train_loss: list[float] = []
    train_start = time.perf_counter()
    with torch.enable_grad():
        for step, index in enumerate(_batches(train_ids.shape[0], config.batch, config.steps, config.seed)):
            loss = next_token_loss(model, train_ids[index])  # (batch, tokens) windows
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            train_loss.append(loss.item())
            say(
                0.1 + 0.8 * (step + 1) / config.steps,
                f"QAT step {step + 1}/{config.steps}: training loss {train_loss[-1]:.3f} "
                f"(PTQ held-out {ptq_loss:.3f}, float {float_loss:.3f})",
            )
    seconds_per_step = (time.perf_counter() - train_start) / config.steps
    optimizer.zero_grad(set_to_none=True)
    del optimizer, schedule

    say(0.9, "Held-out loss after QAT")
    qat_loss, _ = held_out_loss(model, held_ids)
    reports = _freeze(model, config.weights, original)
    quantized = set(names)
    for name, parameter in model.named_parameters():  # everything else gets its flag back
        trainable = trainable_before.get(name, False) and name.rpartition(".")[0] not in quantized
        parameter.requires_grad_(trainable)
    seconds = (time.perf_counter() - start) / len(reports)  # training is joint: each layer's equal share
    reports = [replace(r, seconds=seconds) for r in reports]
    trace = QATTrace(
        train_loss=train_loss,
        float_loss=float_loss,
        ptq_loss=ptq_loss,
        qat_loss=qat_loss,
        train_windows=train_ids.shape[0],
        tokens_per_step=train_ids[: config.batch].numel(),
        held_out_tokens=held_tokens,
        seconds_per_step=seconds_per_step,
    )
    reports[0] = replace(reports[0], detail=replace(reports[0].detail, trace=trace))
    say(1.0, f"QAT done: held-out loss {qat_loss:.3f} (PTQ {ptq_loss:.3f}, float {float_loss:.3f})")
    return reports


@torch.no_grad()
def moved_level(original: Tensor, rtn: Tensor, quantized: Tensor, scheme: QuantScheme) -> float:
    """Share of weights more than half a step of RTN's int grid away from RTN's value: they changed level.

    Counting every weight whose value differs from RTN's would count whole groups whose scale or zero
    point moved with the latent range (SmolLM2 after 4 steps: about half the values differ, 0.4% moved).
    """
    scale = choose_qparams(original, scheme).scale  # (rows, blocks per row): group, channel or tensor
    scale = scale.repeat_interleave(original.shape[-1] // scale.shape[-1], dim=-1)  # broadcasts to the weight
    return float(((quantized.float() - rtn.float()).abs() > 0.5 * scale).float().mean())


def _freeze(model: nn.Module, scheme: QuantScheme, original: dict[str, Tensor]) -> list[LayerReport]:
    """In place: every QATLinear becomes the FakeQuantLinear of its trained latent weight; one report each."""
    reports: list[LayerReport] = []

    def freeze(linear: QATLinear, name: str) -> nn.Module:
        frozen = fake_quant_linear(linear, scheme)  # the trained latent weight, rounded as RTN rounds
        before = original.pop(name)  # (out_features, in_features) float32
        rtn = fake_quantize(before, scheme)
        moved = moved_level(before, rtn, frozen.weight, scheme) if scheme.is_int else None
        detail = QATDetail(rtn_sqnr_db=sqnr_db(before, rtn), moved=moved)
        bits = bits_per_weight(scheme, linear.in_features, linear.out_features)
        reports.append(LayerReport(name, bits, sqnr_db(before, frozen.weight.float()), detail=detail))
        return frozen

    replace_linears(model, freeze, filter_fn=lambda module, name: isinstance(module, QATLinear))
    return reports
