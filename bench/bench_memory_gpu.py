"""GPU memory: the estimate (engine.sizing.estimate.estimate) against the CUDA allocator's measured peak while
prefilling a context and decoding 8 tokens, for catalog configs with random bf16 weights (no downloads).

The peak leaves out the CUDA context, which the allocator does not see, so the estimate is taken without
its overhead line (engine.sizing.measure.peak_vs_estimate). A positive difference is an over-estimate.

Run on a GPU: python -m bench.bench_memory_gpu [--configs qwen2.5-0.5b llama-3.2-1b llama-2-7b]
[--contexts 512 4096 16384] [--batch 1]. Without CUDA it says so and exits: there is nothing to measure.
"""

from __future__ import annotations

import argparse

import torch

from bench.bench_kernels import machine_line
from engine import speed
from engine.sizing.catalog import catalog_model
from engine.sizing.measure import measure_generation_peak, peak_vs_estimate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["qwen2.5-0.5b", "llama-3.2-1b", "llama-2-7b"])
    parser.add_argument("--contexts", nargs="+", type=int, default=[512, 4096, 16384])
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_memory_gpu needs CUDA: the allocator's peak is what it measures. Nothing was run.")
        return
    print(
        f"# GPU memory, estimate vs measured peak — `python -m bench.bench_memory_gpu`\n\n{machine_line('cuda')}\n"
    )
    print(
        "| config | context | batch | weights GiB (measured) | estimate GiB | measured peak GiB | difference |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for slug in args.configs:
        entry = catalog_model(slug)
        model = speed.synthetic_model(entry.config(), torch.bfloat16, "cuda")
        for context in args.contexts:
            try:
                measurement = measure_generation_peak(model, context, batch=args.batch)
            except torch.cuda.OutOfMemoryError:
                print(f"| {entry.name} | {context:,} | {args.batch} | – | – | out of memory | – |")
                torch.cuda.empty_cache()
                continue
            _, comparison = peak_vs_estimate(model, measurement)
            print(
                f"| {entry.name} | {context:,} | {args.batch} | {measurement.resident_bytes / 2**30:.2f} | "
                f"{comparison.estimated / 2**30:.2f} | {comparison.measured / 2**30:.2f} | "
                f"{100 * comparison.difference:+.1f}% |"
            )
        del model
        torch.cuda.empty_cache()
    print(f"\n{machine_line('cuda')} (after)")


if __name__ == "__main__":
    main()
