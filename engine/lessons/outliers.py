"""Lesson: where the residual stream's outliers come from, and how a rotation removes them.

One short window of text (`WINDOW` tokens) through the model, four steps, each a frozen dataclass with a
`takeaway` built from its own numbers:

1. `ResidualPeaks`: each layer's largest |value| of the residual stream (the decoder layer's output), its
   channel and token, against the layer's median |value|; massive values are Sun et al.'s (|x| > 100 and
   > 1,000 × the median, engine.analysis.massive's thresholds);
2. `SuperWeightStep`: the down_proj weights that make the first massive value (engine.analysis.super_weights)
   and what zeroing them does to perplexity and KL on the same window, against zeroing as many random
   weights of the same size (ablation.random_equal_magnitude);
3. `TokenStep`: the token holding the largest value, at the layer where it peaks, quantized to int4 with one
   scale per token, before and after the rotation: the one huge channel sets the step, so the other channels
   round to zero; after the rotation its energy is spread over every channel and they survive;
4. `RotationStep`: per layer, the largest per-token max |x| / RMS(x) and the int4 per-token SQNR of the
   residual before and after the rotation.

The rotation is engine.methods.rotation's: a randomized Hadamard Q of the hidden size. Folding the norms and
rotating the weights (rotate_model) makes the model compute the same function with the residual stream
carried as h·Q, so the lesson applies Q to the measured residual instead of rotating a copy of the model.

Three forwards of the window (about 3 s for SmolLM2-135M on one CPU thread): the super-weight scan, which
also records the residual stream and, through the output head, the reference logits, and the two zeroed
variants. They run on a view of the model that shares its weights (`eager_view`); zeroed tensors are
swapped into the view only, so the model passed in (shared with other sessions) is never changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine._types import Progress
from engine.analysis.ablation import WeightCoordinate, random_equal_magnitude
from engine.analysis.massive import MASSIVE_ABSOLUTE, MASSIVE_RATIO, check_ids, eager_view
from engine.analysis.stats import decoder_layers
from engine.analysis.super_weights import SuperWeightCandidate, find_super_weights
from engine.hooks import forward_hooks
from engine.lessons._common import ratio
from engine.models.data import WindowSpec, load_text, token_windows
from engine.quant.hadamard import Rotation, RotationKind, rotation
from engine.quant.metrics import sqnr_db
from engine.quant.primitives import fake_quantize_tokens
from engine.quant.schemes import parse_label

WINDOW = 128  # tokens: one short window keeps the lesson to a few seconds on two CPU cores
CORPUS = "britannica"
PER_TOKEN = parse_label("int4 channel")  # on (tokens, hidden) activations: one scale per token
PER_TENSOR = parse_label("int4 tensor")


def lesson_window(tokenizer, tokens: int = WINDOW) -> Tensor:
    """(1, tokens) ids: the start of the held-out half of the offline Britannica text."""
    return token_windows(tokenizer, load_text(CORPUS), WindowSpec(tokens, 1, split="evaluation"))


# -- 1. the residual stream's peaks ---------------------------------------------------------------------


@dataclass(frozen=True)
class ResidualPeaks:
    peak: Tensor  # (layers,) largest |value| of the layer's output over the window
    channel: Tensor  # (layers,) its channel
    position: Tensor  # (layers,) its token's position in the window (0: the first token)
    median: Tensor  # (layers,) median |value| of the layer's output
    massive: Tensor  # (layers,) how many values count as massive

    @property
    def first_massive_layer(self) -> int | None:
        layers = (self.massive > 0).nonzero().flatten()
        return int(layers[0]) if layers.numel() else None

    @property
    def top_layer(self) -> int:
        return int(self.peak.argmax())

    @property
    def takeaway(self) -> str:
        top = self.top_layer
        size = f"{float(self.peak[top]):,.0f}, {ratio(float(self.peak[top]), float(self.median[top])):,.0f}×"
        where = f"channel {int(self.channel[top])} of the token at position {int(self.position[top])}"
        first = self.first_massive_layer
        if first is None:
            return (
                f"No value of this model's residual stream counts as massive here; the largest ({size} the "
                f"layer's median) sits in {where} after layer {top}."
            )
        return (
            f"From layer {first} on, one value towers over the rest: {where} reaches {size} the median "
            f"|value| (after layer {top}). Every layer after it carries it forward."
        )


def residual_peaks(hidden: Tensor) -> ResidualPeaks:
    """From the (layers, tokens, hidden) residual stream of one window."""
    size = hidden.abs()
    flat = size.flatten(1)
    peak, index = flat.max(1)
    position, channel = index // hidden.shape[2], index % hidden.shape[2]
    median = flat.median(1).values
    massive = ((size > MASSIVE_ABSOLUTE) & (size > MASSIVE_RATIO * median[:, None, None])).flatten(1).sum(1)
    return ResidualPeaks(peak, channel, position, median, massive)


# -- 2. the super weights -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuperWeightStep:
    weights: tuple[SuperWeightCandidate, ...]  # the weights that make the first massive value
    random: tuple[WeightCoordinate, ...]  # as many random weights of the same size, same tensors
    reference_perplexity: float
    zeroed_perplexity: float
    zeroed_kl: float  # nats per token against the unchanged model
    random_perplexity: float
    random_kl: float
    tensor_size: int  # weights in the tensor holding them

    @property
    def takeaway(self) -> str:
        count = len(self.weights)
        these = "this weight" if count == 1 else f"these {count} weights"
        return (
            f"Zeroing {these} of {self.tensor_size:,} in the tensor takes the perplexity on this window from "
            f"{self.reference_perplexity:,.1f} to {self.zeroed_perplexity:,.0f}; zeroing {count} random ones "
            f"of the same size leaves it at {self.random_perplexity:,.1f}."
        )


def makers(candidates: list[SuperWeightCandidate]) -> tuple[SuperWeightCandidate, ...]:
    """The weights that grow the strongest spike: same layer and output channel as the top candidate."""
    if not candidates or not candidates[0].creates:
        return ()
    top = candidates[0]
    key = (top.layer, top.coordinate.row)
    return tuple(c for c in candidates if c.creates and (c.layer, c.coordinate.row) == key)


def _perplexity_and_kl(reference: Tensor, logits: Tensor, ids: Tensor) -> tuple[float, float]:
    """(perplexity, mean KL(reference || logits)) over the window's next-token predictions."""
    ref = torch.log_softmax(reference[:-1].float(), -1)
    cand = torch.log_softmax(logits[:-1].float(), -1)
    nll = -cand.gather(1, ids[1:, None].to(cand.device))[:, 0].double().mean()
    kl = (ref.exp() * (ref - cand)).sum(-1).double().mean()
    return float(nll.exp()), float(kl)


@torch.no_grad()
def _zeroed_logits(view: nn.Module, coordinates: tuple[WeightCoordinate, ...], ids: Tensor) -> Tensor:
    """Logits with those weights zeroed: a zeroed copy of each tensor swapped into the view, then back."""
    saved = {}
    for c in coordinates:
        module = view.get_submodule(c.name)
        if c.name not in saved:
            saved[c.name] = module.weight
            module.weight = nn.Parameter(module.weight.detach().clone(), requires_grad=False)
        module.weight[c.row, c.column] = 0
    try:
        return view(input_ids=ids, use_cache=False).logits[0]
    finally:
        for name, weight in saved.items():
            view.get_submodule(name).weight = weight


# -- 3. one token before and after the rotation ---------------------------------------------------------


@dataclass(frozen=True)
class TokenStep:
    layer: int
    position: int
    token_id: int
    channel: int  # the huge channel
    before: Tensor  # (hidden,) the token's residual
    after: Tensor  # (hidden,) the same vector rotated (what the rotated model carries)
    step_before: float  # the int4 step one scale per token gives it (its max |x| / 7)
    step_after: float
    zeros_before: int  # channels whose int4 code is 0
    zeros_after: int
    error_before: float  # relative error of the other channels after int4 (in the original basis)
    error_after: float
    tensor_zeros_before: float  # one int4 scale for the whole window at this layer: share of values -> 0
    tensor_zeros_after: float

    @property
    def hidden(self) -> int:
        return int(self.before.numel())

    @staticmethod
    def _max_over_rms(x: Tensor) -> float:
        return float(x.abs().max() / x.pow(2).mean().sqrt().clamp_min(1e-30))

    @property
    def max_over_rms_before(self) -> float:
        return self._max_over_rms(self.before)

    @property
    def max_over_rms_after(self) -> float:
        return self._max_over_rms(self.after)

    @property
    def takeaway(self) -> str:
        return (
            f"With one int4 scale for this token, channel {self.channel} sets a step of "
            f"{self.step_before:,.0f}: {self.zeros_before} of its {self.hidden} channels round to zero and "
            f"the others lose {self.error_before:.0%} of their size. After the rotation the step is "
            f"{self.step_after:,.0f}, {self.zeros_after} channels round to zero and the error is "
            f"{self.error_after:.0%}."
        )


def _zeros(x: Tensor, scheme) -> Tensor:
    return (fake_quantize_tokens(x, scheme) == 0).float()


def token_step(hidden: Tensor, ids: Tensor, peaks: ResidualPeaks, rot: Rotation) -> TokenStep:
    layer = peaks.top_layer
    position, channel = int(peaks.position[layer]), int(peaks.channel[layer])
    residual = hidden[layer]  # (tokens, hidden)
    rotated = rot.apply(residual)
    x, y = residual[position], rotated[position]
    xq = fake_quantize_tokens(x[None], PER_TOKEN)[0]
    yq = rot.apply_transposed(fake_quantize_tokens(y[None], PER_TOKEN))[0]  # back to the original basis
    others = torch.ones_like(x, dtype=torch.bool)
    others[channel] = False
    size = x[others].norm().clamp_min(1e-30)
    return TokenStep(
        layer=layer,
        position=position,
        token_id=int(ids[0, position]),
        channel=channel,
        before=x.clone(),
        after=y.clone(),
        step_before=float(x.abs().max()) / PER_TOKEN.element.grid_max(PER_TOKEN),
        step_after=float(y.abs().max()) / PER_TOKEN.element.grid_max(PER_TOKEN),
        zeros_before=int(_zeros(x[None], PER_TOKEN).sum()),
        zeros_after=int(_zeros(y[None], PER_TOKEN).sum()),
        error_before=float((xq - x)[others].norm() / size),
        error_after=float((yq - x)[others].norm() / size),
        tensor_zeros_before=float(_zeros(residual, PER_TENSOR).mean()),
        tensor_zeros_after=float(_zeros(rotated, PER_TENSOR).mean()),
    )


# -- 4. every layer before and after the rotation -------------------------------------------------------


@dataclass(frozen=True)
class RotationStep:
    ratio_before: Tensor  # (layers,) largest per-token max |x| / RMS(x) of the residual
    ratio_after: Tensor
    sqnr_before: Tensor  # (layers,) int4 per-token SQNR (dB) of the residual, every token of the window
    sqnr_after: Tensor  # ... rotated, quantized and rotated back
    hidden: int
    note: str | None  # why the rotation is not a Hadamard one (no construction of that order), or None

    @property
    def drop(self) -> float:
        """How many times smaller the largest max / RMS over every layer became."""
        return ratio(float(self.ratio_before.max()), float(self.ratio_after.max()))

    @property
    def takeaway(self) -> str:
        return (
            f"The rotation brings the largest max / RMS from {float(self.ratio_before.max()):.0f} down to "
            f"{float(self.ratio_after.max()):.1f} ({self.drop:.0f}× lower; √{self.hidden} = "
            f"{self.hidden**0.5:.0f} is one channel holding everything). int4 with a scale per token keeps "
            f"{float(self.sqnr_after.mean()):.1f} dB of signal on average over the layers, against "
            f"{float(self.sqnr_before.mean()):.1f} dB without the rotation."
        )


def _max_over_rms(residual: Tensor) -> Tensor:
    """(layers,) the largest per-token max |x| / RMS(x) of (layers, tokens, hidden)."""
    rms = residual.pow(2).mean(-1).sqrt().clamp_min(1e-30)
    return (residual.abs().amax(-1) / rms).amax(-1)


def _token_sqnr(residual: Tensor, rot: Rotation | None) -> Tensor:
    """(layers,) int4 per-token SQNR (dB) of each layer's (tokens, hidden) residual."""
    out = []
    for x in residual:
        y = x if rot is None else rot.apply(x)
        xq = fake_quantize_tokens(y, PER_TOKEN)
        out.append(sqnr_db(x, xq if rot is None else rot.apply_transposed(xq)))
    return torch.tensor(out)


def rotation_step(hidden: Tensor, rot: Rotation) -> RotationStep:
    rotated = rot.apply(hidden)
    return RotationStep(
        _max_over_rms(hidden),
        _max_over_rms(rotated),
        _token_sqnr(hidden, None),
        _token_sqnr(hidden, rot),
        hidden.shape[-1],
        rot.note,
    )


# -- the whole lesson ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutliersLesson:
    tokens: int  # tokens in the window
    ids: Tensor  # (1, tokens)
    peaks: ResidualPeaks
    super_weights: SuperWeightStep | None  # None when no weight makes a massive value here
    token: TokenStep
    rotation: RotationStep
    seconds: float


def _capturing(model: nn.Module, captured: dict[str, Tensor]) -> list:
    """Hooks that keep, for the first sequence of the batch, every decoder layer's output ("layers": float32
    on the CPU, (layers, tokens, hidden) once stacked) and the final norm's output ("normed", as it is)."""
    _, layers = decoder_layers(model)
    outputs: list[Tensor | None] = [None] * len(layers)
    captured["layers"] = outputs  # type: ignore[assignment]

    def keep(index: int | None):
        def record(module, args, output):
            value = (output[0] if isinstance(output, tuple) else output)[0].detach()
            if index is None:
                captured["normed"] = value
            else:
                outputs[index] = value.float().cpu()

        return record

    norm = getattr(getattr(model, "base_model", model), "norm", None)
    if norm is None or model.get_output_embeddings() is None:
        raise ValueError("this lesson needs a model with a final norm and an output head (a Llama-style one)")
    return [(layer, keep(i)) for i, layer in enumerate(layers)] + [(norm, keep(None))]


@torch.no_grad()
def outliers_lesson(
    model: nn.Module, ids: Tensor, seed: int = 0, progress: Progress | None = None
) -> OutliersLesson:
    """Every step of the lesson on one (1, tokens) window; the model is never changed."""
    ids = check_ids(ids)[:1]
    start = time.perf_counter()
    view = eager_view(model)  # shares every weight; zeroed tensors are swapped into it alone
    ids = ids.to(next(model.parameters()).device)
    report = progress or (lambda fraction, message: None)
    report(0.0, "Finding the weights that make the outliers")
    captured: dict = {}
    with forward_hooks(_capturing(view, captured)):  # the scan's forward also records the residual stream
        candidates = find_super_weights(view, ids)
    hidden = torch.stack(captured["layers"])
    reference = view.get_output_embeddings()(captured["normed"])  # the logits the model's head would give
    peaks = residual_peaks(hidden)
    made = makers(candidates)
    step = None
    if made:
        report(0.4, "Zeroing the super weights")
        coordinates = tuple(c.coordinate for c in made)
        zeroed = _perplexity_and_kl(reference, _zeroed_logits(view, coordinates, ids), ids[0])
        report(0.7, "Zeroing random weights of the same size")
        random = tuple(random_equal_magnitude(view, coordinates, seed))
        shuffled = _perplexity_and_kl(reference, _zeroed_logits(view, random, ids), ids[0])
        base = _perplexity_and_kl(reference, reference, ids[0])[0]
        size = view.get_submodule(coordinates[0].name).weight.numel()
        step = SuperWeightStep(made, random, base, *zeroed, *shuffled, size)
    rot = rotation(hidden.shape[-1], RotationKind.HADAMARD, seed)
    lesson = OutliersLesson(
        ids.shape[1],
        ids.cpu(),
        peaks,
        step,
        token_step(hidden, ids.cpu(), peaks, rot),
        rotation_step(hidden, rot),
        time.perf_counter() - start,
    )
    report(1.0, "Done")
    return lesson
