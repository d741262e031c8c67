"""The Learn page's QAT lesson: the STE's staircase picture, and a seeded spiral classifier trained in float,
rounded (PTQ) and fine-tuned with QAT.

Built on `engine.quant.ste` (`fake_quant_ste`, `QATLinear`, `prepare_qat`). The demo task is a seeded 2-D
spiral classifier (a 2-64-64-3 ReLU MLP), not a language model, so a full float training, PTQ and QAT run
in seconds on a CPU. Every linear, the first and the last included, is quantized per output channel; PTQ
means round-to-nearest of the trained float weights, which is exactly `prepare_qat(model)` before any QAT
step. The demo runs on one thread, one demo at a time: with 64-wide layers a second thread only adds
synchronisation, and when another process holds a core, OpenMP threads waiting on each other make it
many times slower.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine._types import Progress
from engine.quant import formats
from engine.quant.primitives import fake_quantize
from engine.quant.schemes import QuantScheme
from engine.quant.ste import QATLinear, fake_quant_ste, prepare_qat

# -- the staircase picture ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Staircase:
    x: Tensor  # (points,) inputs, beyond the grid on both sides
    forward: Tensor  # (points,) fake_quantize(x): the staircase
    ste_gradient: Tensor  # (points,) d forward / d x as the STE reports it: 1 on the grid, 0 where clipped
    levels: Tensor  # (levels,) every value the forward can return
    low: float  # the clip range: the STE passes gradients only between low and high
    high: float


def qat_step_staircase(bits: int = 3, points: int = 801, clip_gradient: bool = True) -> Staircase:
    """Staircase forward and straight-through backward of a symmetric int grid with range [-1, 1]."""
    scheme = QuantScheme(bits, "int", True, "tensor", scale_dtype="float32")  # the scale is stored exactly
    qmin, qmax = formats.int_range(bits, symmetric=True)
    scale = torch.tensor(1.0 / qmax)
    x = torch.linspace(-1.6, 1.6, points, requires_grad=True)
    y = fake_quant_ste(x, scheme, scale=scale, clip_gradient=clip_gradient)
    y.sum().backward()  # each y_i depends on x_i only, so this is the elementwise derivative
    step = float(scale)
    levels = torch.arange(qmin, qmax + 1, dtype=torch.float32) * step
    return Staircase(
        x.detach(), y.detach(), x.grad.detach(), levels, (qmin - 0.5) * step, (qmax + 0.5) * step
    )


# -- the demo task -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpiralTask:
    classes: int = 3  # arms of the spiral, one class each
    turns: float = 1.75  # windings per arm: more turns need a more precise function, so bits matter
    train_points: int = 4000
    test_points: int = 2000
    noise: float = 0.02  # Gaussian jitter on each point, in units of the spiral's radius
    hidden: int = 64  # width of the two hidden layers
    float_steps: int = 800  # Adam steps to train the float model from scratch
    float_lr: float = 1e-2
    qat_lr: float = 5e-3  # QAT fine-tunes from the float weights, so a smaller rate
    batch: int = 256


def spirals(task: SpiralTask, points: int, seed: int) -> tuple[Tensor, Tensor]:
    """(points, 2) float inputs with unit std and (points,) int64 labels, one class per arm."""
    generator = torch.Generator().manual_seed(seed)
    per_class = points // task.classes
    t = torch.rand(task.classes, per_class, generator=generator)  # (classes, per_class) position on arm
    offset = torch.arange(task.classes).view(-1, 1) * 2 * math.pi / task.classes
    angle = t * task.turns * 2 * math.pi + offset
    radius = 0.1 + t
    x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1).reshape(-1, 2)
    x = x + task.noise * torch.randn(x.shape, generator=generator)
    labels = torch.arange(task.classes).repeat_interleave(per_class)
    return x / 0.47, labels  # 0.47 ~ the coordinates' std, fixed so train and test share the scaling


def spiral_mlp(task: SpiralTask, seed: int) -> nn.Sequential:
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(2, task.hidden),
        nn.ReLU(),
        nn.Linear(task.hidden, task.hidden),
        nn.ReLU(),
        nn.Linear(task.hidden, task.classes),
    )
    with torch.no_grad():  # nn.Linear's own init, drawn from our generator instead of the global one
        for layer in model:
            if isinstance(layer, nn.Linear):
                bound = 1 / math.sqrt(layer.in_features)
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) * 2 * bound - bound)
                layer.bias.copy_(torch.rand(layer.bias.shape, generator=generator) * 2 * bound - bound)
    return model


def train(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    progress: Callable[[float], None] | None = None,
) -> list[float]:
    """Adam with a cosine schedule on random minibatches; returns the loss of every step."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1 (got {steps})")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    losses = []
    for step in range(steps):
        index = torch.randint(0, len(x), (batch,), generator=generator)
        loss = F.cross_entropy(model(x[index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if progress is not None and (step % 50 == 0 or step == steps - 1):
            progress((step + 1) / steps)
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, labels: Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on the whole set."""
    logits = model(x)  # (points, classes)
    return float((logits.argmax(-1) == labels).float().mean()), float(F.cross_entropy(logits, labels))


@dataclass(frozen=True)
class GradientCheck:
    """Does the STE hand the latent weights exactly the gradient computed at the quantized weights?"""

    max_abs_difference: float  # between d loss / d latent W (through the STE) and d loss / d Q(W)
    gradient_norm: float  # of d loss / d Q(W), for scale: the staircase's own derivative would give 0


def straight_through_check(qat_model: nn.Module, x: Tensor, labels: Tensor) -> GradientCheck:
    """Compare STE gradients with those of a plain copy whose weights are the quantized values."""
    qat_model = copy.deepcopy(qat_model)
    plain = copy.deepcopy(qat_model)
    quantized = []
    for name, module in list(plain.named_modules()):
        if isinstance(module, QATLinear):
            linear = nn.Linear(module.in_features, module.out_features, module.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(fake_quantize(module.weight, module.weight_scheme))
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent) if parent else plain, child, linear)
            quantized.append(linear.weight)
    F.cross_entropy(qat_model(x), labels).backward()
    F.cross_entropy(plain(x), labels).backward()
    latent = [m.weight.grad for m in qat_model.modules() if isinstance(m, QATLinear)]
    at_q = [w.grad for w in quantized]
    difference = max(float((a - b).abs().max()) for a, b in zip(latent, at_q, strict=True))
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in at_q))
    return GradientCheck(difference, norm)


@dataclass(frozen=True)
class DecisionRegions:
    xs: Tensor  # (width,) grid coordinates
    ys: Tensor  # (height,)
    predictions: dict[str, Tensor]  # "float" / "PTQ" / "QAT" -> (height, width) predicted class


@dataclass(frozen=True)
class QatReport:
    scheme: QuantScheme  # the weight scheme of every linear
    steps: int  # QAT steps
    seed: int
    float_accuracy: float  # test set, 0..1
    float_loss: float
    ptq_accuracy: float  # RTN of the trained float weights, no training
    ptq_loss: float
    qat_accuracy: float  # after `steps` QAT steps from the float weights
    qat_loss: float
    float_curve: list[float]  # minibatch loss of every float training step
    qat_curve: list[float]  # minibatch loss of every QAT step
    gradient_check: GradientCheck
    regions: DecisionRegions
    test_x: Tensor  # (points, 2)
    test_labels: Tensor  # (points,)
    float_seconds: float
    qat_seconds: float

    @property
    def recovered(self) -> float:
        """Share of the accuracy PTQ lost that QAT won back (1.0 = all of it; can be < 0 or > 1)."""
        lost = self.float_accuracy - self.ptq_accuracy
        return math.nan if lost <= 0 else (self.qat_accuracy - self.ptq_accuracy) / lost

    @property
    def takeaway(self) -> str:
        head = (
            f"At {self.scheme.bits} bits, rounding the trained weights (PTQ) takes test accuracy from "
            f"{self.float_accuracy:.1%} to {self.ptq_accuracy:.1%}; "
        )
        if self.float_accuracy - self.ptq_accuracy < 0.01:
            return head + (
                f"there is almost nothing to recover; {self.steps} QAT steps end at {self.qat_accuracy:.1%}."
            )
        return head + (
            f"{self.steps} QAT steps bring it back to {self.qat_accuracy:.1%}, "
            f"{max(self.recovered, 0.0):.0%} of what PTQ lost."
        )


def _regions(models: dict[str, nn.Module], x: Tensor, size: int = 90) -> DecisionRegions:
    low, high = float(x.min()) - 0.2, float(x.max()) + 0.2
    axis = torch.linspace(low, high, size)
    grid_y, grid_x = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)  # (size * size, 2)
    with torch.no_grad():
        predictions = {name: m(points).argmax(-1).view(size, size) for name, m in models.items()}
    return DecisionRegions(axis, axis, predictions)


_DEMO_LOCK = threading.Lock()  # one demo at a time: they are CPU-bound and set the thread count


@contextmanager
def _single_threaded() -> Iterator[None]:
    """torch.set_num_threads(1) for this thread, restored after (torch also uses it for new threads)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def run_qat_demo(
    bits: int = 3,
    steps: int = 400,
    seed: int = 0,
    progress: Progress | None = None,
    task: SpiralTask | None = None,
) -> QatReport:
    """Train a float spiral classifier, quantize it with RTN (PTQ), then fine-tune it with QAT."""
    with _DEMO_LOCK, _single_threaded():
        return _run_qat_demo(bits, steps, seed, progress, task)


def _run_qat_demo(
    bits: int, steps: int, seed: int, progress: Progress | None, task: SpiralTask | None
) -> QatReport:
    task = task or SpiralTask()
    scheme = QuantScheme(bits, "int", True, "channel")
    report = progress or (lambda fraction, message: None)
    x, labels = spirals(task, task.train_points, seed)
    test_x, test_labels = spirals(task, task.test_points, seed + 10_000)

    report(0.0, "Training the float model")
    start = time.perf_counter()
    model = spiral_mlp(task, seed)
    float_curve = train(
        model, x, labels, task.float_steps, task.float_lr, task.batch, seed,
        lambda f: report(0.5 * f, "Training the float model"),
    )  # fmt: skip
    float_seconds = time.perf_counter() - start
    float_accuracy, float_loss = evaluate(model, test_x, test_labels)

    report(0.5, f"Rounding to {scheme.label} (PTQ)")
    ptq = prepare_qat(model, scheme)
    ptq.eval()
    ptq_accuracy, ptq_loss = evaluate(ptq, test_x, test_labels)
    check = straight_through_check(ptq, x[: task.batch], labels[: task.batch])

    start = time.perf_counter()
    qat = prepare_qat(model, scheme)
    qat_curve = train(
        qat, x, labels, steps, task.qat_lr, task.batch, seed + 1,
        lambda f: report(0.5 + 0.48 * f, f"QAT fine-tuning at {bits} bits"),
    )  # fmt: skip
    qat_seconds = time.perf_counter() - start
    qat_accuracy, qat_loss = evaluate(qat, test_x, test_labels)

    regions = _regions({"float": model, "PTQ": ptq, "QAT": qat}, test_x)
    report(1.0, "Done")
    return QatReport(
        scheme, steps, seed,
        float_accuracy, float_loss, ptq_accuracy, ptq_loss, qat_accuracy, qat_loss,
        float_curve, qat_curve, check, regions, test_x, test_labels, float_seconds, qat_seconds,
    )  # fmt: skip
