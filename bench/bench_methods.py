"""Quantization methods on the default model: time to quantize and perplexity afterwards.

Targets (issue 5, 2-core CPU): RTN whole model < 3 s; GPTQ 4-bit with 32 x 512-token calibration samples
< 4 min; AWQ < 4 min. SmolLM2-135M's widths (576, 1536) are not multiples of 128, so groups are 64.
Calibration windows come from the first half of the offline Britannica text, evaluation windows from the
second half (engine.models.data), so no token is both.

Run: .venv/bin/python -m bench.bench_methods [--threads N] [--calib 32x512] [--eval 4x512]
(prints a markdown table for docs/benchmarks.md, with the load average: other jobs on the machine slow
every row, and GPTQ's column loop runs on one thread whatever --threads says).
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

import engine.methods.awq  # noqa: F401  (registers AWQConfig)
import engine.methods.gptq  # noqa: F401  (registers GPTQConfig)
from engine.evaluation.perplexity import perplexity
from engine.methods.awq import AWQConfig
from engine.methods.gptq import GPTQConfig
from engine.methods.registry import quantize_model
from engine.methods.rtn import RTNConfig
from engine.models.data import WindowSpec, load_text, token_windows
from engine.models.loading import load_model
from engine.models.sources import ModelSource
from engine.quant.schemes import QuantScheme

TARGETS = {"RTN": 3.0, "GPTQ": 240.0, "AWQ": 240.0}


def windows(text: str) -> tuple[int, int]:
    count, _, window = text.partition("x")
    return int(count), int(window)


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--calib", default="32x512", help="calibration windows, COUNTxTOKENS")
    parser.add_argument("--eval", default="4x512", help="evaluation windows, COUNTxTOKENS")
    parser.add_argument("--group", type=int, default=64, help="group size (576 is not a multiple of 128)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["GPTQ", "AWQ"], help="methods to skip")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(ModelSource())
    text = load_text("britannica")
    count, window = windows(args.calib)
    calibration = token_windows(loaded.tokenizer, text, WindowSpec(window=window, count=count))
    count, window = windows(args.eval)
    evaluation = token_windows(
        loaded.tokenizer, text, WindowSpec(window=window, count=count, split="evaluation")
    )
    start_load = load()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads, load average {start_load:.2f} at start\n"
        f"model: {loaded.source.label} ({loaded.dtype}); "
        f"calibration {tuple(calibration.shape)} tokens, evaluation {tuple(evaluation.shape)} tokens\n"
    )
    sym = QuantScheme(4, "int", True, "group", args.group)
    asym = QuantScheme(4, "int", False, "group", args.group)
    runs = [
        ("RTN", RTNConfig(sym), None),
        ("RTN", RTNConfig(asym), None),
        ("GPTQ", GPTQConfig(sym), calibration),
        ("AWQ", AWQConfig(asym), calibration),
    ]
    reference = perplexity(loaded.model, evaluation)
    rows = [("reference (float32)", "-", 32.0, None, reference.perplexity, reference.seconds, None)]
    for method, config, calib in runs:
        if method in args.skip:
            continue
        before = load()
        result = quantize_model(loaded.model, config, calib)
        ppl = perplexity(result.model, evaluation)
        average_load = (before + load()) / 2
        rows.append(
            (method, config.weights.label, result.bits_per_weight, result.seconds, ppl.perplexity, ppl.seconds,
             average_load)
        )  # fmt: skip
        del result
    print("| method | scheme | bits/weight | quantize (s) | target (s) | perplexity | eval (s) | load avg |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for method, scheme, bits, seconds, ppl, eval_seconds, average_load in rows:
        quantize = "-" if seconds is None else f"{seconds:.1f}"
        target = f"< {TARGETS[method]:.0f}" if method in TARGETS else "-"
        average = "-" if average_load is None else f"{average_load:.1f}"
        print(
            f"| {method} | {scheme} | {bits:.3f} | {quantize} | {target} | {ppl:.3f} | {eval_seconds:.1f} "
            f"| {average} |"
        )
    print(f"\nload average {start_load:.2f} at start, {load():.2f} at the end")


if __name__ == "__main__":
    main()
