"""A planned recipe as a method of the registry, so its model is a model like any other: kept as a run,
offered on Compare and Speed, exported (a recipe of GGUF types only as a mixed-type .gguf).

    config = PlannedConfig.from_recipe(recipe)
    quantized = quantize_model(model, config)   # the same weights as `apply(model, recipe)`, with reports

Each named linear's weight is fake-quantized in its own format (`fake_quantize_any`), the same operation
as `engine.planner.recipe.apply`; every other linear is left as it is (a quick-look recipe plans only the
last layers). Each tensor's report carries its exact bits per weight (scales and zero points included,
`engine.planner.candidates.exact_bits`) and its format (`PlannedDetail`).

The recipe module is imported inside the handler: engine.planner's costs import engine.methods'
calibration, so a module-level import here would close a loop at import time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engine.methods.registry import Calibration, LayerReport, register
from engine.planner.candidates import TensorInfo, exact_bits
from engine.quant.metrics import sqnr_db
from engine.quant.weight_formats import Format, check_fits, fake_quantize_any

if TYPE_CHECKING:
    from engine.planner.recipe import PlannedRecipe


@dataclass(frozen=True)
class PlannedConfig:
    """A format per named linear (hashable: a cache key). `shapes` are the shapes the recipe was planned
    for (checked against the model first); empty: only the names are checked."""

    label: str  # the run's name, as the pages show it: "Planned 4.50 bpw"
    formats: tuple[tuple[str, Format], ...]  # (linear name, its format), in model order
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        if not self.formats:
            raise ValueError("A planned recipe needs at least one tensor.")

    @classmethod
    def from_recipe(cls, recipe: PlannedRecipe, label: str | None = None) -> PlannedConfig:
        """The recipe's formats and shapes; `label` defaults to "Planned 4.50 bpw" (its bits per weight),
        with the recipe's own label added when it is not the planner's."""
        if label is None:
            label = f"Planned {recipe.bits_per_weight:.2f} bpw"
            if not recipe.label.startswith("planner at"):
                label += f" ({recipe.label})"
        formats = tuple((t.name, recipe.formats[t.name]) for t in recipe.tensors)
        shapes = tuple((t.name, tuple(t.shape)) for t in recipe.tensors)
        return cls(label, formats, shapes)


@dataclass(frozen=True)
class PlannedDetail:
    """The format a tensor got (LayerReport.detail)."""

    fmt: Format

    @property
    def label(self) -> str:
        return self.fmt.label


def _check(model, config: PlannedConfig) -> list[TensorInfo]:
    """The planned tensors as the model has them; ValueError naming the tensors that differ (not in the
    model, another shape) or whose format does not fit, before any weight changes."""
    from engine.planner.recipe import PlannedRecipe, check_matches  # see the module's docstring

    formats = dict(config.formats)
    modules = dict(model.named_modules())
    have = [(n, tuple(modules[n].weight.shape)) for n in formats if hasattr(modules.get(n), "weight")]
    shapes = dict(config.shapes) or dict(have)
    planned = [TensorInfo(name, tuple(shapes.get(name, ())), None) for name in formats]
    check_matches(PlannedRecipe(config.label, planned, formats, {}), have)
    tensors = [TensorInfo(name, shape, None) for name, shape in have]
    for tensor in tensors:
        try:
            check_fits(formats[tensor.name], tensor.shape)
        except ValueError as exc:
            raise ValueError(f"{tensor.name}: {exc}") from exc
    return tensors


@register(PlannedConfig, name="Planned recipe", calibration=Calibration.NONE, detail_type=PlannedDetail)
def planned(model, config: PlannedConfig, calib, progress) -> list[LayerReport]:
    tensors = _check(model, config)  # every name, shape and fit first: refuse before touching anything
    formats = dict(config.formats)
    reports: list[LayerReport] = []
    for index, tensor in enumerate(tensors):
        start = time.perf_counter()
        fmt = formats[tensor.name]
        weight = model.get_submodule(tensor.name).weight
        with torch.no_grad():
            original = weight.detach().clone()
            weight.copy_(fake_quantize_any(original, fmt))
            sqnr = sqnr_db(original.float(), weight.detach().float())
        bits = exact_bits(fmt, tensor) / tensor.numel
        detail = PlannedDetail(fmt)
        reports.append(
            LayerReport(tensor.name, bits, sqnr, seconds=time.perf_counter() - start, detail=detail)
        )
        if progress:
            progress((index + 1) / len(tensors), f"{tensor.name}: {fmt.label} ({index + 1}/{len(tensors)})")
    return reports


__all__ = ["PlannedConfig", "PlannedDetail"]
