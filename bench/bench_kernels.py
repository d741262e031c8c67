"""Kernel and end-to-end decode speed on the current device (issues 8 and 16), as markdown for docs/benchmarks.md.

Targets: on a 2-core CPU, int4 / int8 kernel decode of the default model at least as fast as fp32. On an
H100: our W4A16 >= 3.0x and W8A16 >= 1.7x cuBLAS fp16 at batch 1 on Llama-2-7B shapes; synthetic
Llama-2-7B decode (128-token prompt, 256 new tokens) with fp16 >= 60% of its roofline and int4 >= 2.5x fp16.

Run: .venv/bin/python -m bench.bench_kernels [--repeats 20] [--threads N] [--rounds 3] [--new-tokens 64]
[--no-llama] [--kernels-only] [--batches 1 16] [--formats W8A16 W4A16] [--synthetic smollm2-135m-instruct]
(random weights in a catalog config, where the default model's files are not at hand: a GPU machine).
On CPU it runs one torch thread unless told otherwise: OpenMP threads on shared, loaded cores make
medians land on the scheduler's time slices (docs/benchmarks.md).

Every kernel row has two figures (engine.speed.timing.two_figures): **kernel µs**, the kernel alone on
input prepared once (a CUDA-graph replay timed with CUDA events on a GPU; wall clock on a CPU), and
**call µs**, what a model's forward pays per call; **overhead µs** is the difference. GB/s and TFLOP/s
use kernel time; speed-ups over the baseline are given for both. Tables, each printed as soon as its
shape is measured:
1. the default model's linear shapes x batch 1..256 x format, with the kernel that ran; bitsandbytes'
   NF4 and LLM.int8() layers beside ours (on CUDA the Llama-2-7B shapes come first);
2. Llama-2-7B shapes (on CPU at batch 1 and 4 only, where a 180 MB fp32 weight keeps calls short);
3. unless --kernels-only, end-to-end greedy decode of the default model per variant: each variant
   decodes `rounds` times, interleaved with the others so load drift hits all of them alike, and the
   median is reported, with prefill tokens/s and the bandwidth roofline (bytes read per token /
   measured copy bandwidth);
4. on CUDA only (and unless --kernels-only): the same for Llama-2-7B-shaped random weights, plus
   transformers' own `generate`.
The load average is printed before and after: other processes on the same cores change every number.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from types import SimpleNamespace

import torch

from engine import speed
from engine.models.loading import load_model
from engine.models.sources import ModelSource
from engine.sizing.catalog import catalog_model


def machine_line(device: str) -> str:
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{dt.date.today()}, {name}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {load}"
    )


def load_subject(synthetic: str | None, device: str):
    """The default model (a LoadedModel), or with `synthetic` a catalog config with random weights (bf16
    on a GPU, fp32 on CPU) and a tokenizer for it: no weight files needed, as on a GPU machine."""
    dtype = "bfloat16" if device == "cuda" else "float32"
    if not synthetic:
        return load_model(ModelSource(), device, dtype)
    entry = catalog_model(synthetic)
    model = speed.synthetic_model(entry.config(), getattr(torch, dtype), device)
    return SimpleNamespace(
        model=model,
        tokenizer=speed.SyntheticTokenizer(model.config.vocab_size),
        source=SimpleNamespace(label=f"{entry.name} (synthetic random weights)"),
    )


def kernel_tables(results: list[speed.KernelTiming], baseline: str) -> str:
    """One markdown table per shape: a row per (batch, format) with kernel, call and overhead µs."""
    lines = []
    reasons: dict[str, None] = {}
    for label in dict.fromkeys(r.shape.label for r in results):
        rows = [r for r in results if r.shape.label == label]
        lines.append(
            f"\n**{label}** (kernel µs: the kernel alone; call µs: a forward; GB/s and TFLOP/s from "
            f"kernel time; speed-ups over {baseline})\n"
        )
        lines.append(
            "| batch | format | kernel | kernel µs | call µs | overhead µs | GB/s | TFLOP/s | "
            "speed-up (kernel) | speed-up (call) | kernel timed by |"
        )
        lines.append("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for r in sorted(rows, key=lambda r: r.batch):  # stable: formats keep their order within a batch
            method, _, reason = r.method.partition(" (")
            if reason:
                reasons[f"{r.format}: {reason.rstrip(')')}"] = None
            lines.append(
                f"| {r.batch} | {r.format} | `{r.kernel}` | {r.kernel_seconds * 1e6:,.1f} | "
                f"{r.call_seconds * 1e6:,.1f} | {r.overhead_seconds * 1e6:,.1f} | {r.gbytes_per_s:,.1f} | "
                f"{r.tflops:.3f} | **{r.speedup:.2f}x** | {r.call_speedup:.2f}x | {method} |"
            )
    if reasons:
        lines.append("\nKernel time from CUDA events instead of a CUDA graph:")
        lines.extend(f"- {reason}" for reason in reasons)
    return "\n".join(lines)


def kernel_section(title: str, shapes, batches, formats, device: str, repeats: int, baseline: str) -> None:
    """Time `shapes` one at a time and print each shape's table as soon as it is measured (a run cut
    short by a timeout keeps what it measured)."""
    print(f"\n## {title}, batch {', '.join(map(str, batches))} (median of {repeats})", flush=True)
    for shape in shapes:
        results = speed.microbenchmark([shape], batches, formats, device=device, repeats=repeats, warmup=2)
        print(kernel_tables(results, baseline), flush=True)


def decode_rounds(model, tokenizer, variants, prompt_tokens, new_tokens, rounds, bandwidth, group_size=None):
    """Median DecodeTiming per variant over `rounds` interleaved runs (every variant built once)."""
    recipes = [speed.variant_recipe(v) for v in variants]  # names or recipes -> recipes
    built = {r.label: speed.build_variant(model, r, group_size) for r in recipes}
    prompt = speed.prompt_of_length(tokenizer, prompt_tokens)
    runs: dict[str, list[speed.DecodeTiming]] = {name: [] for name in built}
    for _ in range(rounds):
        for name, variant in built.items():
            runs[name].append(speed.decode_benchmark(variant, tokenizer, name, prompt, new_tokens, bandwidth))
    by_speed = [sorted(r, key=lambda t: t.decode_tokens_per_s) for r in runs.values()]
    return [r[(len(r) - 1) // 2] for r in by_speed]  # the lower median: a real run, not an average


def decode_table(results: list[speed.DecodeTiming], baseline: str) -> str:
    base = next((r for r in results if r.variant == baseline), results[0])
    lines = [
        "| variant | prefill tok/s | decode tok/s | vs " + base.variant + " | roofline tok/s | % of roofline "
        "| weights MiB | MiB read per token |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.variant} | {r.prefill_tokens_per_s:,.1f} | {r.decode_tokens_per_s:,.1f} | "
            f"{r.decode_tokens_per_s / base.decode_tokens_per_s:.2f}x | {r.roofline_tokens_per_s:,.1f} | "
            f"{100 * r.roofline_fraction:.0f}% | {r.weight_bytes / 2**20:,.0f} | "
            f"{r.bytes_per_token / 2**20:,.0f} |"
        )
    return "\n".join(lines)


@torch.inference_mode()
def hf_generate_tokens_per_s(model, prompt_tokens: int, new_tokens: int) -> float:
    """transformers' own generate (eager, greedy), prompt included in the time: new tokens per second."""
    device = next(model.parameters()).device
    ids = torch.randint(1, model.config.vocab_size, (1, prompt_tokens), device=device)
    kwargs = dict(do_sample=False, min_new_tokens=new_tokens, max_new_tokens=new_tokens, pad_token_id=0)
    model.generate(ids, **{**kwargs, "min_new_tokens": 2, "max_new_tokens": 2})  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(ids, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return new_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: 1 on CPU, where OpenMP threads on shared cores time the "
        "scheduler's slices instead of the kernels; torch's own choice on a GPU)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved decode runs per variant")
    parser.add_argument("--prompt-tokens", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--no-llama", action="store_true", help="skip the Llama-2-7B shapes")
    parser.add_argument(
        "--kernels-only", action="store_true", help="the kernel tables only: no end-to-end decode"
    )
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=None,
        help=f"default: {' '.join(map(str, speed.BATCH_SIZES))}",
    )
    parser.add_argument(
        "--llama-batches",
        type=int,
        nargs="+",
        default=None,
        help="batches for the Llama-2-7B shapes (default: --batches on a GPU, 1 4 on a CPU)",
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        default=None,
        help="formats to time (default: every one this device runs; the baseline always runs)",
    )
    parser.add_argument(
        "--synthetic",
        default=None,
        help="a catalog config (e.g. smollm2-135m-instruct) with random weights instead of the default "
        "model's files: shapes and speed only",
    )
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = device == "cuda"
    if args.threads or not on_gpu:
        torch.set_num_threads(args.threads or 1)
    prompt_tokens = args.prompt_tokens or (128 if on_gpu else 32)
    new_tokens = args.new_tokens or (256 if on_gpu else 64)
    baseline = speed.baseline_format(device)
    batches = args.batches or speed.BATCH_SIZES
    llama_batches = args.llama_batches or (batches if on_gpu else [b for b in (1, 4) if b in batches] or [1])
    formats = None if args.formats is None else list(dict.fromkeys([baseline, *args.formats]))

    print(
        f"# Kernels and decode speed — `python -m bench.bench_kernels`\n\n{machine_line(device)} (before)\n",
        flush=True,
    )
    dtype = "bfloat16" if on_gpu else "float32"
    loaded = load_subject(args.synthetic, device)
    bandwidth = speed.measure_bandwidth(device)
    print(
        f"Measured copy bandwidth: {bandwidth / 1e9:,.1f} GB/s (read + write of a large tensor, over its "
        "kernel time).\n",
        flush=True,
    )
    timing = (
        "CUDA-graph replays timed with CUDA events" if on_gpu else "wall clock, kernel and call alternately"
    )
    print(f"Kernel time: {timing}. Call time: wall time of back-to-back forwards.", flush=True)

    llama = [speed.LinearShape(o, i) for o, i in speed.LLAMA_2_7B_SHAPES]
    sections = [(f"Linear layers of {loaded.source.label}", speed.model_linear_shapes(loaded.model), batches)]
    if not args.no_llama:
        llama_section = ("Llama-2-7B shapes", llama, llama_batches)
        sections = [llama_section, *sections] if on_gpu else [*sections, llama_section]
    for title, shapes, section_batches in sections:
        kernel_section(title, shapes, section_batches, formats, device, args.repeats, baseline)

    if on_gpu:
        from engine.kernels import cuda

        for fmt, picks in cuda.tuned_gemv_configs().items():
            for key, config in picks.items():
                print(f"\n{fmt} decode GEMV autotuned for {key}: {config}")
    if args.kernels_only:
        print(f"\n{machine_line(device)} (after)")
        return
    names = ["bf16", "fp16"] if on_gpu else ["fp32", "bf16"]
    variants = [speed.VARIANTS[n] for n in [*names, "W8A16", "W4A16", "W8A8", "W4A16 + int8 head"]] + [
        r for r in speed.BNB_FORMATS.values() if speed.bnb_installed()
    ]
    print(
        f"\n## End-to-end greedy decode, {loaded.source.label} ({dtype}), {prompt_tokens}-token prompt, "
        f"{new_tokens} new tokens, median of {args.rounds} interleaved rounds\n"
    )
    timings = decode_rounds(
        loaded.model, loaded.tokenizer, variants, prompt_tokens, new_tokens, args.rounds, bandwidth
    )
    print(decode_table(timings, baseline))
    base = next(t for t in timings if t.variant == baseline)
    for t in timings:
        if t.variant in ("W8A16", "W4A16"):
            verdict = "meets" if t.decode_tokens_per_s >= base.decode_tokens_per_s else "MISSES"
            print(
                f"\n{t.variant} decode vs {baseline}: "
                f"{t.decode_tokens_per_s / base.decode_tokens_per_s:.2f}x ({verdict} ≥ 1x)"
            )
    print(
        f"\ntransformers `generate` ({dtype}, eager): "
        f"{hf_generate_tokens_per_s(loaded.model, prompt_tokens, new_tokens):,.1f} new tok/s "
        "(prompt included)"
    )

    if on_gpu:
        del loaded
        torch.cuda.empty_cache()
        config = catalog_model("llama-2-7b").config()
        model = speed.synthetic_model(config, torch.bfloat16, device)
        tokenizer = speed.SyntheticTokenizer(config.vocab_size)
        print(
            f"\n## Llama-2-7B shapes, synthetic random weights (bf16), {prompt_tokens}-token prompt, "
            f"{new_tokens} "
            f"new tokens, median of {args.rounds}\n"
        )
        timings = decode_rounds(
            model,
            tokenizer,
            ["bf16", "W8A16", "W4A16"] + (["NF4 (bnb)"] if speed.bnb_installed() else []),
            prompt_tokens,
            new_tokens,
            args.rounds,
            bandwidth,
        )
        print(decode_table(timings, "bf16"))
        print(
            f"\ntransformers `generate` (bf16, eager): "
            f"{hf_generate_tokens_per_s(model, prompt_tokens, new_tokens):,.1f} new tok/s"
        )

    print(f"\n{machine_line(device)} (after)")


if __name__ == "__main__":
    main()
