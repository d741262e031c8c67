"""Finding the tensors a user can inspect: every linear / embedding weight of a model, and synthetic ones.

Synthetic tensors (Gaussian or Laplace with a few planted outliers) let a teacher show how a single
large value stretches a per-tensor scale, independent of any model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

SYNTHETIC_KINDS = ("gaussian", "laplace")


@dataclass(frozen=True)
class WeightInfo:
    name: str  # parameter name, e.g. "model.layers.3.mlp.down_proj.weight"
    shape: tuple[int, ...]  # (out_features, in_features) for linears
    layer: int | None  # transformer block index, None for embeddings / head
    module: str  # short module name: q_proj, down_proj, embed_tokens, ...


def _layer_index(name: str) -> int | None:
    match = re.search(r"\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def weight_tensors(model: torch.nn.Module) -> list[WeightInfo]:
    """All 2-D linear and embedding weights in module order; tied weights listed once."""
    found: list[WeightInfo] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear | torch.nn.Embedding):
            continue
        weight = module.weight
        if id(weight) in seen or weight.dim() != 2:
            continue
        seen.add(id(weight))
        short = module_name.rsplit(".", 1)[-1]
        found.append(
            WeightInfo(f"{module_name}.weight", tuple(weight.shape), _layer_index(module_name), short)
        )
    return found


def get_weight(model: torch.nn.Module, name: str) -> torch.Tensor:
    """A float32 CPU view of one weight (a copy only when dtype or device differ); never mutate it."""
    try:
        tensor = model.get_parameter(name)
    except AttributeError as exc:
        raise ValueError(f"The model has no weight called {name!r}.") from exc
    return tensor.detach().to(device="cpu", dtype=torch.float32)


def synthetic_tensor(
    kind: str = "gaussian",
    rows: int = 64,
    cols: int = 512,
    outliers: int = 1,
    outlier_scale: float = 20.0,
    seed: int = 0,
) -> torch.Tensor:
    """A (rows, cols) weight-like tensor with unit std and `outliers` values of `outlier_scale` sigma."""
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(f"Unknown synthetic distribution {kind!r}; use one of {SYNTHETIC_KINDS}.")
    if rows < 1 or cols < 1:
        raise ValueError("A synthetic tensor needs at least one row and one column.")
    if not 0 <= outliers <= rows * cols:
        raise ValueError(f"outliers must be between 0 and {rows * cols}.")
    generator = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        values = torch.randn(rows, cols, generator=generator)
    else:  # Laplace with unit variance: scale b = 1/sqrt(2)
        uniform = torch.rand(rows, cols, generator=generator) - 0.5
        values = -torch.sign(uniform) * torch.log1p(-2 * uniform.abs()) / 2**0.5
    if outliers:
        positions = torch.randperm(rows * cols, generator=generator)[:outliers]
        signs = torch.where(torch.rand(outliers, generator=generator) < 0.5, -1.0, 1.0)
        values.view(-1)[positions] = signs * outlier_scale
    return values
