"""Measured memory, to hold the estimate to account.

Two measurements: the real bytes of a loaded model's parameters and buffers (`engine.sizing.estimate.measured_bytes`,
not `get_memory_footprint()`, which misreports some quantized backends), and on CUDA the allocator's peak
while prefilling a context and decoding a few tokens. The peak excludes the CUDA context itself (the
allocator does not see it), so it is compared with the estimate minus its overhead line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from engine.runtime.greedy import argmax_token, greedy_loop
from engine.sizing.estimate import MemoryBreakdown, estimate, measured_bytes

DTYPE_PRESETS = {torch.float32: "fp32", torch.float16: "bf16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class Comparison:
    component: str
    estimated: float  # bytes
    measured: float  # bytes

    @property
    def difference(self) -> float:
        """(estimated - measured) / measured; positive when we over-estimate."""
        return (self.estimated - self.measured) / self.measured if self.measured else float("nan")


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def weights_vs_real_bytes(model: torch.nn.Module) -> Comparison:
    """The config-only weight estimate at the model's dtype against the real bytes it holds."""
    preset = DTYPE_PRESETS.get(model_dtype(model))
    if preset is None:
        raise ValueError(f"no weight preset for dtype {model_dtype(model)}; quantized models carry their own")
    breakdown = estimate(model.config, preset, context=1, overhead=0)
    return Comparison("weights", breakdown.weights.total, float(sum(measured_bytes(model).values())))


@dataclass(frozen=True)
class PeakMeasurement:
    device: str
    context: int  # prompt tokens prefilled
    new_tokens: int  # tokens decoded after the prompt
    batch: int
    resident_bytes: int  # allocated before the run: the weights
    peak_bytes: int  # allocator peak during prefill + decode
    seconds: float


def measure_generation_peak(
    model: torch.nn.Module, context: int, new_tokens: int = 8, batch: int = 1
) -> PeakMeasurement:
    """Prefill `context` random tokens and decode `new_tokens` greedily; CUDA only (allocator statistics)."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ValueError("a measured peak needs a CUDA device; on CPU the page compares real parameter bytes")
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, vocab, (batch, context), generator=generator).to(device)  # (batch, tokens)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    resident = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values  # transformers' dynamic cache, grown in place by each step

        def step(token: torch.Tensor) -> torch.Tensor:  # (batch, 1) -> (batch, 1)
            logits = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
            return argmax_token(logits)

        greedy_loop(step, argmax_token(out.logits), new_tokens + 1)  # the prefill's token + new_tokens steps
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return PeakMeasurement(
        str(device), context, new_tokens, batch, resident, peak, time.perf_counter() - start
    )


def peak_vs_estimate(
    model: torch.nn.Module, measurement: PeakMeasurement
) -> tuple[MemoryBreakdown, Comparison]:
    dtype = model_dtype(model)
    breakdown = estimate(
        model.config,
        DTYPE_PRESETS.get(dtype, "bf16"),
        "fp32" if dtype == torch.float32 else "fp16",
        context=measurement.context + measurement.new_tokens,
        batch=measurement.batch,
        activation_bytes=dtype.itemsize,
        overhead=0,
    )
    return breakdown, Comparison("peak (weights + KV + activations)", breakdown.total, measurement.peak_bytes)
