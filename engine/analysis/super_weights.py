"""Super weights: the few single weights that create the massive activations, and what removing them does.

Yu et al. 2024 ("The Super Weight in Large Language Models"): a massive activation first appears as a huge
output of one layer's MLP down-projection on one token; the weight W[i, j] of that down_proj, with i the
output channel of the spike and j the input channel carrying the largest input on that token, creates it.
Zeroing that one weight destroys the model, zeroing thousands of other large weights does not.

- `find_super_weights` hooks every MLP output projection (down_proj) and, where its output on some token is
  massive (|y_i| > 100 and > 1,000 x the median |y| of that forward, Sun et al.'s criterion applied to the
  down_proj output), lists the input channels j that make it, ranked by their contribution |W[i, j] x_j|.
  Where we depart from the paper: we keep every input channel that makes at least `min_share` of the spike
  (not only the largest input), since a spike can have two makers: SmolLM2-135M's channel-507 spike in
  layer 11 comes from inputs 1229 and 1487, and only zeroing both collapses the model. We also list later
  layers whose down_proj output is massive (e.g. ones that cancel the spike); residual_before / _after say
  which way they push it.
- `ablate`, `compare_ablations` and `protect` (engine.analysis.ablation, re-exported here) zero them, compare
  that with zeroing other weights, and hold them out of coarse round-to-nearest.

The hooks only read; the model passed in is never changed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine._types import Progress
from engine.analysis.ablation import (  # noqa: F401  (re-exported: the super-weight experiments)
    DEFAULT_PROMPT,
    ScoredVariant,
    VariantTable,
    WeightCoordinate,
    ablate,
    check_coordinates,
    compare_ablations,
    protect,
    random_equal_magnitude,
)
from engine.analysis.massive import MASSIVE_ABSOLUTE, MASSIVE_RATIO, check_ids
from engine.analysis.stats import batched, decoder_layers
from engine.hooks import forward_hooks

MLP_OUTPUTS = ("down_proj", "fc2", "dense_4h_to_h", "w2", "c_proj")  # the MLP's output projection


@dataclass(frozen=True)
class SuperWeightCandidate:
    layer: int
    coordinate: WeightCoordinate
    weight: float  # W[i, j]
    rank: int  # 1 = the largest |w| of its tensor
    weight_to_rms: float  # |W[i, j]| / RMS of the tensor
    input_value: float  # x_j on the spike's token
    output_value: float  # y_i, the down_proj output on that token
    contribution: float  # W[i, j] * x_j: this weight's part of y_i
    residual_before: float  # the residual stream at (token, i) before the MLP adds y_i
    residual_after: float  # ... and after (the layer's output)
    window: int
    position: int  # within the window
    token_id: int
    tokens: int  # how many tokens of the windows showed this spike

    @property
    def creates(self) -> bool:
        """Whether this weight grows the residual value (makes the massive activation) rather than shrinks it."""
        return abs(self.residual_after) > abs(self.residual_before)


def mlp_outputs(model: nn.Module) -> list[tuple[int, str, nn.Linear]]:
    """(layer, module name, linear) of every decoder layer's MLP output projection; ValueError if missing."""
    prefix, layers = decoder_layers(model)
    found = []
    for index, layer in enumerate(layers):
        matches = [
            (name, module)
            for name, module in layer.named_modules()
            if isinstance(module, nn.Linear)
            and name.rsplit(".", 1)[-1] in MLP_OUTPUTS
            and any(part in name for part in ("mlp", "feed_forward", "ffn"))
        ]
        if not matches:
            raise ValueError(
                f"decoder layer {index} has no MLP output projection (a linear named {', '.join(MLP_OUTPUTS)} "
                "inside its MLP), so there is no down_proj to trace massive activations to"
            )
        name, module = matches[0]
        found.append((index, f"{prefix}.{index}.{name}", module))
    return found


@torch.no_grad()
def find_super_weights(
    model: nn.Module,
    ids: Tensor,
    top: int = 8,
    min_share: float = 0.1,
    absolute: float = MASSIVE_ABSOLUTE,
    ratio: float = MASSIVE_RATIO,
    progress: Progress | None = None,
) -> list[SuperWeightCandidate]:
    """Up to `top` super-weight candidates (see the module doc): those that grow the residual value first,
    then those that shrink it, each by their contribution |W[i, j] x_j|, largest first."""
    ids = check_ids(ids)
    if top < 1 or not 0 < min_share <= 1:
        raise ValueError(f"top must be at least 1 and min_share in (0, 1] (got {top}, {min_share})")
    outputs = mlp_outputs(model)
    _, layers = decoder_layers(model)
    owner = threading.get_ident()  # a shared model may serve other threads meanwhile: record only ours
    found: dict[tuple[int, int, int], dict] = {}
    pending: dict[int, list[dict]] = {}
    offset = {"window": 0}

    def down_hook(layer: int):
        def hook(module, args, output):
            if threading.get_ident() != owner:
                return
            x, y = args[0].detach().float(), output.detach().float()  # (batch, tokens, in) / (..., out)
            size = y.abs()
            spikes = ((size > absolute) & (size > ratio * size.median())).nonzero().tolist()
            weight = module.weight.detach().float()  # (out, in)
            for batch, position, row in spikes:
                parts = weight[row] * x[batch, position]  # (in,) each input channel's part of y_i
                value = float(y[batch, position, row])
                for column in parts.abs().argsort(descending=True)[:4].tolist():
                    if abs(float(parts[column])) < min_share * abs(value):
                        break
                    pending.setdefault(layer, []).append(
                        dict(
                            key=(layer, row, column),
                            window=offset["window"] + batch,
                            batch=batch,
                            position=position,
                            output_value=value,
                            input_value=float(x[batch, position, column]),
                            contribution=float(parts[column]),
                        )
                    )

        return hook

    def layer_hook(layer: int):
        def hook(module, args, output):
            if threading.get_ident() != owner:
                return
            hidden = output[0] if isinstance(output, tuple) else output  # (batch, tokens, hidden)
            for spike in pending.pop(layer, []):
                row = spike["key"][1]
                after = float(hidden[spike["batch"], spike["position"], row])
                spike.update(residual_after=after, residual_before=after - spike["output_value"])
                best = found.get(spike["key"])
                tokens = 1 + (best["tokens"] if best else 0)
                if best is None or abs(spike["contribution"]) > abs(best["contribution"]):
                    best = spike
                best["tokens"] = tokens
                found[spike["key"]] = best

        return hook

    hooks = [(module, down_hook(layer)) for layer, _, module in outputs]
    hooks += [(layers[layer], layer_hook(layer)) for layer, _, _ in outputs]
    base = getattr(model, "base_model", model)  # the head's logits are not needed
    device = next(model.parameters()).device
    batches = batched(ids, max_tokens=1024)
    with forward_hooks(hooks):
        for index, batch in enumerate(batches):
            if progress:
                progress(index / len(batches), f"Forward {index + 1} of {len(batches)}")
            base(input_ids=batch.to(device), use_cache=False)
            offset["window"] += batch.shape[0]
    names = {layer: name for layer, name, _ in outputs}
    candidates = [_candidate(model, names[s["key"][0]], s, ids) for s in found.values()]
    candidates = sorted(candidates, key=lambda c: (not c.creates, -abs(c.contribution)))[:top]
    if progress:
        progress(1.0, f"{len(candidates)} candidate(s)")
    return candidates


def _candidate(model: nn.Module, name: str, spike: dict, ids: Tensor) -> SuperWeightCandidate:
    layer, row, column = spike["key"]
    weight = model.get_submodule(name).weight.detach().float()
    value = float(weight[row, column])
    return SuperWeightCandidate(
        layer=layer,
        coordinate=WeightCoordinate(name, row, column),
        weight=value,
        rank=int((weight.abs() > abs(value)).sum()) + 1,
        weight_to_rms=abs(value) / float(weight.pow(2).mean().sqrt().clamp_min(1e-30)),
        input_value=spike["input_value"],
        output_value=spike["output_value"],
        contribution=spike["contribution"],
        residual_before=spike["residual_before"],
        residual_after=spike["residual_after"],
        window=spike["window"],
        position=spike["position"],
        token_id=int(ids[spike["window"], spike["position"]]),
        tokens=spike["tokens"],
    )
