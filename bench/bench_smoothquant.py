"""SmoothQuant, LLM.int8() and bitsandbytes NF4 on the default model: time to quantize and perplexity.

Target (2-core CPU): SmoothQuant calibration (16 x 256 tokens of the Britannica calibration half) plus
W8A8 < 1 min. Every method is timed through `quantize_model` (deep copy included) and evaluated on the
same windows of the evaluation half (4 x 512 by default), next to the unquantized reference and naive
W8A8 (RTN: per-channel int8 weights, per-token int8 activations).

Run: .venv/bin/python -m bench.bench_smoothquant [--calib 16] [--eval-windows 4] [--window 512]
[--threads N] (prints a markdown table for docs/benchmarks.md). The load average is printed before and
after because other processes on two cores change every timing here.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from engine.evaluation.perplexity import perplexity
from engine.methods.bnb import BnbConfig
from engine.methods.llm_int8 import LLMInt8Config
from engine.methods.registry import quantize_model
from engine.methods.rtn import RTNConfig
from engine.methods.smoothquant import SmoothQuantConfig
from engine.models.data import WindowSpec, load_text, token_windows
from engine.models.loading import load_model
from engine.models.sources import ModelSource
from engine.quant.schemes import QuantScheme


def load_average() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calib", type=int, default=16, help="calibration windows of 256 tokens")
    parser.add_argument("--eval-windows", type=int, default=4)
    parser.add_argument("--window", type=int, default=512, help="tokens per evaluation window")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(ModelSource())
    text = load_text("britannica")
    calib = token_windows(loaded.tokenizer, text, WindowSpec(256, args.calib))
    windows = token_windows(
        loaded.tokenizer, text, WindowSpec(args.window, args.eval_windows, split="evaluation")
    )
    print(
        f"# SmoothQuant / LLM.int8() / bitsandbytes: {loaded.source.label}, calibration {calib.shape[0]} × "
        f"{calib.shape[1]} tokens, evaluation {windows.shape[0]} × {windows.shape[1]} tokens (Britannica)\n\n"
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average before: {load_average()}\n"
    )
    reference = perplexity(loaded.model, windows)
    rows = [("reference (float32)", "32", "-", reference.perplexity, reference.seconds, "")]
    methods = [
        ("naive W8A8 (RTN)", RTNConfig(QuantScheme(8), QuantScheme(8)), None),
        ("SmoothQuant W8A8 α=0.5", SmoothQuantConfig(0.5), calib),
        ("LLM.int8() t=6", LLMInt8Config(6.0), calib),
        ("LLM.int8() t=∞ (vector-wise only)", LLMInt8Config(float("inf")), None),
        ("bitsandbytes int8", BnbConfig("int8"), None),
        ("bitsandbytes nf4", BnbConfig("nf4"), None),
        ("RTN nf4 g64 fp32 scales (ours)", RTNConfig(QuantScheme.from_label("nf4 g64 scale_fp32")), None),
    ]
    for label, config, data in methods:
        start = time.perf_counter()
        result = quantize_model(loaded.model, config, calib=data)
        seconds = time.perf_counter() - start
        evaluated = perplexity(result.model, windows)
        note = ""
        if isinstance(config, LLMInt8Config) and data is not None:
            kept = sum(len(r.detail.outlier_dims) for r in result.layers)
            readers = [r for r in result.layers if r.name.endswith(("q_proj", "gate_proj"))]
            with_247 = sum(247 in r.detail.outlier_dims for r in readers)
            note = (
                f"{kept} kept (layer, dim) pairs; dim 247 kept at {with_247}/{len(readers)} residual readers"
            )
        if isinstance(config, SmoothQuantConfig):
            errors = [r.output_error for r in result.layers if r.output_error is not None]
            note = f"mean layer output error {sum(errors) / len(errors):.4f}"
        rows.append(
            (
                label,
                f"{result.bits_per_weight:.3f}",
                f"{seconds:.1f}",
                evaluated.perplexity,
                evaluated.seconds,
                note,
            )
        )
        del result
        print(f"  done: {label} ({seconds:.1f} s)", flush=True)

    print(
        "\n| method | bits/weight | quantize (s) | perplexity | vs reference | eval (s) | notes |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
    )
    for label, bits, seconds, ppl, eval_seconds, note in rows:
        change = ppl / reference.perplexity - 1
        print(f"| {label} | {bits} | {seconds} | {ppl:.3f} | {change:+.2%} | {eval_seconds:.1f} | {note} |")
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
