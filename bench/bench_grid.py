"""The Evaluate page's grids on the default model: quick (7 cells) and full (12 cells), RTN.

Targets (2-core CPU, issue 6): the full grid with 8 windows x 512 tokens < 10 min; the quick grid < 2 min
(at the page's default of 4 windows x 256 tokens). Prints a markdown table of every cell for
docs/benchmarks.md, with the load average, since other processes on two cores change every number.

Run: .venv/bin/python -m bench.bench_grid [--quick-only] [--windows 8] [--window 512]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from engine.evaluation.study import FULL_GRID, QUICK_GRID, run_grid
from engine.models.data import WindowSpec, load_text, token_windows
from engine.models.loading import load_model
from engine.models.sources import ModelSource


def table(results) -> str:
    lines = [
        "| cell | perplexity | Δ | mean KL | max KL | top-1 | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    first = next(iter(results.values()))
    lines.append(f"| reference | {first.reference_perplexity:.3f} | | | | | |")
    for r in results.values():
        lines.append(
            f"| {r.cell} | {r.perplexity:,.3f} | {r.relative_change:+.2%} | {r.mean_kl:.4f} | {r.max_kl:.2f} | "
            f"{r.top1_agreement:.1%} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)


def timed_grid(model, ids, cells) -> tuple[float, dict]:
    start = time.perf_counter()
    results = run_grid(model, ids, cells)
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--quick-only", action="store_true")
    args = parser.parse_args()
    loaded = load_model(ModelSource())
    text = load_text("britannica")
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} "
        "threads, load average before: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()) + "\n"
    )
    quick_ids = token_windows(loaded.tokenizer, text, WindowSpec(256, 4, split="evaluation"))
    seconds, results = timed_grid(loaded.model, quick_ids, QUICK_GRID)
    print(f"### Quick grid, 4 x 256 tokens: {seconds:.1f} s (target < 120 s)\n\n{table(results)}\n")
    if args.quick_only:
        return
    ids = token_windows(loaded.tokenizer, text, WindowSpec(args.window, args.windows, split="evaluation"))
    seconds, results = timed_grid(loaded.model, ids, FULL_GRID)
    print(
        f"### Full grid, {ids.shape[0]} x {ids.shape[1]} tokens: {seconds:.1f} s (target < 600 s)\n\n"
        f"{table(results)}\n\nload average after: " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
    )


if __name__ == "__main__":
    main()
