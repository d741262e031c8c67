"""Compile cost of the static-cache decode step, per variant (issue 16): graph breaks and compile seconds.

For a catalog config with random weights (engine.speed.synthetic_model, on CPU) in fp32 and bf16, the
packed QuantLinear variants (W4A16, W8A16, W8A8: engine.kernels) and a fake-quantized W4 copy (RTN,
engine.methods), it reports
- the decode step's graphs and graph breaks, from `torch._dynamo.explain` on
  engine.runtime.decode's step (one token, after a prefill into its static cache), with the first break
  reasons: the count `torch.compile(fullgraph=True)` would refuse;
- the seconds `decode(mode="compiled")` spent compiling (its warm-up, apart from any timed decode), what
  ran (compiled (inductor), or eager after a failed compile) and why it fell back, if it did;
- whether the compiled step decodes the eager step's greedy tokens (random weights make near-ties, so
  a "NO" in bf16 can be rounding; bench.bench_decode times the loops).

Each variant runs in a process of its own with inductor's on-disk cache in a fresh folder (unless
`--warm-cache`), so the seconds are a cold compile's: in one process the fake-quantized model, whose
graph is the float model's, would find the fp32 graph already compiled. On a GPU decode compiles with
mode="reduce-overhead" (CUDA graphs) and dynamic=False, on a CPU with inductor's default mode: the break
counts carry over, the seconds do not.

Run: .venv/bin/python -m bench.bench_compile [--config smollm2-135m-instruct] [--layers N]
[--variants fp32 bf16 W4A16 W8A16 W8A8 "W4 fake-quant"] [--new-tokens 16] [--threads N] [--warm-cache]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

from bench.bench_kernels import machine_line
from engine import speed
from engine.methods import quantize_model
from engine.recipes import get as recipe
from engine.runtime import decode as fast
from engine.runtime.static_cache import SharedPositionCache
from engine.sizing.catalog import catalog_model

FAKE_W4 = "W4 fake-quant"
VARIANTS = ["fp32", "bf16", "W4A16", "W8A16", "W8A8", FAKE_W4]


def build(base: torch.nn.Module, name: str) -> torch.nn.Module:
    """fp32 / bf16 recasts and packed copies by engine.speed; the fake-quantized W4 copy by RTN."""
    if name == FAKE_W4:
        return quantize_model(base, recipe("W4").for_module(base).method).model
    return speed.build_variant(base, name)


@torch.inference_mode()
def explain_step(model: torch.nn.Module, ids: torch.Tensor) -> torch._dynamo.backends.debugging.ExplainOutput:
    """torch._dynamo.explain of one decode step after a prefill of `ids` (1, tokens)."""
    cache = SharedPositionCache(model.config, ids.shape[1] + 2, ids.device)
    token = fast._prefill(model, ids, cache, keep_last=True)  # (1, 1)
    return torch._dynamo.explain(fast._greedy_step)(model, token, cache, None)


def row(name: str, model: torch.nn.Module, ids: torch.Tensor, new_tokens: int) -> str:
    start = time.perf_counter()
    explained = explain_step(model, ids)
    explain_seconds = time.perf_counter() - start
    reasons = "; ".join(dict.fromkeys(str(r.reason).splitlines()[0][:90] for r in explained.break_reasons))
    eager = fast.decode(model, ids, new_tokens, "eager")
    compiled = fast.decode(model, ids, new_tokens, "compiled")
    same = "yes" if compiled.token_ids == eager.token_ids else "NO"
    fallback = compiled.fallback_reason or ""
    return (
        f"| {name} | {explained.graph_count} | **{explained.graph_break_count}** | {explain_seconds:.1f} | "
        f"**{compiled.compile_seconds:.1f}** | {compiled.mode_used} | {compiled.graph_breaks} | {same} | "
        f"{(reasons or '-')[:200]} | {fallback[:160] or '-'} |"
    )


def subject(args) -> tuple[torch.nn.Module, torch.Tensor]:
    """The fp32 synthetic model of `args.config` (its first `args.layers` layers) and a (1, tokens) prompt."""
    config = catalog_model(args.config).config()
    if args.layers:
        config.num_hidden_layers = args.layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[: args.layers]
    base = speed.synthetic_model(config, torch.float32, "cpu")
    generator = torch.Generator().manual_seed(0)
    return base, torch.randint(3, config.vocab_size, (1, args.prompt_tokens), generator=generator)


def header(args) -> None:
    entry = catalog_model(args.config)
    layers = args.layers or entry.config().num_hidden_layers
    cache = "warm inductor cache, one process" if args.warm_cache else "cold inductor cache, a process each"
    print(f"# Decode-step compile cost — `python -m bench.bench_compile`\n\n{machine_line('cpu')} (before)\n")
    print(
        f"{entry.name} config, {layers} layers, random weights; decode step of engine.runtime.decode (static "
        f"cache, argmax in the step); {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens; "
        f"inductor, default CPU mode, dynamic=False; {cache}.\n"
    )
    print(
        "| variant | graphs | graph breaks (explain) | explain s | compile s | ran as "
        "| breaks while compiling | same tokens as eager | break reasons | fallback |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: | --- | --- | --- |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="smollm2-135m-instruct", help="catalog slug")
    parser.add_argument("--layers", type=int, default=None, help="keep the first N layers (default: all)")
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--warm-cache", action="store_true", help="keep inductor's cache; one process")
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: one variant, one row
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.row is not None:  # a child process: one variant's row
        base, ids = subject(args)
        print(row(args.row, build(base, args.row), ids, args.new_tokens), flush=True)
        return
    header(args)
    if args.warm_cache:
        base, ids = subject(args)
        for name in args.variants:
            print(row(name, build(base, name), ids, args.new_tokens), flush=True)
            fast.clear_compiled()
    else:
        options = [a for a in sys.argv[1:] if a != "--variants" and a not in args.variants]
        for name in args.variants:
            folder = tempfile.mkdtemp(prefix="bench-compile-inductor-")
            command = [sys.executable, "-m", "bench.bench_compile", *options, "--row", name]
            subprocess.run(command, env=os.environ | {"TORCHINDUCTOR_CACHE_DIR": folder}, check=True)
    print(f"\n{machine_line('cpu')} (after)")


if __name__ == "__main__":
    main()
