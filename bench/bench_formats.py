"""How long quantizing the whole default model takes in each of today's formats (issue 17), on this machine.

For each format: the seconds `quantize_model` takes to fake-quantize every linear layer of SmolLM2-135M
(210 tensors, 106 M weights), the best of `--repeats` runs, beside int4 g32 RTN in the same run (the ratio is
what to compare across machines), and the bits per weight the model comes out at. The issue's targets:
MXFP4 and NVFP4 under 2 s, any k-quant under 10 s, on the 2-core machine.

Run: .venv/bin/python -m bench.bench_formats [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from engine.methods import GGUFConfig, RTNConfig, quantize_model
from engine.models.loading import load_model
from engine.models.sources import ModelSource
from engine.quant.gguf import Q2_K, Q3_K, Q4_0, Q4_K, Q5_K, Q6_K, Q8_0
from engine.quant.schemes import parse_label

FORMATS = {
    "int4 g32 (RTN, the baseline)": RTNConfig(parse_label("int4 g32")),
    "MXFP4": RTNConfig(parse_label("mxfp4")),
    "NVFP4": RTNConfig(parse_label("nvfp4")),
    "MXFP8 (e4m3)": RTNConfig(parse_label("mxfp8_e4m3")),
    "Q4_0": GGUFConfig(Q4_0),
    "Q8_0": GGUFConfig(Q8_0),
    "Q2_K": GGUFConfig(Q2_K),
    "Q3_K": GGUFConfig(Q3_K),
    "Q4_K": GGUFConfig(Q4_K),
    "Q5_K": GGUFConfig(Q5_K),
    "Q6_K": GGUFConfig(Q6_K),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(ModelSource()).model
    rows = []
    for name, config in FORMATS.items():
        best, bits = float("inf"), None
        for _ in range(args.repeats):
            start = time.perf_counter()
            quantized = quantize_model(model, config)
            best = min(best, time.perf_counter() - start)
            bits = quantized.bits_per_weight
            del quantized
        rows.append((name, best, bits))
    base = rows[0][1]
    print(f"torch threads: {args.threads}; best of {args.repeats}")
    print("| format | seconds | × int4 g32 RTN | bits per weight |")
    print("|---|---:|---:|---:|")
    for name, seconds, bits in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / base:.2f} | {bits:.4f} |")


if __name__ == "__main__":
    main()
