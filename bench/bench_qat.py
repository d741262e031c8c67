"""Quantization-aware training on the default model: held-out loss of float, PTQ and QAT, and time per step.

SmolLM2-135M at int3 asym g64 (576 is not a multiple of 128). QAT trains on calibration windows (the
first half of the offline Britannica text) and is measured on evaluation windows (the second half), so
no held-out token was trained on. PTQ is QAT at step 0; the RTN row quantizes the same scheme through
`RTNConfig` as a cross-check (its perplexity must equal PTQ's). Training runs on one thread whatever
--threads says (engine.methods.qat); --threads sets the evaluation forwards.

Run: .venv/bin/python -m bench.bench_qat [--steps 4 10 20] [--lr 3e-4] [--calib 8x256] [--eval 4x256]
(prints a markdown table for docs/benchmarks.md, with the load average: other jobs on the machine slow
every row).
"""

from __future__ import annotations

import argparse
import math
import os
import platform

import torch

from bench.bench_methods import load, windows
from engine.evaluation.perplexity import perplexity
from engine.methods import QATConfig, RTNConfig, quantize_model
from engine.methods.qat import qat_trace
from engine.models.data import WindowSpec, load_text, token_windows
from engine.models.loading import load_model
from engine.models.sources import ModelSource
from engine.quant.schemes import QuantScheme


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads for evaluation forwards")
    parser.add_argument("--steps", type=int, nargs="+", default=[10], help="QAT step counts, one run each")
    parser.add_argument(
        "--lr", type=float, nargs="+", default=[3e-4], help="peak learning rates, one run each"
    )
    parser.add_argument("--batch", type=int, default=1, help="calibration windows per step")
    parser.add_argument("--calib", default="8x256", help="training windows, COUNTxTOKENS")
    parser.add_argument("--eval", default="4x256", help="held-out windows, COUNTxTOKENS")
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--group", type=int, default=64, help="group size (576 is not a multiple of 128)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(ModelSource())
    text = load_text("britannica")
    count, window = windows(args.calib)
    train = token_windows(loaded.tokenizer, text, WindowSpec(window=window, count=count))
    count, window = windows(args.eval)
    held_out = token_windows(
        loaded.tokenizer, text, WindowSpec(window=window, count=count, split="evaluation")
    )
    scheme = QuantScheme(args.bits, "int", False, "group", args.group)
    start_load = load()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, evaluation on {torch.get_num_threads()} threads, training on 1; load average "
        f"{start_load:.2f} at start\nmodel: {loaded.source.label} ({loaded.dtype}); {scheme.label}; training "
        f"{tuple(train.shape)} tokens, {args.batch} window(s) a step; held-out {tuple(held_out.shape)} tokens\n"
    )
    rtn = perplexity(quantize_model(loaded.model, RTNConfig(scheme)).model, held_out)
    rows = []
    float_row = ptq_row = None
    for steps in args.steps:
        for lr in args.lr:
            before = load()
            result = quantize_model(loaded.model, QATConfig(scheme, steps, lr, args.batch), (train, held_out))
            trace = qat_trace(result.layers)
            changed = sum(r.detail.moved for r in result.layers) / len(result.layers)
            float_row = ("float (reference)", "-", trace.float_loss, None, None, None, None)
            ptq_row = ("PTQ (QAT at step 0)", "-", trace.ptq_loss, None, None, None, None)
            rows.append(
                (f"QAT {steps} steps", f"{lr:g}", trace.qat_loss, trace.recovered, changed,
                 trace.seconds_per_step, (result.seconds, (before + load()) / 2))
            )  # fmt: skip
            del result
    print(
        "| model | lr | held-out loss (nats) | perplexity | recovered | weights moved a level | s/step | total (s) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rtn_row = ("RTN (same scheme, RTNConfig)", "-", rtn.mean_nll, None, None, None, None)
    for name, lr, loss, recovered, changed, per_step, total in [float_row, ptq_row, rtn_row, *rows]:
        cells = [
            name,
            lr,
            f"{loss:.3f}",
            f"{math.exp(loss):.2f}",
            "-" if recovered is None else f"{recovered:.0%}",
            "-" if changed is None else f"{changed:.2%}",
            "-" if per_step is None else f"{per_step:.1f}",
            "-" if total is None else f"{total[0]:.0f} (load {total[1]:.1f})",
        ]
        print("| " + " | ".join(cells) + " |")
    print(f"\nload average {start_load:.2f} at start, {load():.2f} at the end")


if __name__ == "__main__":
    main()
