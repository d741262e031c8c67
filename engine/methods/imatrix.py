"""llama.cpp's importance matrix ("imatrix"): the mean squared activation of every input channel of every linear.

`llama-imatrix` (tools/imatrix/imatrix.cpp) runs calibration text through the model and, for each weight
matrix, adds x_j^2 of every token's input row x to a per-channel sum and counts the rows; what it saves (and
`llama-quantize --imatrix` reads) is sum / count per input channel j. The quantizers then weight their scale
searches by it (engine.quant.gguf `quantize(x, t, importance=...)`): an input channel that carries large
activations costs more output error per unit of weight error, so its weights are rounded more carefully.

Here the same statistic is collected with forward pre-hooks on the model's linears but the output head
(`engine.quant.linear.linear_names`; llama.cpp skips the head too unless `--process-output`), on token
windows as the other calibrated methods take them (`calib`: (count, window) token ids), summed in float64.

    matrix = collect_importance(model, calib, progress)
    matrix["model.layers.0.mlp.down_proj"]     # (1536,) float32, mean x_j^2 over the tokens seen
    matrix.save("imatrix.safetensors"); ImportanceMatrix.load("imatrix.safetensors")
    matrix.statistics()                        # per tensor: mean importance and share of the total, as
                                               # `llama-imatrix --show-statistics` reports them

The Outliers page's statistics already hold each linear input's per-channel mean and (population) std, so
`importance_from_stats` derives the same matrix from them (mean x^2 = std^2 + mean^2) without a new run.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from engine._types import Progress
from engine.hooks import pre_hooks
from engine.methods.calibration import calibration_batches, check_calibration, run_calibration
from engine.quant.linear import linear_names

FORMAT = "imatrix"  # the safetensors metadata's "format", so a stray file is refused with a reason


@dataclass(frozen=True)
class TensorImportance:
    """One tensor's row of `ImportanceMatrix.statistics()` (llama-imatrix --show-statistics' columns)."""

    name: str
    layer: int | None  # decoder layer index read from the name (None: not in a numbered layer)
    total: float  # sum over channels of the mean x^2 ("Σ(Act²)")
    mean: float  # its mean over the channels ("μ")
    max: float
    std: float
    share: float  # total / the sum over every tensor (0-1)
    channels: int
    tokens: int  # rows it saw


@dataclass(frozen=True)
class ImportanceMatrix:
    """{linear name: (in_features,) float32 mean x_j^2}, with the rows each one saw and the tokens run."""

    values: dict[str, Tensor]
    counts: dict[str, int]  # rows (tokens) each linear saw: all the tokens, but for routed experts
    tokens: int  # calibration tokens run through the model
    meta: dict[str, str] = field(default_factory=dict)  # free text, e.g. the calibration set's name

    def __getitem__(self, name: str) -> Tensor:
        return self.values[name]

    def __contains__(self, name: object) -> bool:
        return name in self.values

    def get(self, name: str) -> Tensor | None:
        return self.values.get(name)

    def __len__(self) -> int:
        return len(self.values)

    def save(self, path: str | Path) -> None:
        """As safetensors: one float32 tensor per linear, counts and tokens in the metadata."""
        tensors = {
            name: value.detach().to("cpu", torch.float32).contiguous() for name, value in self.values.items()
        }
        metadata = {
            "format": FORMAT,
            "tokens": str(self.tokens),
            "counts": json.dumps(self.counts),
            **self.meta,
        }
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> ImportanceMatrix:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            if metadata.get("format") != FORMAT:
                raise ValueError(f"{Path(path).name} is not an importance matrix saved by this app.")
            values = {name: handle.get_tensor(name).to(torch.float32) for name in handle.keys()}  # noqa: SIM118
        counts = {name: int(n) for name, n in json.loads(metadata.pop("counts")).items()}
        tokens = int(metadata.pop("tokens"))
        metadata.pop("format")
        return cls(values, counts, tokens, metadata)

    def statistics(self) -> list[TensorImportance]:
        """Per tensor, in the model's order: total, mean, max, spread and share of the whole matrix."""
        totals = {name: float(value.double().sum()) for name, value in self.values.items()}
        grand = sum(totals.values()) or 1.0
        rows = []
        for name, value in self.values.items():
            v = value.double()
            rows.append(
                TensorImportance(
                    name,
                    layer_index(name),
                    totals[name],
                    float(v.mean()),
                    float(v.max()),
                    float(v.std(unbiased=False)),
                    totals[name] / grand,
                    v.numel(),
                    self.counts.get(name, 0),
                )
            )
        return rows


def layer_index(name: str) -> int | None:
    """The first number in a dotted module path (model.layers.3.mlp.down_proj -> 3), or None."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


@torch.no_grad()
def collect_importance(model: nn.Module, calib, progress: Progress | None = None) -> ImportanceMatrix:
    """Run `calib` ((count, window) token ids) through the model's body and average x_j^2 per input channel
    of every linear but the head. The model is not changed (hooks are always removed). The hooks record only
    forwards on the calling thread, so a model shared with other sessions (their forwards pass through the
    same hooks meanwhile) does not mix their inputs into this matrix."""
    ids = check_calibration(calib, "The importance matrix")
    names = linear_names(model)
    if not names:
        raise ValueError("this model has no linear layers to collect an importance matrix for")
    modules = {name: model.get_submodule(name) for name in names}
    sums = {name: torch.zeros(m.weight.shape[-1], dtype=torch.float64) for name, m in modules.items()}
    counts = dict.fromkeys(names, 0)
    owner = threading.get_ident()

    def record(name: str):
        def hook(module, args):
            if threading.get_ident() != owner:  # another caller's forward through the shared model
                return
            x = args[0].detach()
            rows = x.reshape(-1, x.shape[-1])
            sums[name] += rows.double().square().sum(0).cpu()
            counts[name] += rows.shape[0]

        return hook

    with pre_hooks((module, record(name)) for name, module in modules.items()):
        tokens = run_calibration(model, calibration_batches(ids), progress)
    values = {
        name: (sums[name] / max(counts[name], 1)).to(torch.float32) for name in names if counts[name] > 0
    }
    return ImportanceMatrix(values, {name: counts[name] for name in values}, int(tokens))


def importance_from_stats(stats) -> ImportanceMatrix:
    """The importance matrix of the linears whose inputs an Outliers-page `Stats` (engine.analysis) measured:
    mean x_j^2 = std_j^2 + mean_j^2 of the tensor they read, for each of its consumers."""
    values: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    for site in stats.sites:
        if site.kind != "activation":
            continue
        square = (site.std.double().square() + site.mean.double().square()).float()
        for name in site.consumers:
            values[name], counts[name] = square, int(site.tokens)
    return ImportanceMatrix(values, counts, int(stats.tokens))
