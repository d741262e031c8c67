"""Perplexity and KV-cache quantization speed on the default model, and the numbers they give.

Target (2-core CPU): perplexity over 16 windows of 512 tokens of the Britannica evaluation half < 45 s.

Run: .venv/bin/python -m bench.bench_evaluate [--windows 16] [--window 512] [--kv "int4 asym channel"]
[--no-compare] (prints a markdown table for docs/benchmarks.md). Rows:
- perplexity: one forward per window at batch 1, NLL summed over every token, divided once;
- the same with the KV cache quantized (`--kv`, per-token keys and values), and its cache bytes for one
  window against a 16-bit cache;
- unless --no-compare: `evaluate_against_reference` with the KV-quantized model as candidate, first
  filling a ReferenceCache (reference + candidate forwards), then reusing it (candidate forwards plus
  the reference's head on cached hidden states).
Extra RAM is the peak resident set size during the step minus the size just before it. The machine's
load average is printed because other processes on two cores change every number here.
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

from bench.bench_stats import PeakRss, timed
from engine.evaluation.perplexity import ReferenceCache, evaluate_against_reference, perplexity
from engine.models.data import WindowSpec, load_text, token_windows
from engine.models.loading import load_model
from engine.models.sources import ModelSource
from engine.quant.schemes import QuantScheme
from engine.runtime.kv_cache import make_kv_cache


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--kv", default="int4 asym channel", help="KV scheme label")
    parser.add_argument("--no-compare", action="store_true", help="skip the reference-cache comparison")
    args = parser.parse_args()

    loaded = load_model(ModelSource())
    model = loaded.model
    ids = token_windows(
        loaded.tokenizer,
        load_text("britannica"),
        WindowSpec(window=args.window, count=args.windows, split="evaluation"),
    )
    kv = QuantScheme.from_label(args.kv)
    print(
        f"# Evaluation: {loaded.source.label}, {ids.shape[0]} × {ids.shape[1]} tokens (Britannica, "
        f"evaluation half)\n\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average before: "
        + ", ".join(f"{x:.1f}" for x in os.getloadavg())
        + "\n"
    )
    rows: list[tuple[str, str, str, str]] = []

    with PeakRss() as memory:
        seconds, plain = timed(perplexity, model, ids)
    rows.append(
        (
            "perplexity, 16-bit KV (first run)",
            f"{seconds:.1f} s",
            f"{plain.perplexity:.3f}",
            f"{plain.token_count} tokens, extra RAM {mib(memory.extra)}",
        )
    )
    with PeakRss() as memory:
        seconds, quantized = timed(perplexity, model, ids, kv_scheme=kv)
    change = 100 * (quantized.perplexity / plain.perplexity - 1)
    rows.append(
        (
            f"perplexity, KV {kv.label}",
            f"{seconds:.1f} s",
            f"{quantized.perplexity:.3f}",
            f"{change:+.2f}% vs 16-bit, extra RAM {mib(memory.extra)}",
        )
    )
    cache = make_kv_cache(model.config, kv)
    with torch.inference_mode():
        model(input_ids=ids[:1], past_key_values=cache, use_cache=True)
    rows.append(
        (
            f"KV cache of one {ids.shape[1]}-token window",
            "",
            "",
            f"{mib(cache.nbytes())} stored vs {mib(cache.fp16_nbytes())} at 16 bits "
            f"({cache.nbytes() / cache.fp16_nbytes():.3f}×); {mib(cache.resident_bytes())} resident",
        )
    )
    if not args.no_compare:
        reference_cache = ReferenceCache()
        for name in ("fills the cache", "reuses the cache"):
            with PeakRss() as memory:
                seconds, result = timed(
                    evaluate_against_reference, model, model, ids, reference_cache, kv_scheme=kv
                )
            agreement = result.agreement
            rows.append(
                (
                    f"vs reference, KV {kv.label}: {name}",
                    f"{seconds:.1f} s",
                    f"{result.candidate.perplexity:.3f}",
                    f"KL mean {agreement.mean_kl:.4f} / max {agreement.max_kl:.2f} nats, top-1 "
                    f"{100 * agreement.top1_agreement:.1f}%, reference {result.reference.seconds:.1f} s, "
                    f"extra RAM {mib(memory.extra)}",
                )
            )
        rows.append(("ReferenceCache size", "", "", mib(reference_cache.nbytes())))

    print("| step | time | perplexity | note |\n| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nload average after: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
