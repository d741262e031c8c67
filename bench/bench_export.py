"""Export on the default model: checkpoint size, time to save and load, and whether it still agrees.

For each format, the default model quantized in this process is saved (engine.models.export), loaded back the
way a user would (engine.models.loading.load_model: transformers, with optimum + gptqmodel for GPTQ/AWQ), and
compared with the in-memory quantized model on held-out windows (top-1 agreement, KL per token) and on
speed (a greedy decode of N tokens, tokens/s of both, as a ratio in the same process).

Run: .venv/bin/python -m bench.bench_export [--threads 1] [--tokens 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from engine.methods import BnbConfig, RTNConfig, quantize_model
from engine.models.data import WindowSpec, load_text, token_windows
from engine.models.export import export_model
from engine.models.loading import load_model
from engine.models.sources import ModelSource
from engine.quant.schemes import QuantScheme

INT4_G64 = QuantScheme(4, "int", False, "group", 64)


def decode_tokens_per_second(model, ids: torch.Tensor, tokens: int) -> float:
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return tokens / (time.perf_counter() - start)


@torch.no_grad()
def agreement(a, b, ids: torch.Tensor) -> tuple[float, float]:
    la, lb = a(ids).logits.float(), b(ids).logits.float()
    top1 = (la.argmax(-1) == lb.argmax(-1)).float().mean().item()
    kl = torch.nn.functional.kl_div(lb.log_softmax(-1), la.log_softmax(-1), log_target=True, reduction="none")
    return top1, kl.sum(-1).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=32, help="greedy decode length for tokens/s")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference = load_model(ModelSource())
    ids = token_windows(reference.tokenizer, load_text("britannica"), WindowSpec(256, 2, split="evaluation"))
    prompt = ids[:1, :16]
    float_bytes = sum(p.numel() * 2 for p in reference.model.parameters())
    variants = {
        "gptq": quantize_model(reference.model, RTNConfig(INT4_G64)),
        "awq": None,  # the same RTN model, in AWQ's layout
        "dequantized": None,
        "bnb": quantize_model(reference.model, BnbConfig("nf4")),
    }
    variants["awq"] = variants["dequantized"] = variants["gptq"]
    print(f"# export bench: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, ")
    print(f"torch {torch.__version__}, threads {args.threads}, load average {os.getloadavg()[0]:.1f}\n")
    print(f"float16 size of the model: {float_bytes / 1e6:,.1f} MB\n")
    print(
        "| format | model | size MB | vs float16 | save s | load s | top-1 vs in-memory | KL/token | "
        "decode tok/s loaded | in-memory | ratio |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for fmt, quantized in variants.items():
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            result = export_model(quantized.model, Path(folder), fmt, tokenizer=reference.tokenizer)
            saved = time.perf_counter() - start
            start = time.perf_counter()
            loaded = load_model(ModelSource("folder", folder))
            load_seconds = time.perf_counter() - start
            top1, kl = agreement(quantized.model, loaded.model, ids)
            fast = decode_tokens_per_second(loaded.model, prompt, args.tokens)
            ours = decode_tokens_per_second(quantized.model, prompt, args.tokens)
            size = result.files["model.safetensors"]
            label = "RTN int4 asym g64" if fmt != "bnb" else "bnb NF4"
            print(
                f"| {fmt} | {label} | {size / 1e6:,.1f} | {size / float_bytes:.2f} | {saved:.1f} | "
                f"{load_seconds:.1f} | {top1:.3%} | {kl:.5f} | {fast:.1f} | {ours:.1f} | {fast / ours:.2f} |"
            )
            del loaded


if __name__ == "__main__":
    main()
