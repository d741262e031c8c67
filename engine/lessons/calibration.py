"""Lesson 4: PTQ with dynamic vs static activation scales, and the observers that calibrate static ones.

Activations are the inputs of one MLP down-projection of the loaded model on our own short texts
(`capture_inputs`), or heavy-tailed synthetic stand-ins; calibration texts and held-out texts differ, as
they would in use.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.hooks import pre_hooks
from engine.lessons._common import ratio, sample_values
from engine.quant import formats
from engine.quant.metrics import mse, sqnr_db
from engine.quant.observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
)
from engine.quant.primitives import fake_quantize
from engine.quant.schemes import QuantScheme

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

    with pre_hooks([(module, hook)]), torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids.to(device)  # (1, tokens)
            model(input_ids=ids)
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
                f"{ratio(minmax.mse, best.mse):.1f}x lower MSE than min-max (±{minmax.clip:.3g}) on "
                f"held-out text, whose std is only {self.std:.3g}."
            )
        if per_token.mse < best.mse:
            line += (
                f" Dynamic per-token scales do {ratio(best.mse, per_token.mse):.1f}x better still, at the "
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
        bits,
        source,
        rows,
        sample_values(reference, 40_000),
        float(reference.abs().max()),
        float(reference.std()),
    )
