"""Loading the offline default model: GGUF conversion (once) vs loading the converted safetensors.

Run: .venv/bin/python -m bench.bench_load   (prints a markdown table for docs/benchmarks.md)
"""

from __future__ import annotations

import os
import platform
import tempfile
import time

import torch


def main() -> None:
    from engine.models.loading import load_model
    from engine.models.sources import ModelSource, convert_gguf, default_gguf_path
    from engine.runtime.generation import GenerationSettings, generate

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["QE_CACHE_DIR"] = cache
        start = time.perf_counter()
        convert_gguf(default_gguf_path())
        rows.append(("convert GGUF -> safetensors (first run)", time.perf_counter() - start))
        start = time.perf_counter()
        convert_gguf(default_gguf_path())
        rows.append(("prepare again (cached, second run)", time.perf_counter() - start))
        load_model(ModelSource())  # warm imports
        start = time.perf_counter()
        loaded = load_model(ModelSource())
        rows.append(("load converted model (float32, CPU)", time.perf_counter() - start))
    generate(loaded.model, loaded.tokenizer, "Hello", GenerationSettings(max_new_tokens=4))
    result = generate(
        loaded.model, loaded.tokenizer, "Tell me about the sea.", GenerationSettings(max_new_tokens=64)
    )
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print("| step | seconds |\n| --- | --- |")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")
    print(
        f"| greedy decode, fp32, batch 1 | {result.decode_tokens_per_s:.1f} tok/s "
        f"(prefill {result.prefill_tokens_per_s:.0f} tok/s, {len(result.token_ids)} tokens) |"
    )


if __name__ == "__main__":
    main()
