"""Measured speed on this device: linear-layer microbenchmarks and end-to-end decode beside its roofline.

Microbenchmarks time one linear layer y = x @ W^T per format at several batch sizes (rows of x):
16/32-bit `nn.functional.linear` (the baseline: fp32 on CPU, the activation dtype on a GPU) and the
packed `QuantLinear` of engine.kernels (W8A16, W4A16, W8A8; tinygemm int4 too on CUDA), and, for
comparison, bitsandbytes' own NF4 and LLM.int8() layers (BNB_FORMATS) as users get them: on a CPU with
AVX512-BF16, bitsandbytes repacks 4-bit weights at the first forward for its fast kernel (its default,
which engine.methods.bnb turns off for exact weights; here speed is the point). Each figure is
the median of `repeats` calls after `warmup`, with a device synchronize around every call on a GPU.
Calls rotate over enough copies of the weights (ROTATE_BYTES) that each one reads its weights from
memory rather than from a cache that a whole model would never fit in; "GB/s" is weight bytes
(scales included) plus activation bytes in and out, divided by the time.

End-to-end decode times prefill and decode apart on the reference and packed variants of a model, with
the end-of-sequence token ignored so every variant decodes the same number of tokens, through one or
more decode loops (LOOPS): engine.runtime.generation.generate (our plain loop on transformers' dynamic cache,
what the rest of the app uses), transformers' own `generate`, and engine.runtime.decode's static-cache loop,
eager or with its step compiled (CUDA graphs on a GPU). A compiled loop's compile time is reported
apart and never counted in tokens/s. Its roofline is the bytes one decode step reads (every weight a
token visits, the output head included, plus the KV cache at the mean context) divided by a measured
copy bandwidth.

`synthetic_model` builds any catalog config with random weights (for sizing speed without a download);
it refuses, with the numbers, when the model would not fit in free memory.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from engine.kernels import QuantLinear, to_quant_linears
from engine.methods.registry import NotEnoughMemoryError
from engine.models.loading import count_parameters_from_config, free_memory_bytes
from engine.quant.linear import linear_names
from engine.quant.schemes import QuantScheme
from engine.runtime import decode as static_decode
from engine.runtime.generation import GenerationSettings, encode_prompt, generate
from engine.sizing.estimate import kv_bytes_per_token, measured_bytes

Progress = Callable[[float, str], None]
BATCH_SIZES = (1, 4, 16, 64, 256)
LLAMA_2_7B_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008))  # (out, in): q/k/v/o, gate/up, down
ROTATE_BYTES = {"cpu": 64 * 2**20, "cuda": 256 * 2**20}  # beyond the last-level cache (H100 L2: 50 MB)
MAX_COPIES = 64
INT8_CHANNEL = QuantScheme(8, "int", True, "channel")
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}
SYNTHETIC_HEADROOM = 1.1  # weights plus the allocator's slack while building
BNB_FORMATS = {"NF4 (bnb)": "nf4", "LLM.int8 (bnb)": "int8"}  # bitsandbytes layers, BnbConfig modes
COMPUTE_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def bnb_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def int4_scheme(*in_features: int, group_size: int | None = None) -> QuantScheme:
    """int4 asym (tinygemm's native form) in groups of the largest of 128 / 64 / 32 dividing every width."""
    group = group_size or next((g for g in (128, 64, 32) if all(w % g == 0 for w in in_features)), 32)
    return QuantScheme(4, "int", False, "group", group)


def available_formats(device: str) -> list[str]:
    if device.startswith("cuda"):
        ours = ["fp16", "bf16", "W8A16", "W4A16", "W4A16 tinygemm", "W8A8"]
    else:
        ours = ["fp32", "bf16", "W8A16", "W4A16", "W8A8"]
    return ours + (list(BNB_FORMATS) if bnb_installed() else [])


def baseline_format(device: str) -> str:
    return "bf16" if device.startswith("cuda") else "fp32"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(calls: list[Callable[[], object]], repeats: int, warmup: int, device: str) -> float:
    """Median wall time of one call, rotating over `calls` (one per weight copy)."""
    for index in range(warmup):
        calls[index % len(calls)]()
    _sync(device)
    samples = []
    for index in range(repeats):
        start = time.perf_counter()
        calls[index % len(calls)]()
        _sync(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


# -- microbenchmarks ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearShape:
    out_features: int
    in_features: int
    count: int = 1  # layers of this shape in the model
    names: tuple[str, ...] = ()  # their short names (q_proj, ...)

    @property
    def label(self) -> str:
        names = f" {'/'.join(self.names)}" if self.names else ""
        return f"{self.out_features}×{self.in_features}{names}"


def output_head_shape(model: nn.Module) -> LinearShape | None:
    """The output head's (out, in): no method quantizes it, but in a small model it is the largest
    matmul of a decode step (SmolLM2-135M: 49,152 × 576, 113 MB in fp32)."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        return None
    return LinearShape(head.out_features, head.in_features, 1, ("lm_head",))


def model_linear_shapes(model: nn.Module) -> list[LinearShape]:
    """The distinct (out, in) shapes of the model's quantizable linears, most weights first."""
    counts: Counter = Counter()
    names: dict[tuple[int, int], list[str]] = {}
    for name in linear_names(model):
        module = model.get_submodule(name)
        shape = (module.out_features, module.in_features)
        counts[shape] += 1
        short = name.rpartition(".")[2]
        if short not in names.setdefault(shape, []):
            names[shape].append(short)
    shapes = [LinearShape(o, i, counts[(o, i)], tuple(names[(o, i)])) for o, i in counts]
    return sorted(shapes, key=lambda s: -s.count * s.out_features * s.in_features)


@dataclass(frozen=True)
class KernelTiming:
    shape: LinearShape
    batch: int
    format: str
    kernel: str  # what actually ran
    seconds: float  # median
    bytes: int  # weights with scales, plus activations in and out
    flops: float
    baseline_seconds: float | None = None

    @property
    def gbytes_per_s(self) -> float:
        return self.bytes / self.seconds / 1e9

    @property
    def tflops(self) -> float:
        return self.flops / self.seconds / 1e12

    @property
    def speedup(self) -> float | None:
        return None if self.baseline_seconds is None else self.baseline_seconds / self.seconds


class _Dense(nn.Module):
    """The baseline: nn.functional.linear on a weight in one dtype."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def bnb_default_cpu_path(model: nn.Module) -> nn.Module:
    """Give bitsandbytes 4-bit layers back bitsandbytes' own default: on a CPU with AVX512-BF16, repack
    the weights at the first forward for its fast kernel (engine.methods.bnb turns that off so the
    weights stay exactly as quantized; the repacked absmax is rounded to bfloat16)."""
    from bitsandbytes.functional import has_avx512bf16

    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = has_avx512bf16()
    return model


def bnb_config(fmt: str, compute_dtype: torch.dtype):
    from engine.methods.bnb import BnbConfig

    return BnbConfig(BNB_FORMATS[fmt], compute_dtype=COMPUTE_DTYPE_NAMES[compute_dtype])


def _is_bnb(layer: nn.Module) -> bool:
    return type(getattr(layer, "weight", None)).__name__ in ("Params4bit", "Int8Params")


def layer_for(
    fmt: str, weight: torch.Tensor, group_size: int | None = None, act_dtype: torch.dtype = torch.float32
) -> nn.Module:
    """A module computing x @ weight^T in format `fmt`, on weight's device (bitsandbytes layers compute in
    `act_dtype`)."""
    if fmt in DTYPES:
        return _Dense(weight.to(DTYPES[fmt]))
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device)
    linear.weight.data = weight.float()
    if fmt in BNB_FORMATS:
        from engine.methods.bnb import bnb_linear

        layer = bnb_linear(linear, bnb_config(fmt, act_dtype).transformers_config())
        return bnb_default_cpu_path(layer)
    if fmt in ("W4A16", "W4A16 tinygemm"):
        module = QuantLinear.from_linear(linear, int4_scheme(weight.shape[1], group_size=group_size))
        if fmt == "W4A16 tinygemm":
            from engine.kernels.cuda import TinygemmLinear

            return TinygemmLinear(module)
        return module
    if fmt == "W8A16":
        return QuantLinear.from_linear(linear, INT8_CHANNEL)
    if fmt == "W8A8":
        return QuantLinear.from_linear(linear, INT8_CHANNEL, INT8_CHANNEL)
    raise ValueError(f"unknown format {fmt!r}; choose from {available_formats(str(weight.device))}")


def _kernel_name(layer: nn.Module, tokens: int) -> str:
    if isinstance(layer, QuantLinear):
        return layer.kernel_for(tokens)
    if _is_bnb(layer):
        if type(layer.weight).__name__ == "Int8Params":
            return "bnb int8 (LLM.int8)"
        repacked = getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
        return "bnb nf4 (CPU AVX512-BF16)" if repacked else "bnb nf4"
    return "tinygemm" if hasattr(layer, "scales_and_zeros") else f"linear {DTYPE_NAMES[layer.weight.dtype]}"


def _nbytes(layer: nn.Module) -> int:
    """Bytes the layer's weights take: QuantLinear's and _Dense's buffers, or a bitsandbytes layer's
    stored codes and statistics (call it before the first forward, which may repack them)."""
    if _is_bnb(layer):
        from engine.methods.bnb import stored_bytes

        return sum(stored_bytes(layer).values())
    return sum(t.numel() * t.element_size() for t in layer.buffers())


@torch.inference_mode()
def microbenchmark(
    shapes: list[LinearShape],
    batches: tuple[int, ...] | list[int] = BATCH_SIZES,
    formats: list[str] | None = None,
    device: str = "cpu",
    act_dtype: torch.dtype | None = None,
    repeats: int = 20,
    warmup: int = 3,
    group_size: int | None = None,
    rotate: bool = True,
    progress: Progress | None = None,
    seed: int = 0,
) -> list[KernelTiming]:
    """Time every (shape, batch, format); the baseline format is always measured, for the speed-ups.

    Quantized formats take activations in `act_dtype` (float32 on CPU, bfloat16 on a GPU: what the
    model feeds them); the 16/32-bit baselines take their own dtype.
    """
    formats = list(formats or available_formats(device))
    unknown = set(formats) - set(available_formats(device))
    if unknown:
        raise ValueError(
            f"formats {sorted(unknown)} do not run on {device}; choose from {available_formats(device)}"
        )
    base = baseline_format(device)
    act_dtype = act_dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    order = [base] + [f for f in formats if f != base]
    rotate_bytes = ROTATE_BYTES["cuda" if device.startswith("cuda") else "cpu"]
    generator = torch.Generator().manual_seed(seed)
    results: list[KernelTiming] = []
    steps = len(shapes) * len(order)
    for shape_index, shape in enumerate(shapes):
        weight = (torch.randn(shape.out_features, shape.in_features, generator=generator) * 0.02).to(device)
        baseline: dict[int, float] = {}
        for fmt_index, fmt in enumerate(order):
            if progress:
                progress((shape_index * len(order) + fmt_index) / steps, f"{shape.label}: {fmt}")
            x_dtype = DTYPES.get(fmt, act_dtype)
            layer = layer_for(fmt, weight, group_size, x_dtype)
            weight_bytes = _nbytes(layer)
            copies = min(MAX_COPIES, math.ceil(rotate_bytes / weight_bytes)) if rotate else 1
            layers = [layer] + [copy.deepcopy(layer) for _ in range(copies - 1)]
            first = torch.zeros(1, shape.in_features, device=device, dtype=x_dtype)
            for each in layers:  # one call each first: bitsandbytes repacks CPU weights at its first call
                each(first)
            for batch in batches:
                x = torch.randn(batch, shape.in_features, generator=generator).to(device, x_dtype)
                seconds = median_seconds([lambda m=m, x=x: m(x) for m in layers], repeats, warmup, device)
                activation_bytes = batch * (shape.in_features + shape.out_features) * x.element_size()
                if fmt == base:
                    baseline[batch] = seconds
                results.append(
                    KernelTiming(
                        shape,
                        batch,
                        fmt,
                        _kernel_name(layer, batch),
                        seconds,
                        weight_bytes + activation_bytes,
                        2.0 * batch * shape.out_features * shape.in_features,
                        baseline.get(batch),
                    )
                )
            del layers, layer
    if progress:
        progress(1.0, "Microbenchmarks done")
    return [r for r in results if r.format in formats]


# -- memory bandwidth ----------------------------------------------------------------------------------------


def measure_bandwidth(device: str = "cpu", nbytes: int | None = None, repeats: int = 5) -> float:
    """Bytes/s of a large tensor copy (each byte read once and written once), median of `repeats`."""
    nbytes = nbytes or (1 << 30 if device.startswith("cuda") else 256 << 20)
    source = torch.ones(nbytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    seconds = median_seconds([lambda: target.copy_(source)], repeats, 1, device)
    return 2 * nbytes / seconds


# -- end-to-end decode ---------------------------------------------------------------------------------------


def float_dtype(model: nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def _bnb_side_bytes(model: nn.Module) -> int:
    """Bytes bitsandbytes keeps beside its layers' weight parameters, which parameters and buffers miss:
    4-bit quantization states (absmax, codebook, nested statistics) and int8 row scales (SCB)."""
    total = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        tensors = [getattr(weight, "SCB", None)]
        while state is not None:
            tensors += [v for v in vars(state).values() if isinstance(v, torch.Tensor)]
            state = getattr(state, "state2", None)
        total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return total


def model_weight_bytes(model: nn.Module) -> int:
    """Measured bytes of parameters and buffers, plus what bitsandbytes keeps beside them."""
    return sum(measured_bytes(model).values()) + _bnb_side_bytes(model)


def weight_read_bytes(model: nn.Module) -> int:
    """Bytes of weights one decode step reads: all of them, except the input embedding table (one row is
    read) unless it is tied to the output head, which reads all of it."""
    total = model_weight_bytes(model)
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = (
        head is not None
        and getattr(head, "weight", None) is not None
        and head.weight.data_ptr() == embedding.data_ptr()
    )
    return total if tied else total - embedding.numel() * embedding.element_size()


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


class SyntheticTokenizer:
    """For synthetic models: one token per character (code point modulo the vocabulary), no specials."""

    eos_token_id = None
    chat_template = None

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def __call__(self, text: str, return_tensors: str = "pt", **_) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor([[1 + ord(c) % (self.vocab_size - 1) for c in text]])}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(int(i)) for i in ids)


HEAD_SUFFIX = " + int8 head"  # a packed variant whose output head is packed too (int8 per channel)
VARIANTS = ("fp32", "bf16", "fp16", "W8A16", "W4A16", "W4A16" + HEAD_SUFFIX, "W8A8", *BNB_FORMATS)


def available_variants(device: str) -> list[str]:
    """The end-to-end variants for `device` (a CPU runs no fp16 model; bitsandbytes only when installed)."""
    skip = "fp32" if device.startswith("cuda") else "fp16"
    return [v for v in VARIANTS if v != skip and (v not in BNB_FORMATS or bnb_installed())]


def build_variant(
    model: nn.Module, name: str, group_size: int | None = None, progress: Progress | None = None
) -> nn.Module:
    """The model itself (its own dtype), a recast copy, or a packed copy; `model` is never changed.
    NotEnoughMemoryError, with the numbers, when a recast copy would not fit in free memory."""
    if name in DTYPES:
        if float_dtype(model) == DTYPES[name]:
            return model
        size = model_weight_bytes(model)
        ratio = torch.finfo(DTYPES[name]).bits / torch.finfo(float_dtype(model)).bits
        needed = size * (1 + ratio) * SYNTHETIC_HEADROOM  # deepcopy first, then the cast
        device = str(next(model.parameters()).device)
        free = free_memory_bytes(device)
        if needed > free:
            raise NotEnoughMemoryError(
                f"The {name} variant copies the model: about {needed / 2**30:.1f} GiB while it is built, "
                f"but only {free / 2**30:.1f} GiB is free on {device}. Leave {name} out or use a smaller "
                "model."
            )
        return copy.deepcopy(model).to(DTYPES[name])
    if name.endswith(HEAD_SUFFIX) and name.removesuffix(HEAD_SUFFIX) in ("W4A16", "W8A16", "W8A8"):
        return pack_output_head(build_variant(model, name.removesuffix(HEAD_SUFFIX), group_size, progress))
    if name == "W4A16":
        widths = {model.get_submodule(n).in_features for n in linear_names(model)}
        return to_quant_linears(model, int4_scheme(*widths, group_size=group_size), progress=progress)
    if name == "W8A16":
        return to_quant_linears(model, INT8_CHANNEL, progress=progress)
    if name == "W8A8":
        return to_quant_linears(model, INT8_CHANNEL, INT8_CHANNEL, progress=progress)
    if name in BNB_FORMATS and bnb_installed():
        from engine.methods.registry import quantize_model

        built = quantize_model(model, bnb_config(name, float_dtype(model)), progress=progress).model
        return bnb_default_cpu_path(built)
    raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")


def pack_output_head(packed: nn.Module) -> nn.Module:
    """Pack a packed copy's output head too, int8 per channel (W8A16), in place. Every method keeps the
    head in 16/32 bits, but in a small model it is most of what a decode step reads (SmolLM2-135M's tied
    fp32 head: 113 of the 168 MB a W4A16 token reads). A tied head gets its own packed copy; the
    embedding table stays as it is for the lookups, which read one row per token."""
    head = packed.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"the output head is a {type(head).__name__}, not a linear layer: nothing to pack")
    packed.set_output_embeddings(QuantLinear.from_linear(head, INT8_CHANNEL))
    return packed


def runnable_refusal(quantized: nn.Module) -> str | None:
    """Why `runnable_copy` would refuse a Methods-lab model (without building it); None if it runs."""
    from engine.kernels.linear import pack_refusal

    if any(_is_bnb(module) for module in quantized.modules()):
        return None
    return pack_refusal(quantized)


def runnable_copy(quantized: nn.Module, progress: Progress | None = None) -> nn.Module:
    """A copy of a Methods-lab model that runs real kernels: its fake-quantized layers packed from the
    integer codes the method chose (engine.kernels.pack_quantized_model), or its bitsandbytes layers on
    bitsandbytes' default CPU path. ValueError, with the reason, when no kernel runs its layers."""
    from engine.kernels import pack_quantized_model

    if any(_is_bnb(module) for module in quantized.modules()):
        return bnb_default_cpu_path(copy.deepcopy(quantized))
    return pack_quantized_model(quantized, progress=progress)


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


class _TokenClock:
    """A `generate` streamer that only notes when each put() arrives: the prompt first, then one call per
    new token, so prefill ends at the second put and decode is the time from there to the end."""

    def __init__(self, device: str) -> None:
        self.device, self.times = device, []

    def put(self, value) -> None:
        _sync(self.device)
        self.times.append(time.perf_counter())

    def end(self) -> None:
        _sync(self.device)
        self.times.append(time.perf_counter())


@torch.inference_mode()
def _hf_generate(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> tuple[float, float, torch.Tensor]:
    """(prefill s, decode s, new token ids) of transformers' greedy `generate`, end-of-sequence ignored."""
    device = str(ids.device)
    clock = _TokenClock(device)
    _sync(device)
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


def _run_loop(model: nn.Module, tokenizer, prompt: str, new_tokens: int, loop: str, warmup_tokens: int):
    """(prompt tokens, new ids, prefill s, decode s, compile s, ran as, note) for one loop."""
    if loop == DYNAMIC_LOOP:
        quiet = _IgnoreEos(tokenizer)
        if warmup_tokens:  # first calls pay one-time costs (allocations, oneDNN / cuBLAS setup)
            generate(model, quiet, prompt, GenerationSettings(max_new_tokens=warmup_tokens, chat=False))
        result = generate(model, quiet, prompt, GenerationSettings(max_new_tokens=new_tokens, chat=False))
        return (
            result.prompt_tokens,
            result.token_ids,
            result.prefill_seconds,
            result.decode_seconds,
            0.0,
            "",
            "",
        )
    ids = encode_prompt(tokenizer, prompt, False, None).to(next(model.parameters()).device)  # (1, tokens)
    if loop == HF_LOOP:  # a streamer clocks the first new token: prefill before it, decode after it
        if warmup_tokens:
            _hf_generate(model, ids, min(warmup_tokens, new_tokens))
        prefill, decode_seconds, new_ids = _hf_generate(model, ids, new_tokens)
        return ids.shape[1], new_ids.tolist(), prefill, decode_seconds, 0.0, "", ""
    if loop not in (STATIC_LOOP, COMPILED_LOOP):
        raise ValueError(f"unknown decode loop {loop!r}; choose from {', '.join(LOOPS)}")
    mode = "compiled" if loop == COMPILED_LOOP else "eager"
    cache_len = ids.shape[1] + new_tokens  # one cache size for the warm-up and the timed run: one compile
    warm = static_decode.decode(model, ids, min(max(warmup_tokens, 1), new_tokens), mode, cache_len=cache_len)
    result = static_decode.decode(model, ids, new_tokens, mode, cache_len=cache_len)
    notes = [warm.fallback_reason or ""]
    if warm.graph_breaks:
        notes.append(f"{warm.graph_breaks} graph breaks")
    note = "; ".join(n for n in notes if n)
    return (
        ids.shape[1],
        list(result.token_ids[0]),
        result.prefill_seconds,
        result.decode_seconds,
        warm.compile_seconds,
        result.mode_used,
        note,
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
) -> DecodeTiming:
    """Prefill and greedy decode of `new_tokens` with `model` (already built for `variant`) by `loop`."""
    device = str(next(model.parameters()).device)
    bandwidth = bandwidth or measure_bandwidth(device)
    prompt_tokens, token_ids, prefill, decode_seconds, compile_seconds, ran_as, note = _run_loop(
        model, tokenizer, prompt, new_tokens, loop, warmup_tokens
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
        compile_seconds=compile_seconds,
        ran_as=ran_as,
        note=note,
    )


def decode_comparison(
    model: nn.Module,
    tokenizer,
    variants: list[str],
    prompt_tokens: int = 32,
    new_tokens: int = 32,
    group_size: int | None = None,
    progress: Progress | None = None,
    loops: list[str] | tuple[str, ...] = (DYNAMIC_LOOP,),
    builders: dict[str, Callable[[], nn.Module]] | None = None,
) -> list[DecodeTiming]:
    """Build each variant in turn (a copy at a time), decode with it by every loop, and free it.

    `builders` names variants of one's own (a Methods-lab model through `runnable_copy`, say) and how to
    build each; every other name goes to `build_variant`.

    A compiled loop compiles its step once per model copy and shapes (engine.runtime.decode keeps it while the
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
    for index, name in enumerate(variants):
        if progress:
            progress(index * (len(loops) + 1) / steps, f"Building {name}")
        built = builders[name]() if builders and name in builders else build_variant(model, name, group_size)
        for loop_index, loop in enumerate(loops):
            if progress:
                what = "compiling, then decoding" if loop == COMPILED_LOOP else "decoding"
                progress(
                    (index * (len(loops) + 1) + loop_index + 1) / steps,
                    f"{name}, {loop}: {what} {new_tokens} tokens",
                )
            results.append(decode_benchmark(built, tokenizer, name, prompt, new_tokens, bandwidth, loop=loop))
        del built
    if progress:
        progress(1.0, "Decode benchmarks done")
    return results


# -- synthetic models ----------------------------------------------------------------------------------------


def synthetic_model(
    config, dtype: torch.dtype = torch.bfloat16, device: str = "cuda", seed: int = 0
) -> nn.Module:
    """A model of `config`'s shape with random weights (std 0.02), built directly on `device`.

    For speed only: its outputs are meaningless. Raises NotEnoughMemoryError, with the numbers, when the
    weights would not fit in free memory.
    """
    from transformers import AutoModelForCausalLM

    parameters = count_parameters_from_config(config)
    needed = parameters * torch.finfo(dtype).bits / 8 * SYNTHETIC_HEADROOM
    free = free_memory_bytes(device)
    if needed > free:
        raise NotEnoughMemoryError(
            f"Random weights for this config ({parameters / 1e9:.2f} B parameters in "
            f"{DTYPE_NAMES.get(dtype, dtype)}) "
            f"need about {needed / 2**30:.1f} GiB, but only {free / 2**30:.1f} GiB is free on {device}. "
            "Pick a smaller config or a 16-bit dtype, or run on a larger device."
        )
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
