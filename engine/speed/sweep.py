"""A measured context sweep beside the estimate, the way AutoAWQ's benchmark script reports a model.

One round per context length: a prompt of exactly `context` token ids (fixed-seed random ids from the
model's vocabulary, so no tokenizer is needed and every variant reads the same prompt), prefilled and
timed, then `new_tokens` greedy decode steps, each timed (the device synchronized after every step, as
AutoAWQ's `torch` generator does), reported as the median step. The prefill's forward picks the first
new token; each decode step feeds one token and picks the next, so after a round the cache holds exactly
`context + new_tokens` tokens, the context the estimate is priced at.

Two generators (`GENERATORS`):
- OUR_LOOP: engine.runtime.greedy's loop on transformers' dynamic cache (what measure_generation_peak
  runs); prefill is its own timed forward (`logits_to_keep=1`).
- HF_GENERATE: transformers' `generate(do_sample=False, min_new_tokens = max_new_tokens)`; a streamer
  clocks every token it emits (synchronizing first), so prefill is the time to the first new token (the
  prompt's forward plus `generate`'s own set-up) and each decode step the time between two tokens.

Memory per round: the model's real bytes (parameters, buffers, bitsandbytes' side tensors), the bytes of
every tensor the cache's layers hold after the round (keys and values, or what a quantized cache keeps),
and on CUDA the allocator's peak over the round; beside each, our estimate from the config alone
(engine.sizing.estimate): weights at the variant's preset (`recipe_preset`), the cache at the model's
float dtype. Variants no preset prices (bitsandbytes, a packed head, Methods-lab copies) get no weight
estimate. Warm-up (`_warm_up`), untimed, before a model's first round: one step at the smallest context,
then one prefill per context, so one-time costs (a packed kernel's choice timing a new row count, the
allocator growing) never land in a timed round.
"""

from __future__ import annotations

import dataclasses
import inspect
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from engine._types import Progress
from engine.kernels import QuantLinear
from engine.recipes import Recipe
from engine.runtime.generation import max_context
from engine.runtime.greedy import argmax_token, greedy_loop
from engine.sizing.estimate import estimate
from engine.sizing.measure import DTYPE_PRESETS
from engine.sizing.presets import WeightPreset, weight_preset
from engine.speed.bandwidth import float_dtype, model_weight_bytes
from engine.speed.decode_bench import TokenClock
from engine.speed.synthetic import DTYPE_NAMES
from engine.speed.timing import sync
from engine.speed.variants import _is_bnb, build_variant, variant_recipe

OUR_LOOP = "our loop"
HF_GENERATE = "transformers generate"
CONTEXTS = (32, 64, 128, 256, 512, 1024)  # AutoAWQ's benchmark defaults, up to 1024 on a CPU
NEW_TOKENS = 32
REFERENCE = "reference"  # the loaded model as it is

ShouldStop = Callable[[], bool]


@dataclass(frozen=True)
class SweepRound:
    variant: str
    generator: str
    context: int  # prompt tokens prefilled
    new_tokens: int  # decode steps after the prefill's token
    prefill_seconds: float
    step_seconds: tuple[float, ...] = field(repr=False)  # one per decode step
    weight_bytes: int  # measured: parameters, buffers, bitsandbytes' side tensors
    kv_bytes: int  # measured: the cache's tensors after the round
    cuda_peak_bytes: int | None  # allocator peak over the round; None off CUDA
    estimated_weight_bytes: float | None  # None: no preset prices this variant
    estimated_kv_bytes: float
    estimated_peak_bytes: float | None  # weights + KV + activations, no overhead (compare with the peak)
    weights_label: str  # the preset the weight estimate used, or why there is none
    token_ids: tuple[int, ...] = field(default=(), repr=False)  # the prefill's token, then one per step

    @property
    def decode_seconds_per_step(self) -> float:
        return statistics.median(self.step_seconds) if self.step_seconds else float("nan")

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.context / self.prefill_seconds if self.prefill_seconds > 0 else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        step = self.decode_seconds_per_step
        return 1 / step if step > 0 else float("nan")


class SweepRounds(list):
    """The rounds done, in order, with `notes` (contexts skipped, rounds cut short by Stop)."""

    def __init__(self, rounds=()) -> None:
        super().__init__(rounds)
        self.notes: list[str] = []


# -- what a round measures --------------------------------------------------------------------------


def prompt_ids(model: nn.Module, context: int, seed: int = 0) -> torch.Tensor:
    """(1, context) fixed-seed random token ids from the model's vocabulary, on its device."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    generator = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (1, context), generator=generator)
    return ids.to(next(model.parameters()).device)


def _tensors(value, seen: set[int]) -> int:
    """Bytes of every tensor in `value` (a tensor, a container of them, or an object holding them)."""
    if isinstance(value, torch.Tensor):
        if value.data_ptr() in seen or value.device.type == "meta":
            return 0
        seen.add(value.data_ptr())
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensors(v, seen) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensors(v, seen) for v in value)
    if hasattr(value, "__dict__") and not isinstance(value, nn.Module | type):
        return sum(_tensors(v, seen) for v in vars(value).values())
    return 0


def cache_bytes(cache) -> int:
    """Bytes a KV cache holds: every tensor of its layers (transformers' Cache: `.layers`; a legacy tuple
    of (keys, values) per layer), each storage counted once."""
    layers = getattr(cache, "layers", cache)
    return _tensors(list(layers), set())


def plain_float(model: nn.Module) -> bool:
    """No packed or bitsandbytes layer: the model is its float dtype throughout."""
    return not any(isinstance(m, QuantLinear) or _is_bnb(m) for m in model.modules())


def reference_preset(model: nn.Module) -> WeightPreset | None:
    """The preset of a plain float model (fp32, or 16-bit), as engine.sizing.measure prices one; None for
    a model with packed or bitsandbytes layers (its weights are measured only)."""
    preset = DTYPE_PRESETS.get(float_dtype(model))
    return weight_preset(preset) if preset and plain_float(model) else None


def _float_preset(reference: nn.Module, recipe: Recipe) -> WeightPreset:
    return weight_preset(DTYPE_PRESETS[recipe.dtype])


def _packed_preset(reference: nn.Module, recipe: Recipe) -> WeightPreset | None:
    if recipe.packed_head or recipe.kernel:  # a packed head is neither the scheme nor the float type
        return None
    dtype = float_dtype(reference)
    scheme = recipe.for_module(reference).weights
    label = f"{scheme.label} linears, the rest {DTYPE_NAMES[dtype]}"
    bits = torch.finfo(dtype).bits
    return dataclasses.replace(weight_preset(scheme), label=label, embedding_bits=bits, norm_bits=bits)


PRESET_BY_AXIS: dict[str, Callable[[nn.Module, Recipe], WeightPreset | None]] = {  # by recipe axis
    "float": _float_preset,
    "packed": _packed_preset,
}


def recipe_preset(reference: nn.Module, recipe: Recipe) -> WeightPreset | None:
    """The preset that prices `recipe` built from `reference`: a float recast at its dtype's preset; a
    packed recipe (head left as it is) at its fitted scheme, the rest of the model at the reference's
    float dtype (embeddings and norms stay as they are); None where no preset says what it stores
    (bitsandbytes' layers, a packed head)."""
    price = PRESET_BY_AXIS.get(recipe.axis)
    return price(reference, recipe) if price else None


def _keep_last(model: nn.Module) -> dict:
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


@torch.inference_mode()
def _our_round(model: nn.Module, ids: torch.Tensor, new_tokens: int, should_stop: ShouldStop | None):
    """(prefill s, step seconds, token ids, cache) by engine.runtime.greedy's loop; None when stopped."""
    device = str(ids.device)
    keep = _keep_last(model)
    sync(device)
    start = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, **keep)
    cache = out.past_key_values  # transformers' dynamic cache, grown in place by each step
    first = argmax_token(out.logits)
    sync(device)
    marks = [time.perf_counter()]

    def step(token: torch.Tensor) -> torch.Tensor:  # (1, 1) -> (1, 1)
        logits = model(input_ids=token, past_key_values=cache, use_cache=True, **keep).logits
        token = argmax_token(logits)
        sync(device)  # each step timed to its end, as AutoAWQ's loop does
        marks.append(time.perf_counter())
        return token

    stop = (lambda index, ids_: should_stop()) if should_stop else None
    end = greedy_loop(step, first, new_tokens + 1, on_token=stop)  # the prefill's token + new_tokens steps
    if end.cut_short and end.tokens.shape[1] < new_tokens + 1:
        return None
    steps = tuple(b - a for a, b in zip(marks, marks[1:], strict=False))
    return marks[0] - start, steps, tuple(end.tokens[0].tolist()), cache


@torch.inference_mode()
def _hf_round(model: nn.Module, ids: torch.Tensor, new_tokens: int, should_stop: ShouldStop | None):
    """(prefill s, step seconds, token ids, cache) by transformers' greedy `generate`; None when stopped."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), bool(should_stop()), device=input_ids.device)

    device = str(ids.device)
    clock = TokenClock(device)
    total = new_tokens + 1
    sync(device)
    start = time.perf_counter()
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=total,
        min_new_tokens=total,
        pad_token_id=0,
        streamer=clock,
        return_dict_in_generate=True,
        stopping_criteria=StoppingCriteriaList([_Stop()] if should_stop else []),
    )
    new_ids = out.sequences[0, ids.shape[1] :]
    if new_ids.numel() < total:
        return None
    tokens = clock.times[1:-1]  # [prompt, token 0, token 1, ..., end]: token 0 ends the prefill
    steps = tuple(b - a for a, b in zip(tokens, tokens[1:], strict=False))
    return tokens[0] - start, steps, tuple(new_ids.tolist()), out.past_key_values


GENERATORS = {OUR_LOOP: _our_round, HF_GENERATE: _hf_round}


def _estimates(model: nn.Module, preset: WeightPreset | None, tokens: int):
    """(weights, KV, peak) estimated at `tokens` cached; weights and peak None without a preset."""
    dtype = float_dtype(model)
    priced = estimate(
        model.config,
        preset or "bf16",
        "fp32" if dtype == torch.float32 else "fp16",  # the cache keeps the model's float dtype
        context=tokens,
        batch=1,
        activation_bytes=dtype.itemsize,
        overhead=0,
    )
    if preset is None:
        return None, priced.kv_cache, None
    return priced.weights.total, priced.kv_cache, priced.total


@torch.inference_mode()
def _warm_up(model: nn.Module, run, contexts: list[int]) -> None:
    run(model, prompt_ids(model, contexts[0]), 1, None)
    for context in contexts[1:]:
        model(input_ids=prompt_ids(model, context), use_cache=True, **_keep_last(model))


def sweep(
    model: nn.Module,
    contexts: Sequence[int],
    new_tokens: int,
    generator: str,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    *,
    variant: str = REFERENCE,
    weights: WeightPreset | str | None = None,
    on_round: Callable[[SweepRound], None] | None = None,
) -> SweepRounds:
    """One round per context (ascending) on `model`: prefill, then `new_tokens` timed greedy steps.

    `weights` prices the weight estimate (None: the model's float dtype when it is plain float, else no
    weight estimate). `should_stop` is asked between steps and rounds: a Stop ends the run there and the
    rounds finished so far come back (the cut round is dropped). `on_round` sees each round as it ends.
    Contexts beyond the model's max_position_embeddings (with the new tokens) are skipped, with a note."""
    if generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}; choose from {', '.join(GENERATORS)}")
    if new_tokens < 1:
        raise ValueError("new_tokens must be at least 1")
    preset = weight_preset(weights) if weights is not None else reference_preset(model)
    limit = max_context(model)
    fits = sorted({c for c in contexts if limit is None or c + new_tokens <= limit})
    rounds = SweepRounds()
    skipped = sorted({c for c in contexts if c not in fits})
    if skipped:
        rounds.notes.append(
            f"{variant}: contexts {', '.join(map(str, skipped))} skipped: with {new_tokens} new tokens they "
            f"go beyond the model's {limit:,} positions (max_position_embeddings)."
        )
    if not fits:
        return rounds
    run = GENERATORS[generator]
    device = next(model.parameters()).device
    weight_bytes = model_weight_bytes(model)
    if progress:
        progress(0.0, f"{variant}: warming up (one prefill per context)")
    _warm_up(model, run, fits)
    for index, context in enumerate(fits):
        if should_stop and should_stop():
            rounds.notes.append(f"{variant}: stopped before context {context}.")
            break
        if progress:
            progress(index / len(fits), f"{variant}, {generator}: context {context}, {new_tokens} new tokens")
        ids = prompt_ids(model, context)
        if device.type == "cuda":
            sync(str(device))
            torch.cuda.reset_peak_memory_stats(device)
        done = run(model, ids, new_tokens, should_stop)
        if done is None:
            rounds.notes.append(f"{variant}: stopped during context {context}; that round is left out.")
            break
        prefill, steps, token_ids, cache = done
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        est_weights, est_kv, est_peak = _estimates(model, preset, context + new_tokens)
        result = SweepRound(
            variant=variant,
            generator=generator,
            context=context,
            new_tokens=len(steps),
            prefill_seconds=prefill,
            step_seconds=steps,
            weight_bytes=weight_bytes,
            kv_bytes=cache_bytes(cache),
            cuda_peak_bytes=peak,
            estimated_weight_bytes=est_weights,
            estimated_kv_bytes=est_kv,
            estimated_peak_bytes=est_peak,
            weights_label=preset.label if preset else "no preset: measured only",
            token_ids=token_ids,
        )
        del cache, done
        rounds.append(result)
        if on_round:
            on_round(result)
    if progress:
        progress(1.0, f"{variant}: sweep done")
    return rounds


def sweep_variants(
    model: nn.Module,
    variants: Sequence[Recipe | str],
    contexts: Sequence[int],
    new_tokens: int,
    generator: str,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    builders: dict[str, Callable[[], nn.Module]] | None = None,
    on_round: Callable[[SweepRound], None] | None = None,
) -> SweepRounds:
    """`sweep` each variant in turn: REFERENCE is `model` itself, a name in `builders` (a Methods-lab
    copy) is built by it, anything else by engine.speed.variants.build_variant; one copy at a time."""
    rounds = SweepRounds()
    for index, variant in enumerate(variants):
        if should_stop and should_stop():
            break
        name = variant.label if isinstance(variant, Recipe) else variant
        if progress:
            progress(index / len(variants), f"Building {name}")
        if name == REFERENCE:
            built, preset = model, None
        elif builders and name in builders:
            built, preset = builders[name](), None
        else:
            recipe = variant_recipe(variant)
            built, preset = build_variant(model, recipe), recipe_preset(model, recipe)

        def part(fraction: float, message: str, index=index) -> None:
            if progress:
                progress((index + fraction) / len(variants), message)

        done = sweep(
            built,
            contexts,
            new_tokens,
            generator,
            part,
            should_stop,
            variant=name,
            weights=preset,
            on_round=on_round,
        )
        rounds.extend(done)
        rounds.notes.extend(done.notes)
        del built
    return rounds
