"""A planned recipe: one format per tensor, with its predicted loss and exact bits, plus what to do with
it: `plan` (the solver's recipe for a budget), `apply` (a fake-quantized copy of the model to measure),
llama.cpp `--tensor-type` lines and a JSON file that loads back (`recipe_from_json`, which refuses a
recipe written for another model and names the tensors that differ).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from engine._types import require_free
from engine.planner.candidates import TensorInfo, exact_bits
from engine.planner.costs import CostTable
from engine.planner.solve import solve
from engine.quant.gguf import GGUFType
from engine.quant.gguf.mixes import role_of
from engine.quant.weight_formats import Format, check_fits, fake_quantize_any, parse_format

JSON_KIND = "quantization-explorer planner recipe"


@dataclass
class PlannedRecipe:
    """A format for every planned tensor; `predicted` is None where the costs did not price that format."""

    label: str  # "planner at 4.50 bpw", "uniform Q4_0", ...
    tensors: list[TensorInfo]
    formats: dict[str, Format]  # tensor name -> format
    predicted: dict[str, float | None]  # tensor name -> predicted KL contribution (nats per token)
    budget: float | None = None  # the bits per weight asked for (planner recipes)
    optimal: bool | None = None  # the solver proved the choice optimal (planner recipes)
    measured_kl: float | None = None  # set once the recipe's model was scored against the reference
    notes: list[str] = field(default_factory=list)

    @property
    def bits(self) -> dict[str, float]:
        """Exact bits per tensor, scales and zero points included."""
        return {t.name: exact_bits(self.formats[t.name], t) for t in self.tensors}

    @property
    def bits_per_weight(self) -> float:
        return sum(self.bits.values()) / sum(t.numel for t in self.tensors)

    @property
    def predicted_kl(self) -> float | None:
        """Sum of the tensors' predicted KL; None when any tensor's format was not priced."""
        values = list(self.predicted.values())
        return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]

    def format_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for fmt in self.formats.values():
            counts[fmt.label] = counts.get(fmt.label, 0) + 1
        return counts


def _predicted(table: CostTable | None, name: str, fmt: Format) -> float | None:
    return None if table is None else table.cost.get(name, {}).get(fmt)


def recipe_from_formats(label: str, tensors: list[TensorInfo], formats: dict[str, Format], table: CostTable | None = None, **kwargs) -> PlannedRecipe:  # fmt: skip
    """A recipe from a format per tensor (checked to fit), priced from `table` where it can be."""
    for tensor in tensors:
        try:
            check_fits(formats[tensor.name], tensor.shape)
        except ValueError as exc:
            raise ValueError(f"{tensor.name}: {exc}") from exc
    predicted = {t.name: _predicted(table, t.name, formats[t.name]) for t in tensors}
    return PlannedRecipe(label, list(tensors), dict(formats), predicted, **kwargs)


def plan(table: CostTable, budget: float) -> PlannedRecipe:
    """The recipe of least predicted KL at `budget` average bits per weight (UnreachableBudget when no
    assignment reaches it). Needs a complete table."""
    if not table.complete:
        raise ValueError("The costs were stopped before every tensor was measured; measure again first.")
    options = {
        name: {fmt: (cost, table.bits[name][fmt]) for fmt, cost in costs.items()}
        for name, costs in table.cost.items()
    }
    weights = {t.name: t.numel for t in table.tensors}
    solution = solve(options, weights, budget)
    formats = {name: fmt for name, fmt in solution.choice.items()}
    return recipe_from_formats(
        f"planner at {budget:.2f} bpw", table.tensors, formats, table, budget=budget, optimal=solution.optimal
    )  # type: ignore[arg-type]


@torch.no_grad()
def apply(model: nn.Module, recipe: PlannedRecipe) -> nn.Module:
    """A copy of the model with every tensor of the recipe fake-quantized in its format (the input is
    left as it was). ValueError when the recipe names a tensor the model does not have."""
    check_matches(recipe, [(n, tuple(m.weight.shape)) for n, m in _linears(model, recipe)])
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    require_free(nbytes, next(model.parameters()).device, "Applying a recipe makes a copy of the model")
    copied = copy.deepcopy(model)
    for name, fmt in recipe.formats.items():
        weight = copied.get_submodule(name).weight
        weight.copy_(fake_quantize_any(weight.detach(), fmt))
    return copied


def _linears(model: nn.Module, recipe: PlannedRecipe):
    modules = dict(model.named_modules())
    return [
        (name, modules[name])
        for name in recipe.formats
        if name in modules and hasattr(modules[name], "weight")
    ]


def check_matches(recipe: PlannedRecipe, shapes: list[tuple[str, tuple[int, ...]]]) -> None:
    """ValueError naming the tensors that differ between the recipe and a model's (name, shape) list."""
    have = dict(shapes)
    want = {t.name: t.shape for t in recipe.tensors}
    missing = [name for name in want if name not in have]
    extra = [name for name in have if name not in want]
    reshaped = [name for name in want if name in have and tuple(have[name]) != tuple(want[name])]
    problems = []
    for what, names in (("not in this model", missing), ("missing from the recipe", extra), ("of another shape here", reshaped)):  # fmt: skip
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            problems.append(f"{len(names)} tensor(s) {what}: {shown}")
    if problems:
        raise ValueError("This recipe was made for another model. " + "; ".join(problems) + ".")


# -- export --------------------------------------------------------------------------------------------


def gguf_tensor_name(tensor: TensorInfo) -> str:
    """llama.cpp's name of a decoder-layer linear: blk.N.attn_q (role from the module name)."""
    role = role_of(tensor.name)
    if tensor.layer is None or role.value == "other":
        raise ValueError(f"{tensor.name} has no llama.cpp name here")
    return f"blk.{tensor.layer}.{role.value}"


def tensor_type_lines(recipe: PlannedRecipe) -> str:
    """The recipe as llama-quantize `--tensor-type` overrides, one per tensor. ValueError naming the
    formats that are not GGUF types (llama.cpp cannot store our own schemes)."""
    others = sorted({f.label for f in recipe.formats.values() if not isinstance(f, GGUFType)})
    if others:
        raise ValueError(
            f"llama.cpp has no type for {', '.join(others)}; plan with llama.cpp types only to export "
            "--tensor-type lines."
        )
    lines = []
    for tensor in recipe.tensors:
        pattern = re.escape(gguf_tensor_name(tensor)) + r"\.weight"
        lines.append(f"--tensor-type {pattern}={recipe.formats[tensor.name].name.lower()}")
    return "\n".join(lines)


def recipe_to_json(recipe: PlannedRecipe, model_name: str = "") -> str:
    return json.dumps(
        {
            "kind": JSON_KIND,
            "model": model_name,
            "label": recipe.label,
            "budget": recipe.budget,
            "bits_per_weight": recipe.bits_per_weight,
            "tensors": [
                {
                    "name": t.name,
                    "shape": list(t.shape),
                    "format": recipe.formats[t.name].label,
                    "predicted_kl": recipe.predicted[t.name],
                }  # fmt: skip
                for t in recipe.tensors
            ],
        },
        indent=1,
    )


def recipe_from_json(text: str | bytes, tensors: list[TensorInfo], table: CostTable | None = None) -> PlannedRecipe:  # fmt: skip
    """A recipe read back from `recipe_to_json` for the model whose planned tensors are `tensors`.
    ValueError in words for a file that is not a recipe, an unknown format, or another model's tensors."""
    try:
        data = json.loads(text)
        if data.get("kind") != JSON_KIND:
            raise ValueError
        entries = {e["name"]: (tuple(e["shape"]), e["format"]) for e in data["tensors"]}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError("This file is not a planner recipe (a JSON file this page exported).") from exc
    listed = [TensorInfo(name, shape, None) for name, (shape, _) in entries.items()]
    check_matches(PlannedRecipe("", listed, {}, {}), [(t.name, t.shape) for t in tensors])
    formats = {name: parse_format(label) for name, (_, label) in entries.items()}
    budget = data.get("budget")
    return recipe_from_formats(
        str(data.get("label") or "loaded recipe"), tensors, formats, table, budget=budget
    )


__all__ = [
    "PlannedRecipe",
    "apply",
    "check_matches",
    "gguf_tensor_name",
    "plan",
    "recipe_from_formats",
    "recipe_from_json",
    "recipe_to_json",
    "tensor_type_lines",
]
