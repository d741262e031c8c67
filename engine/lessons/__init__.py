"""The numbers behind the Learn page: one small, seeded experiment per concept.

Each lesson returns a frozen dataclass of tensors and floats plus a `takeaway` sentence built from those
numbers, so the page never states a claim its own data does not show. QAT lives in `engine.quant.ste`.

Where we simplify:
- Synthetic tensors stand in for weights: the default model's weights were shipped on a 4-bit grid
  (Q4_1), so re-quantizing them would show near-zero error that says nothing about the method.
- Activations for the calibration lesson are the inputs of one MLP down-projection of the loaded
  model on our own short texts; calibration texts and held-out texts differ, as they would in use.
- The speed lesson is an idealised roofline (engine/speed/roofline.py), not a measurement; the Speed page
  measures.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.analysis.blocks import block_levels
from engine.analysis.tensors import synthetic_tensor
from engine.quant import formats
from engine.quant.metrics import mse, sqnr_db
from engine.quant.observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
)
from engine.quant.primitives import choose_qparams, fake_quantize, quantize
from engine.quant.schemes import QuantScheme, bits_per_weight


def _ratio(worse: float, better: float) -> float:
    return math.inf if better == 0 else worse / better


def _sample(x: Tensor, n: int = 20_000, seed: int = 0) -> Tensor:
    flat = x.reshape(-1)
    if flat.numel() <= n:
        return flat.clone()
    return flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))[:n]]


# -- 1. linear vs non-linear (quantile) grids --------------------------------------------------------

DISTRIBUTIONS = ("gaussian", "laplace", "uniform")
MAPPING_FORMATS = ("int4", "nf4", "fp4")


def distribution_tensor(kind: str, rows: int = 256, cols: int = 1024, seed: int = 0) -> Tensor:
    """(rows, cols) unit-variance values from `kind` (gaussian / laplace / uniform), no outliers."""
    if kind == "uniform":
        generator = torch.Generator().manual_seed(seed)
        return (torch.rand(rows, cols, generator=generator) * 2 - 1) * math.sqrt(3)
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {kind!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    return synthetic_tensor(kind, rows, cols, outliers=0, seed=seed)


@dataclass(frozen=True)
class MappingLesson:
    distribution: str
    block: int  # values sharing one absmax scale
    normalized: Tensor  # (n,) sample of value / its block's absmax, in [-1, 1]
    levels: dict[str, Tensor]  # format -> its levels at scale 1 (what normalized values round to)
    mse: dict[str, float]  # format -> MSE on the whole tensor
    sqnr_db: dict[str, float]

    @property
    def takeaway(self) -> str:
        nf4, int4 = self.mse["nf4"], self.mse["int4"]
        best = min(self.mse, key=self.mse.get)
        where = f"On {self.distribution} data in blocks of {self.block}"
        if nf4 < int4:
            line = f"{where}, NF4's MSE is {_ratio(int4, nf4):.2f}x lower than int4's: "
            line += "its levels sit where the values crowd."
        else:
            line = f"{where}, int4's MSE is {_ratio(nf4, int4):.2f}x lower than NF4's: "
            line += "evenly spread values want evenly spaced levels."
        return line + f" Best of the three: {best.upper()} ({self.sqnr_db[best]:.1f} dB SQNR)."


def mapping_lesson(distribution: str = "gaussian", block: int = 64, seed: int = 0) -> MappingLesson:
    """int4 (uniform) vs NF4 (normal quantiles) vs FP4 (float), all absmax-scaled per block of `block`."""
    x = distribution_tensor(distribution, seed=seed)  # (256, 1024)
    if 1024 % block:
        raise ValueError(f"block {block} does not divide the 1024-value rows; use a power of two up to 1024")
    schemes = {
        "int4": QuantScheme(4, "int", True, "group", block, scale_dtype="float32"),
        "nf4": QuantScheme(4, "nf4", True, "group", block, scale_dtype="float32"),
        "fp4": QuantScheme(4, "fp4", True, "group", block, scale_dtype="float32"),
    }
    errors, sqnr, levels = {}, {}, {}
    for name, scheme in schemes.items():
        xq = fake_quantize(x, scheme)
        errors[name], sqnr[name] = mse(x, xq), sqnr_db(x, xq)
        grid = formats.grid_values(scheme) / formats.grid_max(scheme)
        levels[name] = torch.unique(
            grid[grid.abs() <= 1.0 + 1e-6]
        )  # int4's -8 only by clipping; fp4's ±0 is one level
    blocks = x.reshape(-1, block)  # (n_blocks, block)
    normalized = blocks / blocks.abs().amax(dim=1, keepdim=True)
    return MappingLesson(distribution, block, _sample(normalized, seed=seed), levels, errors, sqnr)


# -- 2. symmetric vs asymmetric ----------------------------------------------------------------------

SYMMETRY_DATA = {"relu": "ReLU outputs", "silu": "SiLU outputs", "gaussian": "Gaussian (two-sided)"}


def activation_like(kind: str, rows: int = 64, cols: int = 1024, seed: int = 0) -> Tensor:
    """ReLU(N(0,1)) (one-sided), SiLU(2 N(0,1)) (mostly one-sided), or N(0,1) (two-sided)."""
    z = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    if kind == "relu":
        return torch.relu(z)
    if kind == "silu":
        return nn.functional.silu(2 * z)
    if kind == "gaussian":
        return z
    raise ValueError(f"unknown data {kind!r}; choose one of {', '.join(SYMMETRY_DATA)}")


@dataclass(frozen=True)
class SymmetryLesson:
    data: str
    bits: int
    values: Tensor  # (n,) sample of the data
    levels: dict[str, Tensor]  # "symmetric" / "asymmetric" -> real-valued levels of the per-tensor grid
    mse: dict[str, float]
    codes_used: dict[str, int]  # distinct codes the data actually hits
    bits_sweep: dict[str, list[float]]  # MSE at 2..8 bits, for each variant
    sweep_bits: list[int]

    @property
    def takeaway(self) -> str:
        sym, asym = self.mse["symmetric"], self.mse["asymmetric"]
        used = f"symmetric uses {self.codes_used['symmetric']} of its {2**self.bits} codes"
        on = f"On {SYMMETRY_DATA[self.data]}"
        if asym < sym / 1.1:
            return (
                f"{on}, asymmetric int{self.bits} has {_ratio(sym, asym):.1f}x lower MSE than symmetric: "
                f"{used}, asymmetric {self.codes_used['asymmetric']}."
            )
        if sym < asym / 1.1:
            return f"{on}, symmetric int{self.bits} has {_ratio(asym, sym):.1f}x lower MSE ({used})."
        return (
            f"{on} the two are within 10% (MSE ratio {_ratio(sym, asym):.2f}): two-sided data fills both "
            f"halves of the grid, so a zero point buys nothing ({used})."
        )


def symmetry_lesson(data: str = "relu", bits: int = 4, seed: int = 0) -> SymmetryLesson:
    """Per-tensor int grids with and without a zero point on the same activation-like tensor."""
    x = activation_like(data, seed=seed)  # (64, 1024)
    variants = {"symmetric": True, "asymmetric": False}
    levels, errors, used = {}, {}, {}
    for name, symmetric in variants.items():
        scheme = QuantScheme(bits, "int", symmetric, "tensor", scale_dtype="float32")
        qt = quantize(x, scheme)
        errors[name] = mse(x, qt.dequantize())
        used[name] = int(torch.unique(qt.codes).numel())
        scale, zero = choose_qparams(x, scheme)
        levels[name] = block_levels(scheme, float(scale), None if zero is None else float(zero))
    sweep_bits = list(range(2, 9))
    sweep = {
        name: [mse(x, fake_quantize(x, QuantScheme(b, "int", symmetric, "tensor"))) for b in sweep_bits]
        for name, symmetric in variants.items()
    }
    return SymmetryLesson(data, bits, _sample(x, seed=seed), levels, errors, used, sweep, sweep_bits)


# -- 3. granularity and the cost of scales -----------------------------------------------------------

GRANULARITY_STEPS = (("tensor", None), ("channel", None), ("group", 256), ("group", 128), ("group", 64))
GRANULARITY_STEPS += (("group", 32), ("group", 16))


@dataclass(frozen=True)
class GranularityRow:
    scheme: QuantScheme
    scales: int  # how many scales the tensor stores
    bits_per_weight: float  # codes plus fp16 scales
    mse: float
    sqnr_db: float


@dataclass(frozen=True)
class GranularityLesson:
    bits: int
    outliers: int
    shape: tuple[int, int]
    rows: list[GranularityRow]  # coarse to fine

    @property
    def takeaway(self) -> str:
        coarse = self.rows[0]
        g64 = next(r for r in self.rows if r.scheme.group_size == 64)
        gain = g64.sqnr_db - coarse.sqnr_db
        return (
            f"Groups of 64 change SQNR by {gain:+.1f} dB over a single per-tensor scale and cost "
            f"{g64.bits_per_weight - coarse.bits_per_weight:.3f} extra bits per weight "
            f"({g64.bits_per_weight:.3f} vs {coarse.bits_per_weight:.3f})"
            + (
                f"; {self.outliers} outlier(s) no longer stretch every other value's scale."
                if self.outliers
                else "."
            )
        )


def granularity_lesson(
    bits: int = 4, outliers: int = 4, outlier_scale: float = 20.0, seed: int = 0
) -> GranularityLesson:
    """One weight-like tensor with planted outliers, quantized with ever finer scales."""
    shape = (256, 1024)  # (out_features, in_features)
    x = synthetic_tensor("gaussian", *shape, outliers=outliers, outlier_scale=outlier_scale, seed=seed)
    rows = []
    for granularity, group in GRANULARITY_STEPS:
        scheme = QuantScheme(bits, "int", True, granularity, group)
        xq = fake_quantize(x, scheme)
        scales = {"tensor": 1, "channel": shape[0]}.get(granularity) or x.numel() // (group or 1)
        rows.append(
            GranularityRow(
                scheme, scales, bits_per_weight(scheme, shape[1], shape[0]), mse(x, xq), sqnr_db(x, xq)
            )
        )
    return GranularityLesson(bits, outliers, shape, rows)


# -- 4. PTQ: dynamic vs static, and calibration observers --------------------------------------------

CALIBRATION_TEXTS = (
    "Quantization stores each number with fewer bits. A scale tells us how far apart the levels are, and "
    "every value is rounded to the nearest level before it is stored.",
    "The ferry waited on the far bank until the river calmed down. By noon the passengers were drinking tea "
    "on the deck and counting the boats that passed.",
    "def mean(values):\n    total = 0\n    for v in values:\n        total += v\n    return total / "
    "len(values)",
    "In 1969 two astronauts walked on the Moon while a third orbited above them, and roughly 600 million "
    "people watched the grainy pictures on television.",
)
HELD_OUT_TEXTS = (
    "A good recipe for bread needs flour, water, salt and yeast, and above all patience while the dough "
    "rises in a warm corner of the kitchen.",
    "Large language models predict the next token from the ones before it; their activations are mostly "
    "small, but a few channels carry values a hundred times larger.",
)
DOWN_PROJECTION_NAMES = ("down_proj", "fc2", "dense_4h_to_h", "w2")  # MLP output projections by family


def mlp_output_projections(model: nn.Module) -> list[str]:
    """Names of the MLP output projections (one per layer), in order; e.g. model.layers.3.mlp.down_proj."""
    names = [
        name
        for name, _ in model.named_modules()
        if name.rsplit(".", 1)[-1] in DOWN_PROJECTION_NAMES or name.endswith("mlp.c_proj")
    ]
    if not names:
        raise ValueError(
            "this model has no MLP output projection named down_proj / fc2 / dense_4h_to_h / w2 / "
            "mlp.c_proj; use the synthetic activations instead"
        )
    return names


def capture_inputs(model: nn.Module, tokenizer, texts: tuple[str, ...], module_name: str) -> list[Tensor]:
    """The input of `module_name` for each text: a list of (tokens, features) float32 CPU tensors.

    The forward pre-hook is removed even if a forward fails, and it records only calls from this
    thread, because the model is shared with every browser session.
    """
    module = model.get_submodule(module_name)
    device = next(model.parameters()).device
    owner = threading.get_ident()
    captured: list[Tensor] = []

    def hook(_module, args):
        if threading.get_ident() == owner:
            captured.append(args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu())

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for text in texts:
                ids = tokenizer(text, return_tensors="pt").input_ids.to(device)  # (1, tokens)
                model(input_ids=ids)
    finally:
        handle.remove()
    if len(captured) != len(texts):
        raise ValueError(
            f"{module_name} ran {len(captured)} times for {len(texts)} texts; expected once each"
        )
    return captured


def synthetic_activations(
    batches: int = 6, tokens: int = 48, features: int = 1536, seed: int = 0
) -> list[Tensor]:
    """Heavy-tailed stand-ins: Student-t (3 degrees of freedom) values, per-feature scales from a
    log-normal, so rare values reach 30-100x the typical one. A list of (tokens, features) batches."""
    generator = torch.Generator().manual_seed(seed)
    feature_scale = torch.exp(0.5 * torch.randn(features, generator=generator))  # (features,)
    out = []
    for _ in range(batches):
        normal = torch.randn(tokens, features, generator=generator)
        chi2 = torch.randn(3, tokens, features, generator=generator).pow(2).sum(0)
        out.append(0.2 * feature_scale * normal / torch.sqrt(chi2 / 3))  # t(3), (tokens, features)
    return out


@dataclass(frozen=True)
class CalibrationRow:
    method: str  # "min-max", "percentile 99.99%", ..., "dynamic per-token"
    static: bool  # scales fixed from calibration data, or computed from each input at run time
    clip: float  # the largest magnitude the grid represents (per-tensor methods); nan when per token
    mse: float  # on the held-out batches
    sqnr_db: float
    clipped_fraction: float  # of held-out values beyond the range


@dataclass(frozen=True)
class CalibrationLesson:
    bits: int
    source: str  # where the activations came from
    rows: list[CalibrationRow]
    values: Tensor  # (n,) sample of held-out values, for the histogram
    absmax: float  # of the held-out values
    std: float

    def row(self, method: str) -> CalibrationRow:
        return next(r for r in self.rows if r.method == method)

    @property
    def takeaway(self) -> str:
        static = [r for r in self.rows if r.static]
        best = min(static, key=lambda r: r.mse)
        minmax = self.row("min-max")
        per_token = self.row("dynamic per-token")
        if best is minmax:
            line = (
                f"Static int{self.bits}: min-max is the best observer here; clipping costs more than the "
                "resolution it buys."
            )
        else:
            line = (
                f"Static int{self.bits}: the {best.method} range (±{best.clip:.3g}) gives "
                f"{_ratio(minmax.mse, best.mse):.1f}x lower MSE than min-max (±{minmax.clip:.3g}) on "
                f"held-out text, whose std is only {self.std:.3g}."
            )
        if per_token.mse < best.mse:
            line += (
                f" Dynamic per-token scales do {_ratio(best.mse, per_token.mse):.1f}x better still, at the "
                "cost of a max over every token at run time."
            )
        else:
            line += " Dynamic per-token scales do not beat it here."
        return line


def calibration_lesson(
    calibration: list[Tensor], held_out: list[Tensor], bits: int = 8, source: str = "synthetic"
) -> CalibrationLesson:
    """Calibrate observers on `calibration` batches, then quantize `held_out` batches statically with each
    observer's per-tensor range, and dynamically (per tensor per batch, and per token).

    Batches are (tokens, features) tensors.
    """
    if not calibration or not held_out:
        raise ValueError("calibration_lesson needs at least one calibration and one held-out batch")
    scheme = QuantScheme(bits, "int", True, "tensor")
    observers = {
        "min-max": MinMaxObserver(),
        "moving-average min-max": MovingAverageMinMaxObserver(momentum=0.1),
        "percentile 99.9%": PercentileObserver(99.9),
        "percentile 99.99%": PercentileObserver(99.99),
        "MSE-optimal clip": MSEObserver(scheme),
    }
    for batch in calibration:
        for observer in observers.values():
            observer.update(batch)
    reference = torch.cat(held_out)  # (tokens, features)
    rows = []
    for name, observer in observers.items():
        scale, _ = observer.qparams(scheme)
        clip = float(scale) * formats.grid_max(scheme)
        xq = fake_quantize(reference, scheme, scale=scale)
        clipped = float((reference.abs() > clip * (1 + 0.5 / formats.grid_max(scheme))).float().mean())
        rows.append(CalibrationRow(name, True, clip, mse(reference, xq), sqnr_db(reference, xq), clipped))
    per_batch = torch.cat([fake_quantize(b, scheme) for b in held_out])
    rows.append(
        CalibrationRow(
            "dynamic per-tensor",
            False,
            float(reference.abs().max()),
            mse(reference, per_batch),
            sqnr_db(reference, per_batch),
            0.0,
        )
    )
    per_token = fake_quantize(reference, QuantScheme(bits, "int", True, "channel"))
    rows.append(
        CalibrationRow(
            "dynamic per-token",
            False,
            math.nan,
            mse(reference, per_token),
            sqnr_db(reference, per_token),
            0.0,
        )
    )
    return CalibrationLesson(
        bits, source, rows, _sample(reference, 40_000), float(reference.abs().max()), float(reference.std())
    )


# -- 6. why quantized inference is not automatically faster: engine/speed/roofline.py ----------------------
from engine.speed.roofline import (  # noqa: E402, F401  (re-exported: the Learn page reads them from here)
    ACCELERATORS,
    WEIGHT_FORMATS,
    SpeedLesson,
    layer_cost,
    layer_time,
    speed_lesson,
)
