"""Super weights on the default model: the scan time, the ablation table and the protect table.

Issue 19's target (2-core CPU): the super-weight scan under 20 s. The ablation zeroes the top super-weight
candidates that make the massive activation vs as many random weights of the same magnitude vs the largest
`--top-k` other weights of the same tensors; protect rounds at coarse formats with and without the super
weights held out of the scales and kept unrounded. All are scored against the unchanged model on the
default held-out windows, with a short greedy generation.

Run: .venv/bin/python -m bench.bench_super_weights [--calib 2x128] [--eval 4x256] [--count 2] [--top-k 7000]
(prints markdown tables for docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from engine.analysis.super_weights import compare_ablations, find_super_weights, protect
from engine.evaluation.evalset import DEFAULT_EVAL_SET
from engine.evaluation.perplexity import ReferenceCache
from engine.models.data import WindowSpec, load_text, token_windows
from engine.models.loading import load_model
from engine.models.sources import ModelSource
from engine.quant.schemes import QuantScheme

PROTECT = (  # (format, every linear?): per-tensor on the tensor holding them, per-channel everywhere
    (QuantScheme(4, "int", granularity="tensor"), False),
    (QuantScheme(3, "int", granularity="tensor"), False),
    (QuantScheme(4, "int", granularity="channel"), True),
)


def windows(text: str) -> tuple[int, int]:
    count, _, window = text.partition("x")
    return int(count), int(window)


def one_line(text: str | None) -> str:
    return "—" if text is None else repr(text.strip().replace("\n", " ⏎ "))[1:-1].replace("|", "\\|")


def print_table(table) -> None:
    print("| variant | weights | perplexity | mean KL | same top-1 | generation |")
    print("|---|---:|---:|---:|---:|---|")
    print(
        f"| unchanged model | 0 | {table.reference_perplexity:.2f} | 0 | 100% | {one_line(table.reference_generation)} |"
    )
    for row in table.rows:
        print(
            f"| {row.label} | {row.weights:,} | {row.perplexity:,.2f} | {row.mean_kl:.4f} | "
            f"{row.top1_agreement:.1%} | {one_line(row.generation)} |"
        )
    print(f"\nprompt {table.prompt!r}, {table.seconds:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calib", default="2x128")
    parser.add_argument("--eval", default=f"{DEFAULT_EVAL_SET.windows}x{DEFAULT_EVAL_SET.window}")
    parser.add_argument("--count", type=int, default=2, help="how many top candidates to zero / protect")
    parser.add_argument("--top-k", type=int, default=7000)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    loaded = load_model(ModelSource())
    model, tokenizer, text = loaded.model, loaded.tokenizer, load_text(DEFAULT_EVAL_SET.corpus)
    count, size = windows(args.calib)
    calib = token_windows(tokenizer, text, WindowSpec(size, count, split="calibration"))
    count, size = windows(args.eval)
    held_out = token_windows(tokenizer, text, WindowSpec(size, count, split="evaluation"))
    find_super_weights(model, calib[:1, :16])  # warm-up: the first forward of a process is slow
    start = time.perf_counter()
    candidates = find_super_weights(model, calib)
    seconds = time.perf_counter() - start
    print(
        f"\nSuper-weight scan over {args.calib} calibration tokens: {seconds:.1f} s "
        f"(load average {os.getloadavg()[0]:.1f})\n"
    )
    print(
        "| layer | tensor | (row, column) | weight | rank | × RMS | input x_j | output y_i | W·x | residual before → after | position |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for c in candidates:
        print(
            f"| {c.layer} | {c.coordinate.name.rsplit('.', 2)[-2]}.{c.coordinate.name.rsplit('.', 1)[-1]} | "
            f"({c.coordinate.row}, {c.coordinate.column}) | {c.weight:.3f} | {c.rank:,} | {c.weight_to_rms:.0f} | "
            f"{c.input_value:,.0f} | {c.output_value:,.0f} | {c.contribution:,.0f} | "
            f"{c.residual_before:,.0f} → {c.residual_after:,.0f} | {c.position} |"
        )
    makers = [c.coordinate for c in candidates[: args.count]]
    cache = ReferenceCache()
    print(f"\nAblation on {args.eval} held-out tokens, zeroing {[(m.row, m.column) for m in makers]}:\n")
    print_table(
        compare_ablations(model, makers, held_out, tokenizer, top_k=args.top_k, reference_cache=cache)
    )
    for scheme, everywhere in PROTECT:
        print(f"\nProtect, {scheme.label}:\n")
        print_table(protect(model, scheme, makers, held_out, everywhere, tokenizer, reference_cache=cache))


if __name__ == "__main__":
    main()
