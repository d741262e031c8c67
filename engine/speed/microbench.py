"""Linear-layer microbenchmarks: one y = x @ W^T per format at several batch sizes (rows of x).

Formats are the recipes of engine.speed.variants: 16/32-bit `nn.functional.linear` (the baseline: fp32 on
CPU, the activation dtype on a GPU), the packed `QuantLinear` of engine.kernels (W8A16, W4A16, W8A8;
tinygemm int4 too on CUDA) and, for comparison, bitsandbytes' own NF4 and LLM.int8() layers.

Every (shape, batch, format) gets two figures (engine.speed.timing.two_figures): **kernel time**, the
kernel alone (`QuantLinear.kernel_call` on input prepared once; the forward itself for layers with no
separate kernel), replayed from a CUDA graph on a GPU; and **call time**, what a model's forward pays per
call. Their difference is the overhead (Python, dispatch, casts, launches). Calls rotate over enough
copies of the weights (ROTATE_BYTES) that each one reads its weights from memory rather than from a cache
that a whole model would never fit in; "GB/s" is weight bytes (scales included) plus activation bytes in
and out, divided by the kernel time, and TFLOP/s too; speed-ups over the baseline are given for both.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from engine._types import Progress
from engine.quant.linear import linear_names
from engine.recipes import Recipe
from engine.speed.timing import WALL_CLOCK, KernelAndCall, two_figures
from engine.speed.variants import (
    _nbytes,
    available_formats,
    baseline_format,
    format_recipe,
    kernel_name,
    layer_for,
)

BATCH_SIZES = (1, 4, 16, 64, 256)
LLAMA_2_7B_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008))  # (out, in): q/k/v/o, gate/up, down
ROTATE_BYTES = {"cpu": 64 * 2**20, "cuda": 256 * 2**20}  # beyond the last-level cache (H100 L2: 50 MB)
MAX_COPIES = 64


@dataclass(frozen=True)
class LinearShape:
    out_features: int
    in_features: int
    count: int = 1  # layers of this shape in the model
    names: tuple[str, ...] = ()  # their short names (q_proj, ...)

    @property
    def label(self) -> str:
        names = f" {'/'.join(self.names)}" if self.names else ""
        return f"{self.out_features}×{self.in_features}{names}"


def output_head_shape(model: nn.Module) -> LinearShape | None:
    """The output head's (out, in): no method quantizes it, but in a small model it is the largest
    matmul of a decode step (SmolLM2-135M: 49,152 × 576, 113 MB in fp32)."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        return None
    return LinearShape(head.out_features, head.in_features, 1, ("lm_head",))


def model_linear_shapes(model: nn.Module) -> list[LinearShape]:
    """The distinct (out, in) shapes of the model's quantizable linears, most weights first."""
    counts: Counter = Counter()
    names: dict[tuple[int, int], list[str]] = {}
    for name in linear_names(model):
        module = model.get_submodule(name)
        shape = (module.out_features, module.in_features)
        counts[shape] += 1
        short = name.rpartition(".")[2]
        if short not in names.setdefault(shape, []):
            names[shape].append(short)
    shapes = [LinearShape(o, i, counts[(o, i)], tuple(names[(o, i)])) for o, i in counts]
    return sorted(shapes, key=lambda s: -s.count * s.out_features * s.in_features)


@dataclass(frozen=True)
class KernelTiming:
    shape: LinearShape
    batch: int
    format: str  # the recipe's label (W4A16, NF4 (bnb), ...)
    kernel: str  # what actually ran
    kernel_seconds: float  # median: the kernel alone (CUDA-graph replay on a GPU)
    call_seconds: float  # median: a forward, as a model's pays it (Python, dispatch, launches included)
    bytes: int  # weights with scales, plus activations in and out
    flops: float
    method: str = WALL_CLOCK  # how kernel time was taken (engine.speed.timing)
    baseline_kernel_seconds: float | None = None
    baseline_call_seconds: float | None = None

    @property
    def seconds(self) -> float:
        """Call time: what a model's forward pays per call."""
        return self.call_seconds

    @property
    def overhead_seconds(self) -> float:
        """Call time beyond the kernel (about 0, either sign, where the kernel is the call on a CPU)."""
        return self.call_seconds - self.kernel_seconds

    @property
    def gbytes_per_s(self) -> float:
        """Bytes moved over kernel time: what the memory delivered to the kernel."""
        return self.bytes / self.kernel_seconds / 1e9

    @property
    def tflops(self) -> float:
        return self.flops / self.kernel_seconds / 1e12

    @property
    def speedup(self) -> float | None:
        """Kernel time of the baseline over this kernel's."""
        if self.baseline_kernel_seconds is None:
            return None
        return self.baseline_kernel_seconds / self.kernel_seconds

    @property
    def call_speedup(self) -> float | None:
        """Call time of the baseline over this call's: what a model's forward gains."""
        return None if self.baseline_call_seconds is None else self.baseline_call_seconds / self.call_seconds


def kernel_of(layer: nn.Module, x: torch.Tensor) -> Callable[[], object] | None:
    """The layer's kernel alone on `x` prepared once (QuantLinear.kernel_call, or any layer's that has
    one), or None where the forward is the kernel (float linears, bitsandbytes, tinygemm)."""
    kernel_call = getattr(layer, "kernel_call", None)
    return kernel_call(x) if callable(kernel_call) else None


def _time_format(
    shape: LinearShape,
    recipe: Recipe,
    weight: torch.Tensor,
    batches,
    act_dtype: torch.dtype,
    group_size: int | None,
    rotate_bytes: int | None,
    timing: dict,
    generator: torch.Generator,
) -> list[tuple[int, str, KernelAndCall, int]]:
    """(batch, kernel, kernel and call time, bytes moved) of one format on one shape, per batch."""
    device = str(weight.device)
    x_dtype = recipe.dtype or act_dtype  # 16/32-bit baselines take their own dtype
    layer = layer_for(recipe, weight, group_size, x_dtype)
    weight_bytes = _nbytes(layer)
    copies = min(MAX_COPIES, math.ceil(rotate_bytes / weight_bytes)) if rotate_bytes else 1
    layers = [layer] + [copy.deepcopy(layer) for _ in range(copies - 1)]
    first = torch.zeros(1, shape.in_features, device=device, dtype=x_dtype)
    for each in layers:  # one call each first: bitsandbytes repacks CPU weights at its first call
        each(first)
    rows = []
    for batch in batches:
        x = torch.randn(batch, shape.in_features, generator=generator).to(device, x_dtype)
        for each in layers:  # a forward at this batch first: a kernel that fails here falls back before
            each(x)  # its kernel_call is taken (engine.kernels.dispatch)
        kernels = [kernel_of(m, x) for m in layers]
        figures = two_figures(
            [lambda m=m, x=x: m(x) for m in layers],
            None if kernels[0] is None else kernels,
            device=device,
            **timing,
        )
        activation_bytes = batch * (shape.in_features + shape.out_features) * x.element_size()
        rows.append((batch, kernel_name(layer, batch), figures, weight_bytes + activation_bytes))
    return rows


@torch.inference_mode()
def microbenchmark(
    shapes: list[LinearShape],
    batches: tuple[int, ...] | list[int] = BATCH_SIZES,
    formats: list[Recipe | str] | None = None,
    device: str = "cpu",
    act_dtype: torch.dtype | None = None,
    repeats: int = 20,
    warmup: int = 3,
    group_size: int | None = None,
    rotate: bool = True,
    progress: Progress | None = None,
    seed: int = 0,
) -> list[KernelTiming]:
    """Time every (shape, batch, format); the baseline format is always measured, for the speed-ups.

    Quantized formats take activations in `act_dtype` (float32 on CPU, bfloat16 on a GPU: what the
    model feeds them); the 16/32-bit baselines take their own dtype.
    """
    formats = [f.label if isinstance(f, Recipe) else f for f in formats or available_formats(device)]
    unknown = set(formats) - set(available_formats(device))
    if unknown:
        raise ValueError(
            f"formats {sorted(unknown)} do not run on {device}; choose from {available_formats(device)}"
        )
    base = baseline_format(device)
    act_dtype = act_dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    order = [base] + [f for f in formats if f != base]
    rotate_bytes = ROTATE_BYTES["cuda" if device.startswith("cuda") else "cpu"] if rotate else None
    generator = torch.Generator().manual_seed(seed)
    timing = {"repeats": repeats, "warmup": warmup}
    results: list[KernelTiming] = []
    steps = len(shapes) * len(order)
    for shape_index, shape in enumerate(shapes):
        weight = (torch.randn(shape.out_features, shape.in_features, generator=generator) * 0.02).to(device)
        baseline: dict[int, KernelAndCall] = {}
        for fmt_index, fmt in enumerate(order):
            if progress:
                progress((shape_index * len(order) + fmt_index) / steps, f"{shape.label}: {fmt}")
            rows = _time_format(
                shape,
                format_recipe(fmt),
                weight,
                batches,
                act_dtype,
                group_size,
                rotate_bytes,
                timing,
                generator,
            )
            for batch, kernel, figures, moved in rows:
                if fmt == base:
                    baseline[batch] = figures
                flops = 2.0 * batch * shape.out_features * shape.in_features
                base_figures = baseline.get(batch)
                results.append(
                    KernelTiming(
                        shape,
                        batch,
                        fmt,
                        kernel,
                        figures.kernel_seconds,
                        figures.call_seconds,
                        moved,
                        flops,
                        figures.method,
                        None if base_figures is None else base_figures.kernel_seconds,
                        None if base_figures is None else base_figures.call_seconds,
                    )
                )
    if progress:
        progress(1.0, "Microbenchmarks done")
    return [r for r in results if r.format in formats]
