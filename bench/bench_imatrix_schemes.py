"""Importance-weighted rounding for our own schemes (engine.quant.weighted) on the default model: KL to the
reference without and with the importance matrix, and the seconds the whole-model rounding takes each way.

The importance matrix is collected once (engine.methods.imatrix) on calibration windows of the default
evaluation text's calibration half (DEFAULT_EVAL_SET, split="calibration", as the planner and the Methods lab
make them); KL(P_ref || P_quant) is scored on held-out windows of its evaluation half
(engine.evaluation.perplexity.evaluate_against_reference). Every linear but the head is rounded, as RTN does;
the times are of that rounding alone (the imatrix collection is timed once, apart).

Run: .venv/bin/python -m bench.bench_imatrix_schemes [--threads N] [--calib 4x256] [--eval 2x256]
     [--formats "int4 g32" "int3 g32" nf4 mxfp4 nvfp4]
(prints a markdown table, with the load average: other jobs on the machine slow every row).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time

import torch

from engine.evaluation.evalset import DEFAULT_EVAL_SET
from engine.evaluation.perplexity import ReferenceCache, evaluate_against_reference
from engine.methods.imatrix import collect_importance
from engine.methods.rtn import weighted_linear
from engine.models.data import WindowSpec, load_text, token_windows
from engine.models.loading import load_model
from engine.models.sources import ModelSource
from engine.quant.linear import fake_quant_linear, replace_linears
from engine.quant.schemes import parse_label

FORMATS = ("int4 g32", "int3 g32", "nf4 g64", "mxfp4", "nvfp4")


def windows(text: str) -> tuple[int, int]:
    count, _, window = text.partition("x")
    return int(count), int(window)


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def rounded(model, make) -> tuple[torch.nn.Module, float]:
    """A copy of `model` with every linear but the head replaced by `make(linear, name)`, and the seconds the
    replacing took."""
    copied = copy.deepcopy(model)
    start = time.perf_counter()
    replace_linears(copied, make)
    return copied, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--calib", default="4x256", help="calibration windows, COUNTxTOKENS")
    parser.add_argument("--eval", default="2x256", help="held-out evaluation windows, COUNTxTOKENS")
    parser.add_argument("--formats", nargs="*", default=list(FORMATS), help="scheme labels")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(ModelSource())
    model = loaded.model
    text = load_text(DEFAULT_EVAL_SET.corpus)
    count, window = windows(args.calib)
    calib = token_windows(loaded.tokenizer, text, WindowSpec(window, count, split="calibration"))
    count, window = windows(args.eval)
    held_out = token_windows(loaded.tokenizer, text, WindowSpec(window, count, split="evaluation"))
    start = time.perf_counter()
    matrix = collect_importance(model, calib)
    collect_seconds = time.perf_counter() - start
    cache = ReferenceCache()

    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    print(
        f"imatrix: {args.calib} calibration tokens ({DEFAULT_EVAL_SET.corpus}, calibration half), collected "
        f"in {collect_seconds:.1f} s; KL on {args.eval} held-out tokens (evaluation half)\n"
    )
    print("| format | KL plain | KL imatrix | change | s plain | s imatrix | load |")
    print("|---|---|---|---|---|---|---|")
    for label in args.formats:
        scheme = parse_label(label)
        plain, plain_s = rounded(model, lambda linear, name, s=scheme: fake_quant_linear(linear, s))
        plain_kl = evaluate_against_reference(model, plain, held_out, cache).agreement.mean_kl
        del plain
        weighted, weighted_s = rounded(
            model, lambda linear, name, s=scheme: weighted_linear(linear, s, None, matrix[name])
        )
        weighted_kl = evaluate_against_reference(model, weighted, held_out, cache).agreement.mean_kl
        del weighted
        change = 100 * (weighted_kl / plain_kl - 1)
        print(
            f"| {label} | {plain_kl:.4f} | {weighted_kl:.4f} | {change:+.0f}% | {plain_s:.1f} | "
            f"{weighted_s:.1f} | {load():.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
