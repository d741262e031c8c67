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
