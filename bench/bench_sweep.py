"""The context sweep's acceptance run (issue 20): the default model, the reference and the packed int8 and
int4 variants (W8A16, W4A16), contexts 32 to 1024, 32 new tokens, through engine.speed.sweep; the way
AutoAWQ's examples/benchmark.py reports a quantized model.

Each round prefills a prompt of exactly `context` fixed random token ids, then decodes 32 tokens greedily,
each step timed (synchronized) and the median step reported; memory is measured after the round (weights,
the KV cache's tensors, on CUDA the allocator's peak) beside our estimate from the config alone. Each
variant is warmed up once before its first round. The load average is printed before and after: other
processes on the same cores change every number. Prints the total wall time and one markdown table.

Run: .venv/bin/python -m bench.bench_sweep [--generator "our loop" | "transformers generate"]
[--contexts 32 64 ...] [--new-tokens 32] [--variants reference W8A16 W4A16] [--threads N].
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.bench_kernels import load_subject, machine_line
from engine.speed import sweep as sweeps

MIB = 1024**2


def _mib(value) -> str:
    return "-" if value is None else f"{value / MIB:,.2f}"


def table(rounds: list[sweeps.SweepRound]) -> str:
    on_gpu = any(r.cuda_peak_bytes is not None for r in rounds)
    head = [
        "variant",
        "context",
        "prefill s",
        "prefill tok/s",
        "decode ms/step",
        "decode tok/s",
        "weights MiB meas.",
        "weights MiB est.",
        "KV MiB meas.",
        "KV MiB est.",
    ] + (["CUDA peak MiB", "peak MiB est."] if on_gpu else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rounds:
        cells = [
            r.variant,
            f"{r.context:,}",
            f"{r.prefill_seconds:.3f}",
            f"{r.prefill_tokens_per_s:,.0f}",
            f"{1e3 * r.decode_seconds_per_step:.1f}",
            f"{r.decode_tokens_per_s:.1f}",
            _mib(r.weight_bytes),
            _mib(r.estimated_weight_bytes),
            _mib(r.kv_bytes),
            _mib(r.estimated_kv_bytes),
        ] + ([_mib(r.cuda_peak_bytes), _mib(r.estimated_peak_bytes)] if on_gpu else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default=sweeps.OUR_LOOP, choices=list(sweeps.GENERATORS))
    parser.add_argument("--contexts", type=int, nargs="+", default=list(sweeps.CONTEXTS))
    parser.add_argument("--new-tokens", type=int, default=sweeps.NEW_TOKENS)
    parser.add_argument("--variants", nargs="+", default=[sweeps.REFERENCE, "W8A16", "W4A16"])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_subject(None, device)
    print(f"before: {machine_line(device)}", flush=True)
    start = time.perf_counter()
    rounds = sweeps.sweep_variants(
        loaded.model,
        args.variants,
        args.contexts,
        args.new_tokens,
        args.generator,
        on_round=lambda r: print(f"  {r.variant}, context {r.context}: done", flush=True),
    )
    wall = time.perf_counter() - start
    print(f"after:  {machine_line(device)}")
    print(
        f"\n{loaded.source.label}, generator: {args.generator}, {args.new_tokens} new tokens; "
        f"total wall time {wall:.1f} s (variants built, warm-ups and rounds)\n"
    )
    print(table(rounds))
    for note in rounds.notes:
        print(f"\nnote: {note}")


if __name__ == "__main__":
    main()
