"""End-to-end decode: prefill and decode timed apart, by one or more decode loops, beside their roofline.

Every variant (engine.speed.variants) decodes with the end-of-sequence token ignored, so all decode the
same number of tokens, through the loops in LOOPS: engine.runtime.generation.generate (our plain loop on
transformers' dynamic cache, what the rest of the app uses), transformers' own `generate`, and
engine.runtime.decode's static-cache loop, eager or with its step compiled (CUDA graphs on a GPU). A
compiled loop's compile time is reported apart and never counted in tokens/s. The roofline is the bytes
one decode step reads (every weight a token visits, the output head included, plus the KV cache at the
mean context) divided by a measured copy bandwidth.

Warm-ups (issue 16): `decode_comparison` warms every loop up on a variant (`warm_up`: a short run, which
compiles the compiled loop's step) before it times any of them, so the loop timed first does not pay the
process's one-time costs (oneDNN / cuBLAS handles, kernel loading, allocator growth) that the others then
find paid. `decode_benchmark` alone warms its own loop up first, as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from engine._types import Progress
from engine.recipes import Recipe
from engine.runtime import decode as static_decode
from engine.runtime.generation import GenerationSettings, encode_prompt, generate
from engine.sizing.estimate import kv_bytes_per_token
from engine.speed.bandwidth import float_dtype, measure_bandwidth, model_weight_bytes, weight_read_bytes
from engine.speed.synthetic import SyntheticTokenizer
from engine.speed.timing import sync
from engine.speed.variants import build_variant

DYNAMIC_LOOP = (
    "dynamic cache"  # engine.runtime.generation.generate: our plain loop, transformers' DynamicCache
)
HF_LOOP = "transformers generate"  # model.generate(do_sample=False), its default (dynamic) cache
STATIC_LOOP = "static cache"  # engine.runtime.decode, eager
COMPILED_LOOP = (
    "static + compile"  # engine.runtime.decode, step compiled (reduce-overhead: CUDA graphs on a GPU)
)
LOOPS = (DYNAMIC_LOOP, HF_LOOP, STATIC_LOOP, COMPILED_LOOP)


@dataclass(frozen=True)
class DecodeTiming:
    variant: str
    prompt_tokens: int
    new_tokens: int
    prefill_seconds: float
    decode_seconds: float
    weight_bytes: int  # measured bytes of parameters and buffers
    bytes_per_token: float  # one decode step at the mean context: weights read + KV cache
    bandwidth: float  # measured copy bandwidth, bytes/s
    text: str = ""
    token_ids: tuple[int, ...] = field(default=(), repr=False)
    loop: str = DYNAMIC_LOOP  # which decode loop ran (LOOPS)
    compile_seconds: float = 0.0  # compiled loop: warm-up that compiled the step, not in the timings
    ran_as: str = ""  # the static loop's mode actually used (eager, compiled (inductor), ...)
    note: str = ""  # a fallback reason or graph breaks, for the table

    @property
    def label(self) -> str:
        return self.variant if self.loop == DYNAMIC_LOOP else f"{self.variant} · {self.loop}"

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds

    @property
    def decode_tokens_per_s(self) -> float:
        return max(self.new_tokens - 1, 0) / self.decode_seconds if self.decode_seconds > 0 else float("nan")

    @property
    def roofline_tokens_per_s(self) -> float:
        return self.bandwidth / self.bytes_per_token

    @property
    def roofline_fraction(self) -> float:
        return self.decode_tokens_per_s / self.roofline_tokens_per_s


@dataclass(frozen=True)
class WarmUp:
    """What a loop's warm-up found: the compiled loop's compile time and notes; nothing for the others."""

    loop: str
    compile_seconds: float = 0.0
    note: str = ""  # a fallback reason or graph breaks


class _IgnoreEos:
    """A tokenizer with no end-of-sequence token, so every variant decodes exactly max_new_tokens."""

    eos_token_id = None
    chat_template = None

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self._tokenizer.decode(*args, **kwargs)


def prompt_of_length(tokenizer, tokens: int) -> str:
    """A text of about `tokens` tokens (exactly, for the synthetic tokenizer)."""
    base = "The quick brown fox jumps over the lazy dog while the engineers measure memory bandwidth. "
    text = base * (tokens // 8 + 2)
    if isinstance(tokenizer, SyntheticTokenizer):
        return text[:tokens]
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0, :tokens]
    return tokenizer.decode(ids, skip_special_tokens=True)


def _roofline_bytes(model: nn.Module, prompt_tokens: int, new_tokens: int) -> float:
    kv_bits = torch.finfo(float_dtype(model)).bits  # the cache is kept in the model's float dtype
    mean_context = prompt_tokens + new_tokens / 2
    return weight_read_bytes(model) + kv_bytes_per_token(model.config, kv_bits) * mean_context


class TokenClock:
    """A `generate` streamer that only notes when each put() arrives: the prompt first, then one call per
    new token, so prefill ends at the second put and decode is the time from there to the end."""

    def __init__(self, device: str) -> None:
        self.device, self.times = device, []

    def put(self, value) -> None:
        sync(self.device)
        self.times.append(time.perf_counter())

    def end(self) -> None:
        sync(self.device)
        self.times.append(time.perf_counter())


@torch.inference_mode()
def _hf_generate(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> tuple[float, float, torch.Tensor]:
    """(prefill s, decode s, new token ids) of transformers' greedy `generate`, end-of-sequence ignored."""
    device = str(ids.device)
    clock = TokenClock(device)
    sync(device)
    start = time.perf_counter()
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=new_tokens,
        eos_token_id=None,  # decode every token, as the other loops do
        pad_token_id=0,
        streamer=clock,
    )
    first_token = clock.times[1] if len(clock.times) > 2 else clock.times[-1]  # [prompt, token 1, ..., end]
    return first_token - start, clock.times[-1] - first_token, out[0, ids.shape[1] :]


def _static_args(model: nn.Module, tokenizer, prompt: str, new_tokens: int, loop: str):
    """(prompt ids on the model's device, static decode mode, cache length) for a static-cache loop."""
    if loop not in (STATIC_LOOP, COMPILED_LOOP):
        raise ValueError(f"unknown decode loop {loop!r}; choose from {', '.join(LOOPS)}")
    ids = encode_prompt(tokenizer, prompt, False, None).to(next(model.parameters()).device)  # (1, tokens)
    mode = "compiled" if loop == COMPILED_LOOP else "eager"
    return (
        ids,
        mode,
        ids.shape[1] + new_tokens,
    )  # one cache size for the warm-up and the timed run: one compile


def warm_up(
    model: nn.Module, tokenizer, prompt: str, new_tokens: int, loop: str, warmup_tokens: int = 2
) -> WarmUp:
    """A short run of `loop` (`warmup_tokens` new tokens, at least one) on the shapes the timed run will
    use: first calls pay one-time costs (allocations, oneDNN / cuBLAS set-up, kernel loading); the compiled
    loop compiles its step here, and its compile time is what this returns."""
    tokens = min(max(warmup_tokens, 1), new_tokens)
    if loop == DYNAMIC_LOOP:
        generate(model, _IgnoreEos(tokenizer), prompt, GenerationSettings(max_new_tokens=tokens, chat=False))
        return WarmUp(loop)
    if loop == HF_LOOP:
        ids = encode_prompt(tokenizer, prompt, False, None).to(next(model.parameters()).device)
        _hf_generate(model, ids, tokens)
        return WarmUp(loop)
    ids, mode, cache_len = _static_args(model, tokenizer, prompt, new_tokens, loop)
    warm = static_decode.decode(model, ids, tokens, mode, cache_len=cache_len)
    notes = [warm.fallback_reason or ""]
    if warm.graph_breaks:
        notes.append(f"{warm.graph_breaks} graph breaks")
    return WarmUp(loop, warm.compile_seconds, "; ".join(n for n in notes if n))


def _run_loop(model: nn.Module, tokenizer, prompt: str, new_tokens: int, loop: str):
    """(prompt tokens, new ids, prefill s, decode s, ran as) for one timed run of a warm loop."""
    if loop == DYNAMIC_LOOP:
        settings = GenerationSettings(max_new_tokens=new_tokens, chat=False)
        result = generate(model, _IgnoreEos(tokenizer), prompt, settings)
        return result.prompt_tokens, result.token_ids, result.prefill_seconds, result.decode_seconds, ""
    if loop == HF_LOOP:  # a streamer clocks the first new token: prefill before it, decode after it
        ids = encode_prompt(tokenizer, prompt, False, None).to(next(model.parameters()).device)
        prefill, decode_seconds, new_ids = _hf_generate(model, ids, new_tokens)
        return ids.shape[1], new_ids.tolist(), prefill, decode_seconds, ""
    ids, mode, cache_len = _static_args(model, tokenizer, prompt, new_tokens, loop)
    result = static_decode.decode(model, ids, new_tokens, mode, cache_len=cache_len)
    return (
        ids.shape[1],
        list(result.token_ids[0]),
        result.prefill_seconds,
        result.decode_seconds,
        result.mode_used,
    )


def decode_benchmark(
    model: nn.Module,
    tokenizer,
    variant: str,
    prompt: str,
    new_tokens: int = 32,
    bandwidth: float | None = None,
    warmup_tokens: int = 2,
    loop: str = DYNAMIC_LOOP,
    warm: WarmUp | None = None,
) -> DecodeTiming:
    """Prefill and greedy decode of `new_tokens` with `model` (already built for `variant`) by `loop`.

    `warm` is the loop's earlier `warm_up` on this model and prompt (then none runs here); None warms the
    loop up first. Its compile time and notes go into the timing, apart from the timed run."""
    if loop not in LOOPS:
        raise ValueError(f"unknown decode loop {loop!r}; choose from {', '.join(LOOPS)}")
    device = str(next(model.parameters()).device)
    bandwidth = bandwidth or measure_bandwidth(device)
    if warm is None:
        warm = warm_up(model, tokenizer, prompt, new_tokens, loop, warmup_tokens)
    prompt_tokens, token_ids, prefill, decode_seconds, ran_as = _run_loop(
        model, tokenizer, prompt, new_tokens, loop
    )
    return DecodeTiming(
        variant=variant,
        prompt_tokens=prompt_tokens,
        new_tokens=len(token_ids),
        prefill_seconds=prefill,
        decode_seconds=decode_seconds,
        weight_bytes=model_weight_bytes(model),
        bytes_per_token=_roofline_bytes(model, prompt_tokens, len(token_ids)),
        bandwidth=bandwidth,
        text=tokenizer.decode(token_ids, skip_special_tokens=True),
        token_ids=tuple(token_ids),
        loop=loop,
        compile_seconds=warm.compile_seconds,
        ran_as=ran_as,
        note=warm.note,
    )


def decode_comparison(
    model: nn.Module,
    tokenizer,
    variants: list[Recipe | str],
    prompt_tokens: int = 32,
    new_tokens: int = 32,
    group_size: int | None = None,
    progress: Progress | None = None,
    loops: list[str] | tuple[str, ...] = (DYNAMIC_LOOP,),
    builders: dict[str, Callable[[], nn.Module]] | None = None,
) -> list[DecodeTiming]:
    """Build each variant in turn (a copy at a time), decode with it by every loop, and free it.

    `variants` are recipes (engine.speed.variants.VARIANTS) or names; `builders` names variants of one's own
    (a Methods-lab model through `runnable_copy`, say) and how to build each; every other variant goes to
    `build_variant`. Results carry each variant's label (W4A16, NF4 (bnb), ...).

    Every loop on a variant is warmed up (`warm_up`) before the first of them is timed. A compiled loop
    compiles its step once per model copy and shapes (engine.runtime.decode keeps it while the
    model lives): the loaded model reuses it on the next run; packed copies are rebuilt per run, and
    compile again (faster the second time, from inductor's on-disk cache).
    """
    unknown = [loop for loop in loops if loop not in LOOPS]
    if unknown or not loops:
        raise ValueError(f"unknown decode loops {unknown}; choose from {', '.join(LOOPS)}")
    device = str(next(model.parameters()).device)
    if progress:
        progress(0.0, "Measuring memory bandwidth")
    bandwidth = measure_bandwidth(device)
    prompt = prompt_of_length(tokenizer, prompt_tokens)
    results = []
    steps = len(variants) * (len(loops) + 1)
    for index, variant in enumerate(variants):
        name = variant.label if isinstance(variant, Recipe) else variant
        if progress:
            progress(index * (len(loops) + 1) / steps, f"Building {name}")
        if builders and name in builders:
            built = builders[name]()
        else:
            built = build_variant(model, variant, group_size)
        if progress:
            progress(
                (index * (len(loops) + 1) + 0.5) / steps,
                f"{name}: warming up {', '.join(loops)}" + (" (compiling)" if COMPILED_LOOP in loops else ""),
            )
        warm = {loop: warm_up(built, tokenizer, prompt, new_tokens, loop) for loop in loops}
        for loop_index, loop in enumerate(loops):
            if progress:
                progress(
                    (index * (len(loops) + 1) + loop_index + 1) / steps,
                    f"{name}, {loop}: decoding {new_tokens} tokens",
                )
            timing = decode_benchmark(
                built, tokenizer, name, prompt, new_tokens, bandwidth, loop=loop, warm=warm[loop]
            )
            results.append(timing)
        del built
    if progress:
        progress(1.0, "Decode benchmarks done")
    return results
