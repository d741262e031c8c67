"""The planner's Pareto table on the default model: uniform formats, simple heuristics and the planner at
three budgets, each scored against the reference with llama.cpp's drift statistics (mean and 99th
percentile KL, perplexity), plus the time to measure the costs and to re-solve.

Issue 18's targets (2-core CPU): measuring every tensor under 4 candidates within 5 minutes; re-solving for
a new budget under 0.2 s.

Run: .venv/bin/python -m bench.bench_planner [--calib 1x128] [--eval 4x256] [--budgets 4.0,4.5,5.0]
(prints markdown tables for docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from engine.evaluation.evalset import DEFAULT_EVAL_SET
from engine.evaluation.perplexity import ReferenceCache, evaluate_against_reference
from engine.models.data import WindowSpec, load_text, token_windows
from engine.models.loading import load_model
from engine.models.sources import ModelSource
from engine.planner import DEFAULT_CANDIDATES, LLAMA_CPP_CANDIDATES, apply, measure_costs, plan
from engine.planner.candidates import fits
from engine.planner.heuristics import first_last_8bit, llama_cpp_mix, uniform
from engine.quant.gguf import Q4_0, Q8_0


def windows(text: str) -> tuple[int, int]:
    count, _, window = text.partition("x")
    return int(count), int(window)


def recipes(table, budgets: list[float]) -> list[tuple[str, object]]:
    tensors = table.tensors
    everywhere = [f for f in table.candidates if all(fits(f, t.shape) for t in tensors)]
    out = [("uniform", uniform(tensors, f, table)) for f in everywhere]
    base = Q4_0 if Q4_0 in everywhere else everywhere[0]
    out.append(("heuristic", first_last_8bit(tensors, base, table, Q8_0)))
    out.append(("heuristic", llama_cpp_mix(tensors, "Q4_K_M", table)))
    out += [("planner", plan(table, budget)) for budget in budgets]
    return out


def resolve_times(table, low: float, high: float, count: int = 50) -> tuple[float, float]:
    times = []
    for index in range(count):
        start = time.perf_counter()
        plan(table, low + (high - low) * index / (count - 1))
        times.append(time.perf_counter() - start)
    return sum(times) / len(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calib", default="1x128")
    parser.add_argument("--eval", default="4x256")
    parser.add_argument("--budgets", default="4.0,4.5,5.0")
    parser.add_argument("--llama-cpp", action="store_true", help="also plan with llama.cpp's candidate set")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    loaded = load_model(ModelSource())
    model, text = loaded.model, load_text(DEFAULT_EVAL_SET.corpus)
    calib = token_windows(
        loaded.tokenizer, text, WindowSpec(*reversed(windows(args.calib)), split="calibration")
    )
    count, size = windows(args.eval)
    held_out = token_windows(loaded.tokenizer, text, WindowSpec(size, count, split="evaluation"))
    budgets = [float(b) for b in args.budgets.split(",")]
    cache = ReferenceCache()
    sets = [("mixed", DEFAULT_CANDIDATES)] + ([("llama.cpp", LLAMA_CPP_CANDIDATES)] if args.llama_cpp else [])
    for name, candidates in sets:
        start = time.perf_counter()
        table = measure_costs(model, calib, candidates)
        seconds = time.perf_counter() - start
        mean, most = resolve_times(table, budgets[0], budgets[-1])
        print(
            f"\n{name} candidates ({', '.join(f.label for f in candidates)}): {len(table.tensors)} tensors "
            f"measured in {seconds:.0f} s on {args.calib} calibration tokens; re-solving {mean * 1e3:.1f} ms "
            f"mean, {most * 1e3:.1f} ms max (load average {os.getloadavg()[0]:.1f})\n"
        )
        print("| recipe | kind | bits/weight | predicted KL | mean KL | KL p99 | same top p | perplexity |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        rows = []
        for kind, recipe in recipes(table, budgets):
            quantized = apply(model, recipe)
            result = evaluate_against_reference(model, quantized, held_out, cache)
            del quantized
            drift = result.agreement.drift
            predicted = "—" if recipe.predicted_kl is None else f"{recipe.predicted_kl:.3f}"
            rows.append(
                (
                    recipe.bits_per_weight,
                    f"| {recipe.label} | {kind} | {recipe.bits_per_weight:.3f} | "
                    f"{predicted} | {result.agreement.mean_kl:.3f} | {drift.kl_p99:.2f} | "
                    f"{drift.same_top:.1%} | {result.candidate.perplexity:.2f} |",
                )
            )
        for _, line in sorted(rows):
            print(line, flush=True)
        print(f"\nreference perplexity {result.reference.perplexity:.2f}")


if __name__ == "__main__":
    main()
