"""Rotation (QuaRot) on the default model: time to fold + rotate, and W4A4 / W4A8 / W8A8 / KV4 quality.

Target (2-core CPU): fold + rotation of SmolLM2-135M under 5 s (`rotate_model` on a copy; the registry's
deep copy and its logits check are timed apart). Then, on DEFAULT_EVAL_SET (4 x 256 held-out Britannica
tokens), perplexity and mean KL against the float model (`evaluate_against_reference`, one ReferenceCache):

- plain RTN: the catalog's recipe (engine.recipes: W<b> weights, group 64 on SmolLM2 below 8 bits,
  per-token int activations);
- SmoothQuant α = 0.5 at the same bits (its weights are per output channel, not grouped);
- rotation + RTN: RotationConfig(rotate_values, online_down, then=the recipe);
- rotation + GPTQ: the recipe's weights by GPTQ on the rotated copy (calibration windows below), then the
  recipe's per-token activations set on its layers (GPTQConfig has no activation side);
- KV4: the catalog's KV4 cache on the float model, on the rotated model, and with the V/O rotation.

Run: .venv/bin/python -m bench.bench_rotation [--calib 4] [--threads N]
(prints markdown for docs/benchmarks.md). The load average is printed: other processes change timings.
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
from engine.methods.gptq import GPTQConfig
from engine.methods.registry import quantize_model
from engine.methods.rotation import RotationConfig, rotate_model
from engine.methods.smoothquant import SmoothQuantConfig
from engine.models.data import WindowSpec, load_text, token_windows
from engine.models.loading import load_model
from engine.models.sources import ModelSource
from engine.quant.linear import FakeQuantLinear
from engine.recipes import get


def load_average() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def with_activations(model, scheme):
    """Set per-token activation quantization on every quantized linear (GPTQ quantizes weights only)."""
    for module in model.modules():
        if isinstance(module, FakeQuantLinear):
            module.act_scheme = scheme
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calib", type=int, default=4, help="GPTQ calibration windows of 256 tokens")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(ModelSource())
    model = loaded.model
    text = load_text(DEFAULT_EVAL_SET.corpus)
    windows = token_windows(loaded.tokenizer, text, DEFAULT_EVAL_SET.spec)
    calib = token_windows(loaded.tokenizer, text, WindowSpec(256, args.calib))
    print(
        f"# Rotation (QuaRot): {loaded.source.label}, evaluation {windows.shape[0]} × {windows.shape[1]} "
        f"held-out tokens, GPTQ calibration {calib.shape[0]} × {calib.shape[1]}\n\n"
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average before: {load_average()}\n"
    )
    copied = copy.deepcopy(model)
    start = time.perf_counter()
    rotate_model(copied, RotationConfig(rotate_values=True, online_down=True))
    rotate_seconds = time.perf_counter() - start
    del copied
    start = time.perf_counter()
    rotated = quantize_model(model, RotationConfig(rotate_values=True, online_down=True))
    print(
        f"fold + rotate (rotate_model): {rotate_seconds:.2f} s; through quantize_model (deep copy + logits "
        f"check): {time.perf_counter() - start:.2f} s\n"
    )
    cache = ReferenceCache()
    rows = []

    def score(setting: str, method: str, candidate, seconds: float, kv=None) -> None:
        result = evaluate_against_reference(model, candidate, windows, cache, kv_scheme=kv)
        rows.append((setting, method, result.candidate.perplexity, result.agreement.mean_kl, seconds))
        print(f"  {setting:5} {method:28} ppl {result.candidate.perplexity:10.2f}  KL {result.agreement.mean_kl:.4f}", flush=True)  # fmt: skip

    score("float", "reference", model, 0.0)
    for name in ("W8A8", "W4A8", "W4A4"):
        recipe = get(name).for_module(model).method
        bits = (recipe.weights.bits, recipe.activations.bits)
        rotation = RotationConfig(rotate_values=True, online_down=True, then=recipe)
        for label, config, data in (
            ("RTN", recipe, None),
            ("SmoothQuant α=0.5", SmoothQuantConfig(0.5, *bits), calib),
            ("rotation + RTN", rotation, None),
            (
                "rotation + GPTQ",
                RotationConfig(rotate_values=True, online_down=True, then=GPTQConfig(recipe.weights)),
                calib,
            ),  # fmt: skip
        ):
            start = time.perf_counter()
            result = quantize_model(model, config, calib=data)
            seconds = time.perf_counter() - start
            candidate = result.model
            if label == "rotation + GPTQ":
                with_activations(candidate, recipe.activations)
            score(name, label, candidate, seconds)
            del result, candidate
    kv4 = get("KV4").kv
    score("KV4", "float model", model, 0.0, kv4)
    plain_rotation = quantize_model(model, RotationConfig(online_down=True))
    score("KV4", "rotation", plain_rotation.model, plain_rotation.seconds, kv4)
    del plain_rotation
    score("KV4", "rotation + V/O", rotated.model, rotated.seconds, kv4)
    print(f"\nload average after: {load_average()}\n")
    print("| setting | method | perplexity | mean KL (nats) | quantize (s) |\n|---|---|---:|---:|---:|")
    for setting, method, ppl, kl, seconds in rows:
        print(f"| {setting} | {method} | {ppl:,.2f} | {kl:.4f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
