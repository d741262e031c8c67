"""Decode loops side by side (issue 8): transformers' `generate` vs our static-cache loop, eager and compiled.

Batch 1, greedy, end-of-sequence ignored, the default model in fp32 on CPU (bf16 on a GPU), for the
reference and the packed int8 (W8A16) and int4 (W4A16) QuantLinear variants, all in one process. Loops:
- `transformers generate`: `model.generate(do_sample=False)`, its dynamic cache; a streamer clocks the
  first new token: prefill before it, decode after it;
- `dynamic cache`: engine.runtime.generation.generate, our plain loop on the same dynamic cache (the app's);
- `static cache`: engine.runtime.decode, eager, a StaticCache preallocated to prompt + new tokens;
- `static + compile`: engine.runtime.decode with the step in `torch.compile(dynamic=False)`: inductor's default
  mode on CPU (no CUDA graphs there), `mode="reduce-overhead"` (CUDA graphs) on a GPU.
Every (variant, loop) is warmed up (a short run; the compiled loop compiles there) before any is timed, so
the loop timed first pays no one-time cost the others skip (issue 16); then each runs `rounds` times,
interleaved so load drift hits all alike; the lower median is reported. Compile time is the warm-up's,
shown apart, never in tokens/s. The load average is
printed before and after: other processes on the same cores change every number.

Run: .venv/bin/python -m bench.bench_decode [--rounds 3] [--prompt-tokens 32] [--new-tokens 64]
[--threads N] [--synthetic llama-2-7b]. On CPU it runs one torch thread unless told otherwise (see
bench/bench_kernels.py for why). `--synthetic NAME` times a catalog config with random weights
instead of the default model (a GPU run: Llama-2-7B is 13 GB in bf16).
"""

from __future__ import annotations

import argparse

import torch

from bench.bench_kernels import load_subject, machine_line
from engine import speed
from engine.speed.decode_bench import warm_up

LOOPS = [speed.HF_LOOP, speed.DYNAMIC_LOOP, speed.STATIC_LOOP, speed.COMPILED_LOOP]


def measure(model, tokenizer, variants, loops, prompt_tokens, new_tokens, rounds, bandwidth):
    """{(variant, loop): [DecodeTiming per round]}, every variant built once, every (variant, loop) warmed
    up before the first is timed, rounds interleaved."""
    built = {r.label: speed.build_variant(model, r) for r in map(speed.variant_recipe, variants)}
    prompt = speed.prompt_of_length(tokenizer, prompt_tokens)
    warm = {}
    for name, variant in built.items():
        for loop in loops:
            warm[name, loop] = warm_up(variant, tokenizer, prompt, new_tokens, loop)
            if warm[name, loop].compile_seconds:
                print(f"  compiled {name}: {warm[name, loop].compile_seconds:.1f} s", flush=True)
    runs: dict[tuple[str, str], list[speed.DecodeTiming]] = {}
    for _ in range(rounds):
        for name, variant in built.items():
            for loop in loops:
                timing = speed.decode_benchmark(
                    variant, tokenizer, name, prompt, new_tokens, bandwidth, loop=loop, warm=warm[name, loop]
                )
                runs.setdefault((name, loop), []).append(timing)
    return runs


def lower_median(timings: list[speed.DecodeTiming]) -> speed.DecodeTiming:
    ordered = sorted(timings, key=lambda t: t.decode_tokens_per_s)
    return ordered[(len(ordered) - 1) // 2]


def goals(runs, baseline: str) -> str:
    """Issue 8's end-to-end goals on a GPU, from the compiled (CUDA-graph) loop: the baseline at >= 60% of
    its roofline, int4 >= 2.5x the baseline, both ahead of transformers' generate and bitsandbytes NF4."""
    best = {key: lower_median(timings) for key, timings in runs.items()}
    compiled = {name: t for (name, loop), t in best.items() if loop == speed.COMPILED_LOOP}
    lines = []
    base, int4 = compiled.get(baseline), compiled.get("W4A16")
    if base:
        fraction = base.roofline_fraction
        lines.append(
            f"- {baseline} at {100 * fraction:.0f}% of its roofline ({'meets' if fraction >= 0.6 else 'MISSES'} >= 60%)"
        )
    if base and int4:
        ratio = int4.decode_tokens_per_s / base.decode_tokens_per_s
        lines.append(f"- W4A16 {ratio:.2f}x {baseline} ({'meets' if ratio >= 2.5 else 'MISSES'} >= 2.5x)")
    for name in (baseline, "W4A16"):
        ours = compiled.get(name)
        for other, loop in (
            (name, speed.HF_LOOP),
            ("NF4 (bnb)", speed.HF_LOOP),
            ("NF4 (bnb)", speed.COMPILED_LOOP),
        ):
            theirs = best.get((other, loop))
            if ours and theirs:
                lines.append(
                    f"- {name} compiled {ours.decode_tokens_per_s:,.1f} tok/s = "
                    f"{ours.decode_tokens_per_s / theirs.decode_tokens_per_s:.2f}x {other} · {loop} "
                    f"({theirs.decode_tokens_per_s:,.1f})"
                )
    return "\n".join(lines) or "(no compiled runs to hold to the goals)"


def table(runs, variants, loops, baseline: str) -> str:
    best = {key: lower_median(timings) for key, timings in runs.items()}
    lines = [
        f"| variant | loop | prefill tok/s | decode tok/s | vs transformers generate | vs {baseline} "
        "(same loop) | % of roofline | compile s | ran as | same tokens as generate | spread |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for name in variants:
        reference = best.get((name, speed.HF_LOOP))
        for loop in loops:
            t = best[(name, loop)]
            base = best[(baseline, loop)]
            per_round = [r.decode_tokens_per_s for r in runs[(name, loop)]]
            versus_hf = f"{t.decode_tokens_per_s / reference.decode_tokens_per_s:.2f}x" if reference else ""
            same = "" if reference is None else ("yes" if t.token_ids == reference.token_ids else "NO")
            compile_seconds = runs[(name, loop)][0].compile_seconds
            note = f" ({t.note})" if t.note else ""
            lines.append(
                f"| {name} | {loop} | {t.prefill_tokens_per_s:,.0f} | **{t.decode_tokens_per_s:,.1f}** | "
                f"{versus_hf} | {t.decode_tokens_per_s / base.decode_tokens_per_s:.2f}x | "
                f"{100 * t.roofline_fraction:.0f}% | {compile_seconds:.1f} | {t.ran_as or 'eager'}{note} | "
                f"{same} | {min(per_round):.1f}-{max(per_round):.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per variant and loop")
    parser.add_argument("--prompt-tokens", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU)")
    parser.add_argument(
        "--synthetic", default=None, help="catalog config with random weights (bf16 on a GPU, fp32 on CPU)"
    )
    parser.add_argument("--loops", nargs="+", default=LOOPS, choices=list(speed.LOOPS))
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help="default: the model's dtype, W8A16, W4A16, and on a GPU bitsandbytes NF4 when installed",
    )
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = device == "cuda"
    if args.threads or not on_gpu:
        torch.set_num_threads(args.threads or 1)
    prompt_tokens = args.prompt_tokens or (128 if on_gpu else 32)
    new_tokens = args.new_tokens or (256 if on_gpu else 64)

    print(f"# Decode loops — `python -m bench.bench_decode`\n\n{machine_line(device)} (before)\n", flush=True)
    loaded = load_subject(args.synthetic, device)
    model, tokenizer, label = loaded.model, loaded.tokenizer, loaded.source.label
    baseline = speed.DTYPE_NAMES[speed.float_dtype(model)]
    variants = args.variants or [baseline, "W8A16", "W4A16"] + (
        ["NF4 (bnb)"] if on_gpu and speed.bnb_installed() else []
    )
    bandwidth = speed.measure_bandwidth(device)
    print(
        f"{label}, batch 1, greedy, {prompt_tokens}-token prompt, {new_tokens} new tokens, lower median of "
        f"{args.rounds} interleaved rounds; measured copy bandwidth {bandwidth / 1e9:,.1f} GB/s.\n",
        flush=True,
    )
    runs = measure(model, tokenizer, variants, args.loops, prompt_tokens, new_tokens, args.rounds, bandwidth)
    print()
    print(table(runs, variants, args.loops, baseline))
    if speed.HF_LOOP in args.loops and speed.COMPILED_LOOP in args.loops:
        print()
        for name in variants:
            compiled = lower_median(runs[(name, speed.COMPILED_LOOP)]).decode_tokens_per_s
            generate = lower_median(runs[(name, speed.HF_LOOP)]).decode_tokens_per_s
            rounds = [r.decode_tokens_per_s for r in runs[(name, speed.COMPILED_LOOP)]]
            print(
                f"- {name}: static + compile {compiled:,.1f} tok/s = {compiled / generate:.2f}x transformers "
                f"generate ({generate:,.1f}); compiled rounds {', '.join(f'{x:.1f}' for x in rounds)}"
            )
    if on_gpu:
        print()
        print(goals(runs, baseline))
    print(f"\n{machine_line(device)} (after)")


if __name__ == "__main__":
    main()
