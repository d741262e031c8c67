"""Why quantized inference is not automatically faster: an idealised roofline for one linear layer.

Used by the Learn page (the Speed page will measure the real thing). Where we simplify: memory traffic
and tensor-core math overlap perfectly, dequantization runs on the vector units at DEQUANT_OPS_PER_WEIGHT
operations per weight, once per tile of DEQUANT_TILE_TOKENS tokens, and does not overlap the matrix
math. Real kernels land anywhere between.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.quant.schemes import QuantScheme, bits_per_weight

DEQUANT_OPS_PER_WEIGHT = 4  # unpack, convert to float, subtract the zero point, multiply by the scale
DEQUANT_TILE_TOKENS = 128  # a fused kernel dequantizes each weight once per tile of this many tokens


@dataclass(frozen=True)
class Accelerator:
    name: str
    matrix_flops: float  # dense fp16/bf16 FLOP/s on the matrix units (datasheet, no sparsity)
    vector_flops: float  # non-matrix fp32 FLOP/s, where dequantization runs
    bandwidth: float  # memory bytes/s

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) above which a kernel is compute-bound."""
        return self.matrix_flops / self.bandwidth


ACCELERATORS = {  # vendor datasheet peaks; real kernels reach 60-90% of them
    "NVIDIA H100 SXM": Accelerator("NVIDIA H100 SXM", 989e12, 67e12, 3.35e12),
    "NVIDIA A100 80GB SXM": Accelerator("NVIDIA A100 80GB SXM", 312e12, 19.5e12, 2.039e12),
    "NVIDIA RTX 4090": Accelerator("NVIDIA RTX 4090", 165e12, 82.6e12, 1.008e12),
}
# Weight-only formats (activations stay fp16): label -> weight scheme; None = fp16, nothing to dequantize.
WEIGHT_FORMATS = {
    "fp16": None,
    "int8 weights (per channel)": QuantScheme(8, "int", True, "channel"),
    "int4 weights (g128)": QuantScheme(4, "int", True, "group", 128),
}


@dataclass(frozen=True)
class LayerCost:
    tokens: int  # rows of the activation matrix: 1 = matrix-vector (decode), many = matrix-matrix
    flops: float  # 2 * tokens * in * out
    bytes: float  # weights (with scales) + fp16 inputs and outputs, each moved once
    dequant_ops: float  # vector operations spent turning codes back into fp16
    weight_bits: float  # per weight, scales included

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes


def layer_cost(in_features: int, out_features: int, tokens: int, scheme: QuantScheme | None) -> LayerCost:
    """FLOPs, bytes and dequantization work of y = x W^T for x (tokens, in) in fp16, W (out, in)."""
    if tokens < 1:
        raise ValueError(f"tokens must be at least 1 (got {tokens})")
    weights = in_features * out_features
    bits = 16.0 if scheme is None else bits_per_weight(scheme, in_features, out_features)
    activation_bytes = 2 * tokens * (in_features + out_features)
    passes = math.ceil(tokens / DEQUANT_TILE_TOKENS)
    dequant = 0.0 if scheme is None else float(weights * DEQUANT_OPS_PER_WEIGHT * passes)
    return LayerCost(tokens, 2.0 * tokens * weights, weights * bits / 8 + activation_bytes, dequant, bits)


@dataclass(frozen=True)
class LayerTime:
    seconds: float
    memory_seconds: float
    math_seconds: float  # matrix units plus dequantization
    bound: str  # "memory" or "compute"


def layer_time(cost: LayerCost, device: Accelerator) -> LayerTime:
    """Idealised roofline time (see the module docstring for what it assumes)."""
    memory = cost.bytes / device.bandwidth
    compute = cost.flops / device.matrix_flops + cost.dequant_ops / device.vector_flops
    return LayerTime(max(memory, compute), memory, compute, "memory" if memory >= compute else "compute")


@dataclass(frozen=True)
class SpeedLesson:
    device: Accelerator
    shape: tuple[int, int]  # (in_features, out_features)
    tokens: int
    sweep_tokens: list[int]
    times: dict[str, list[float]]  # format -> seconds at each sweep token count
    costs: dict[str, tuple[LayerCost, LayerCost]]  # format -> (at 1 token, at `tokens`)

    @property
    def takeaway(self) -> str:
        base1, q1 = (layer_time(self.costs[k][0], self.device) for k in ("fp16", "int4 weights (g128)"))
        base, q = (layer_time(self.costs[k][1], self.device) for k in ("fp16", "int4 weights (g128)"))
        line = (
            f"At 1 token this layer is {base1.bound}-bound (intensity {self.costs['fp16'][0].intensity:.2f} "
            f"FLOP/byte, ridge {self.device.ridge:.0f}): int4 weights are {base1.seconds / q1.seconds:.1f}x "
            f"faster in this model."
        )
        if self.tokens == 1:
            return line + " Raise the token count to see prefill turn compute-bound."
        speed = base.seconds / q.seconds
        if speed >= 1:
            verdict = f"int4 is still {speed:.2f}x faster"
        else:
            verdict = f"int4 is {1 / speed:.2f}x slower: dequantization costs more than the bytes it saves"
        return line + f" At {self.tokens:,} tokens it is {base.bound}-bound and {verdict}."


def speed_lesson(device: str, in_features: int, out_features: int, tokens: int) -> SpeedLesson:
    if device not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {device!r}; choose one of {', '.join(ACCELERATORS)}")
    spec = ACCELERATORS[device]
    sweep = [2**i for i in range(0, 14)]  # 1 .. 8192 tokens
    times = {
        label: [layer_time(layer_cost(in_features, out_features, t, scheme), spec).seconds for t in sweep]
        for label, scheme in WEIGHT_FORMATS.items()
    }
    costs = {
        label: (layer_cost(in_features, out_features, 1, s), layer_cost(in_features, out_features, tokens, s))
        for label, s in WEIGHT_FORMATS.items()
    }
    return SpeedLesson(spec, (in_features, out_features), tokens, sweep, times, costs)
