"""What a packed linear's forward costs beyond its kernel, on this machine (issue 16).

For each CPU layout (W4A16 cpu_int4pack, W8A16 int8_rows, W8A8 int8_rows) and activation dtype, at batch
1 on SmolLM2-135M's and Llama-2-7B's q_proj shapes: the median time of the bare aten op on arguments
prepared beforehand (the kernel), of `QuantLinear.forward` (the call a model pays), and the difference
(the overhead: Python, casts, reshapes, dispatch). Also the aten ops one forward launches. The two are
timed interleaved, call by call, so load drift hits both alike.

Run: .venv/bin/python -m bench.bench_call_overhead [--repeats 2000] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from engine.kernels.linear import QuantLinear
from engine.quant.schemes import QuantScheme

SHAPES = ((576, 576), (4096, 4096))  # SmolLM2-135M q_proj, Llama-2-7B q_proj
FORMATS = {
    "W4A16": (QuantScheme(4, "int", False, "group", 32), None),
    "W8A16": (QuantScheme(8, "int", True, "channel"), None),
    "W8A8": (
        QuantScheme(8, "int", True, "channel"),
        QuantScheme(8, "int", True, "channel", scale_dtype="float32"),
    ),
}


def bare_kernel(layer: QuantLinear, x: torch.Tensor):
    """The aten op the layer's kernel ends in, on arguments prepared outside the timed call."""
    if layer.layout == "cpu_int4pack":
        xb = x.to(layer.scales_and_zeros.dtype)
        sz, packed, group = layer.scales_and_zeros, layer.qweight, layer.group_size
        return lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, group, sz)
    if layer.fmt == "W8A16":
        scales = layer.scales
        xb = x.to(scales.dtype)
        return lambda: torch.ops.aten._weight_int8pack_mm(xb, layer.qweight, scales)
    codes = torch.randint(-127, 128, x.shape, dtype=torch.int8)
    weight_t = layer.qweight.t()
    return lambda: torch._int_mm(codes, weight_t)


def interleaved(calls, repeats: int) -> list[float]:
    samples = [[] for _ in calls]
    for _ in range(20):
        for call in calls:
            call()
    for _ in range(repeats):
        for index, call in enumerate(calls):
            start = time.perf_counter()
            call()
            samples[index].append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


def launches(layer: nn.Module, x: torch.Tensor) -> int:
    """Aten ops one forward launches (views left out), counted by engine.speed.ops."""
    from engine.speed.ops import count_ops

    return count_ops(lambda: layer(x)).launches


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), median of {args.repeats} calls")
    print("\n| format | shape | activations | launches | kernel µs | forward µs | overhead µs |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for out_f, in_f in SHAPES:
        linear = nn.Linear(in_f, out_f, bias=False)
        for name, (weights, acts) in FORMATS.items():
            layer = QuantLinear.from_linear(linear, weights, acts)
            for dtype in (torch.bfloat16, torch.float32):
                x = torch.randn(1, in_f).to(dtype)
                kernel, forward = interleaved(
                    [bare_kernel(layer, x), lambda m=layer, x=x: m(x)], args.repeats
                )
                print(
                    f"| {name} | {out_f}×{in_f} | {str(dtype)[6:]} | {launches(layer, x)} | "
                    f"{kernel * 1e6:.1f} | {forward * 1e6:.1f} | {(forward - kernel) * 1e6:.1f} |"
                )


if __name__ == "__main__":
    main()
