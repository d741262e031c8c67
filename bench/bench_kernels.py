"""Kernel and end-to-end decode speed on the current device (issue 8), as markdown for docs/benchmarks.md.

Targets: on a 2-core CPU, int4 / int8 kernel decode of the default model at least as fast as fp32. On an
H100: our W4A16 >= 3.0x and W8A16 >= 1.7x cuBLAS fp16 at batch 1 on Llama-2-7B shapes; synthetic
Llama-2-7B decode (128-token prompt, 256 new tokens) with fp16 >= 60% of its roofline and int4 >= 2.5x fp16.

Run: .venv/bin/python -m bench.bench_kernels [--repeats 20] [--threads N] [--rounds 3] [--new-tokens 64]
[--no-llama] [--synthetic smollm2-135m-instruct] (random weights in a catalog config, where the default
model's files are not at hand: a GPU machine). On CPU it runs one torch thread unless told otherwise: OpenMP threads on shared, loaded
cores make medians land on the scheduler's time slices (docs/benchmarks.md). Tables:
1. the default model's linear shapes x batch 1..256 x format: median µs, achieved GB/s, speed-up over the
   baseline (fp32 on CPU, bf16 on a GPU), with the kernel that ran; bitsandbytes' NF4 and LLM.int8()
   layers beside ours;
2. Llama-2-7B shapes (on CPU at batch 1 and 4 only, where a 180 MB fp32 weight keeps calls short);
3. end-to-end greedy decode of the default model per variant: each variant decodes `rounds` times,
   interleaved with the others so load drift hits all of them alike, and the median is reported, with
   prefill tokens/s and the bandwidth roofline (bytes read per token / measured copy bandwidth);
4. on CUDA only: the same for Llama-2-7B-shaped random weights, plus transformers' own `generate`.
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
    formats = list(dict.fromkeys(r.format for r in results))
    lines = []
    for label in dict.fromkeys(r.shape.label for r in results):
        rows = [r for r in results if r.shape.label == label]
        lines.append(f"\n**{label}** (µs, GB/s, speed-up over {baseline}; kernel)\n")
        lines.append("| batch | " + " | ".join(formats) + " |")
        lines.append("| ---: | " + " | ".join("---" for _ in formats) + " |")
        for batch in dict.fromkeys(r.batch for r in rows):
            cells = []
            for fmt in formats:
                r = next(x for x in rows if x.batch == batch and x.format == fmt)
                cells.append(f"{r.seconds * 1e6:,.0f} µs, {r.gbytes_per_s:.1f} GB/s, **{r.speedup:.2f}x**")
            lines.append(f"| {batch} | " + " | ".join(cells) + " |")
        kernels = {fmt: next(r.kernel for r in rows if r.format == fmt) for fmt in formats}
        lines.append("\nkernels: " + ", ".join(f"{fmt} = `{k}`" for fmt, k in kernels.items()))
    return "\n".join(lines)


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

    print(
        f"# Kernels and decode speed — `python -m bench.bench_kernels`\n\n{machine_line(device)} (before)\n"
    )
    dtype = "bfloat16" if on_gpu else "float32"
    loaded = load_subject(args.synthetic, device)
    bandwidth = speed.measure_bandwidth(device)
    print(f"Measured copy bandwidth: {bandwidth / 1e9:,.1f} GB/s (read + write of a large tensor).\n")

    shapes = speed.model_linear_shapes(loaded.model)
    print(f"## Linear layers of {loaded.source.label} (median of {args.repeats})")
    results = speed.microbenchmark(shapes, speed.BATCH_SIZES, device=device, repeats=args.repeats)
    print(kernel_tables(results, baseline))

    if not args.no_llama:
        batches = speed.BATCH_SIZES if on_gpu else (1, 4)
        llama = [speed.LinearShape(o, i) for o, i in speed.LLAMA_2_7B_SHAPES]
        print(f"\n## Llama-2-7B shapes, batch {', '.join(map(str, batches))} (median of {args.repeats})")
        results = speed.microbenchmark(llama, batches, device=device, repeats=args.repeats, warmup=2)
        print(kernel_tables(results, baseline))

    if on_gpu:
        from engine.kernels import cuda

        for fmt, picks in cuda.tuned_gemv_configs().items():
            for key, config in picks.items():
                print(f"\n{fmt} decode GEMV autotuned for {key}: {config}")
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
