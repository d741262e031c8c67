"""Quantization core speed: a whole 135M model's linear weights, a ~30-scheme table, prior-grid detection.

Targets (2-core CPU): fake-quantizing every linear weight of a SmolLM2-135M-shaped model (30 layers of
q/k/v/o/gate/up/down, random float32) with any int / NF4 scheme < 2 s; a table of ~30 schemes x (MSE,
SQNR, bits/weight) for one 1536x576 tensor < 1 s; prior-grid detection of a 1536x576 tensor < ~50 ms.

Run: .venv/bin/python -m bench.bench_quantize [--threads N] [--repeats R]
(prints markdown tables for docs/benchmarks.md). "cold" is the first pass in a fresh process (page
faults for fresh output buffers dominate), "warm" the best of the following passes.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from engine.analysis.priorgrid import detect_prior_grid
from engine.quant.metrics import error_summary
from engine.quant.primitives import fake_quantize, quantize
from engine.quant.schemes import QuantScheme, bits_per_weight

LAYERS = 30
LAYER_SHAPES = {  # SmolLM2-135M: hidden 576, 9 heads / 3 kv heads of 64, intermediate 1536
    "q": (576, 576),
    "k": (192, 576),
    "v": (192, 576),
    "o": (576, 576),
    "gate": (1536, 576),
    "up": (1536, 576),
    "down": (576, 1536),
}
MODEL_SCHEMES = [
    "int8 channel",
    "int4 g64",
    "int4 asym g64",
    "int4 asym g32",
    "int4 asym g192",
    "int3 asym g64",
    "nf4 g64",
    "nf4 g64 scale_fp32 dq",
    "fp4 g64",
    "fp8_e4m3 channel",
]
TABLE_SCHEMES = [
    "int8 tensor",
    "int8 channel",
    "int8 asym channel",
    "int8 g64",
    "int6 channel",
    "int6 g64",
    "int5 g64",
    "int4 tensor",
    "int4 channel",
    "int4 asym channel",
    "int4 g192",
    "int4 asym g192",
    "int4 g96",
    "int4 g64",
    "int4 asym g64",
    "int4 g32",
    "int4 asym g32",
    "int4 g64 clip0.9",
    "int4 asym g64 dq",
    "int3 g64",
    "int3 asym g64",
    "int3 asym g32",
    "int2 asym g64",
    "int2 asym g32",
    "nf4 channel",
    "nf4 g64",
    "nf4 g64 scale_fp32",
    "nf4 g64 scale_fp32 dq",
    "nf4 g32",
    "fp4 g64",
    "fp8_e4m3 channel",
    "fp8_e5m2 channel",
]


def model_weights(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) * 0.02 for _ in range(LAYERS) for shape in LAYER_SHAPES.values()]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_model(weights: list[torch.Tensor], repeats: int) -> list[tuple[str, float, float]]:
    rows = []
    for label in MODEL_SCHEMES:
        scheme = QuantScheme.from_label(label)

        def run(scheme=scheme):
            for w in weights:
                fake_quantize(w, scheme)

        cold = timed(run)
        warm = min(timed(run) for _ in range(repeats))
        rows.append((label, cold, warm))
    return rows


def scheme_table(x: torch.Tensor) -> list[dict]:
    rows = []
    for label in TABLE_SCHEMES:
        scheme = QuantScheme.from_label(label)
        row = {"scheme": label, "bits/weight": bits_per_weight(scheme, x.shape[-1], x.shape[0])}
        row.update(error_summary(x, fake_quantize(x, scheme)))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, load average {load:.2f}\n"
    )

    weights = model_weights()
    n_weights = sum(w.numel() for w in weights)
    rows = bench_model(weights, args.repeats)
    print(
        f"### Fake-quantize every linear weight of a 135M model ({n_weights / 1e6:.1f} M weights, float32)\n"
    )
    print("| scheme | cold (s) | warm (s) | M weights/s (warm) |\n| --- | ---: | ---: | ---: |")
    for label, cold, warm in rows:
        print(f"| {label} | {cold:.2f} | {warm:.2f} | {n_weights / warm / 1e6:.0f} |")
    nf4 = QuantScheme.from_label("nf4 g64")
    codes = min(timed(lambda ws=weights: [quantize(w, nf4) for w in ws]) for _ in range(args.repeats))
    print(f"\nquantize() to codes (nf4 g64, codes + scales kept): {codes:.2f} s warm")
    del weights

    x = torch.randn(1536, 576, generator=torch.Generator().manual_seed(1)) * 0.02
    scheme_table(x)  # warm-up
    seconds = min(timed(lambda: scheme_table(x)) for _ in range(args.repeats))
    table = scheme_table(x)
    print(f"\n### {len(table)} schemes x (MSE, SQNR, bits/weight) for one 1536x576 tensor: {seconds:.2f} s\n")
    print("| scheme | bits/weight | SQNR (dB) | MSE | max abs err |\n| --- | ---: | ---: | ---: | ---: |")
    for row in table:
        print(
            f"| {row['scheme']} | {row['bits/weight']:.3f} | {row['sqnr_db']:.2f} | {row['mse']:.3e} "
            f"| {row['max_abs_err']:.2e} |"
        )

    quantized = fake_quantize(x, QuantScheme.from_label("int4 asym g32"))
    print(
        "\n### Prior-grid detection, 1536x576\n\n| tensor | best of 5 (ms) | result |\n| --- | ---: | --- |"
    )
    for name, tensor in (("gaussian float32", x), ("int4 asym g32 fake-quantized", quantized)):
        detect_prior_grid(tensor)
        best = min(timed(lambda t=tensor: detect_prior_grid(t)) for _ in range(5))
        print(f"| {name} | {best * 1000:.1f} | {detect_prior_grid(tensor).description} |")


if __name__ == "__main__":
    main()
