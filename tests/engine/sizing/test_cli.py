"""`python -m engine.sizing`: the V cache's own format and the help's list of weight presets."""

import json

from engine.sizing.cli import _parser, main
from engine.sizing.presets import PRESETS

# Llama-3.1-8B caches 32 layers x 2 x 8 heads x 128 = 65,536 values per token
ARGS = ["--config", "llama-3.1-8b", "--context", "32768", "--batch", "4", "--gpu", "H100"]


def test_kv_values_prices_the_v_cache_at_its_own_format(capsys):
    # K fp8: 8 bits; V int4 in groups of 64 with an fp16 scale and zero: 4.5 bits; 6.25 bits on average
    assert main([*ARGS, "--kv", "fp8", "--kv-values", "int4"]) == 0
    out = capsys.readouterr().out
    assert "K fp8 (8 bits/value), V int4 (4.5 bits/value)" in out
    assert "KV 51,200 bytes/token" in out  # 65,536 x 6.25 / 8
    assert "|   6.25 |" in out  # KV GiB: 51,200 bytes x 32,768 tokens x 4 sequences
    assert main([*ARGS, "--kv", "fp8", "--kv-values", "int4", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["kv_cache_bytes"] == 51_200 * 32_768 * 4
    assert row["kv"] == "K fp8 (8 bits/value), V int4 (4.5 bits/value)"


def test_kv_values_defaults_to_the_keys_format(capsys):
    assert main([*ARGS, "--kv", "fp8", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["kv_cache_bytes"] == 65_536 * 32_768 * 4  # 8 bits for keys and values
    assert main([*ARGS, "--kv-values", "int9"]) == 2
    assert "unknown KV-cache format 'int9'" in capsys.readouterr().err


def test_help_lists_every_weight_preset():
    text = "".join(_parser().format_help().split())  # argparse wraps lines, at hyphens too
    assert all(name in text for name in PRESETS)
    assert "Q3_K_M" in text and "--kv-values" in text


def test_offload_best_fit_and_vllm_answers_in_json(capsys):
    """Mixtral Q4_K_M on a 24 GB card: routed experts of the first layers on the CPU; the best format for
    Llama-3.1-8B on one RTX 4090 fits and has the most bits of those that fit; vLLM's lines follow."""
    args = ["--config", "mixtral-8x7b-v0.1", "--weights", "Q4_K_M", "--gpu", "RTX 4090", "--json"]
    assert main([*args, "--offload", "experts", "--ram", "64"]) == 0
    answer = json.loads(capsys.readouterr().out)
    offload = answer["offload"]
    assert answer["estimates"][0]["weights"] == "GGUF Q4_K_M"
    assert offload["fits_gpu"] and offload["flags"].startswith("llama.cpp -ngl 99 --n-cpu-moe")
    speeds = [row["tokens_per_s"] for row in offload["speed_cliff"]]
    assert speeds == sorted(speeds)  # more layers on the GPU is never slower
    assert (
        main(["--config", "llama-3.1-8b", "--gpu", "RTX 4090", "--best-fit", "--context", "8192", "--json"])
        == 0
    )
    walk = json.loads(capsys.readouterr().out)["best_fit"]["formats"]
    best = [row for row in walk if row["best"]]
    assert len(best) == 1 and best[0]["fits"] and best[0]["headroom_bytes"] >= 0
    assert all(not row["fits"] for row in walk if row["bits_per_weight"] > best[0]["bits_per_weight"])
    assert main(["--config", "gpt-oss-120b", "--weights", "gpt-oss", "--engine", "vllm", "--gpu", "H100 80GB SXM",
                 "--vllm", "0.9", "--context", "131072", "--json"]) == 0  # fmt: skip
    vllm = json.loads(capsys.readouterr().out)
    assert vllm["estimates"][0]["weights"].startswith("gpt-oss: routed experts MXFP4")
    assert vllm["vllm"]["gpu_kv_cache_tokens"] > 131_072 and vllm["vllm"]["kv_cache_groups"] == 2


def test_questions_need_a_gpu_and_sane_numbers(capsys):
    assert main(["--config", "llama-3.1-8b", "--best-fit"]) == 2
    assert "need --gpu" in capsys.readouterr().err
    assert main(["--config", "llama-3.1-8b", "--gpu", "H100", "--best-fit", "--gpus", "3"]) == 2
    assert "power of two" in capsys.readouterr().err
    assert main(["--config", "llama-3.1-8b", "--context", "-5"]) == 2
    assert "context" in capsys.readouterr().err
    assert main(["--config", "llama-3.1-8b", "--gpu", "4090", "--offload", "experts"]) == 2
    assert "no routed experts" in capsys.readouterr().err
