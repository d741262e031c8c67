"""Reverse queries: the best format that fits, the largest context and batch, and inputs refused in words."""

from __future__ import annotations

import pytest

from engine.sizing.bestfit import best_format, best_of, check_request, largest_batch, largest_context, verdict
from engine.sizing.catalog import catalog_model
from engine.sizing.estimate import ConfigError, estimate
from engine.sizing.gpus import fits, gpu

GIB = 1024**3


@pytest.fixture(scope="module")
def configs():
    return {
        slug: catalog_model(slug).config() for slug in ("llama-3.1-8b", "mixtral-8x7b-v0.1", "qwen3-30b-a3b")
    }


@pytest.mark.parametrize(
    ("slug", "device", "context", "batch"),
    [
        ("llama-3.1-8b", "RTX 4090", 8192, 1),
        ("llama-3.1-8b", "T4", 16384, 2),
        ("mixtral-8x7b-v0.1", "RTX 4090", 4096, 1),
        ("qwen3-30b-a3b", "L40S", 32768, 2),
    ],
)
def test_the_best_format_always_fits_and_has_the_most_bits(configs, slug, device, context, batch):
    config, device = configs[slug], gpu(device)
    rows = best_format(config, device, 1, context, batch)
    bits = [row.bits_per_weight for row in rows]
    assert bits == sorted(bits, reverse=True)
    assert [row.per_gpu_bytes for row in rows] == sorted((row.per_gpu_bytes for row in rows), reverse=True)
    best = best_of(rows)
    assert best is not None and sum(row.best for row in rows) == 1
    index = rows.index(best)
    assert all(not row.fits for row in rows[:index])  # everything with more bits is too big
    assert all(row.fits for row in rows[index:])
    assert best.headroom_bytes >= 0
    assert fits(estimate(config, best.name, "fp16", context, batch), config, device)
    assert best.label in verdict(rows, device)


def test_nothing_fits_says_so(configs):
    config, device = configs["mixtral-8x7b-v0.1"], gpu("T4")
    rows = best_format(config, device, 1, 32768, 8)
    assert rows and not any(row.fits for row in rows)
    assert best_of(rows) is None
    assert all(row.headroom_bytes < 0 for row in rows)
    assert verdict(rows, device).startswith("Nothing fits on one NVIDIA T4")


def test_a_safety_margin_can_only_push_the_best_down(configs):
    config, device = configs["llama-3.1-8b"], gpu("RTX 4090")
    plain = best_of(best_format(config, device, 1, 8192, 1))
    careful = best_of(best_format(config, device, 1, 8192, 1, margin=8 * GIB))
    assert careful.headroom_bytes >= 8 * GIB
    assert careful.bits_per_weight < plain.bits_per_weight


def test_more_gpus_never_pick_a_worse_format(configs):
    config, device = configs["mixtral-8x7b-v0.1"], gpu("L4")
    best_bits, held = [], []
    for count in (1, 2, 4, 8):
        rows = best_format(config, device, count, 32768, 4, candidates=("bf16", "fp8", "Q4_K_M", "Q2_K"))
        best = best_of(rows)
        best_bits.append(best.bits_per_weight if best else 0.0)
        held.append(rows[0].per_gpu_bytes)
    assert best_bits == sorted(best_bits)
    assert held == sorted(held, reverse=True)
    assert best_bits[0] < best_bits[-1]  # one L4 cannot hold bf16 Mixtral, eight can


@pytest.mark.parametrize("count", [1, 2])
def test_largest_context_and_batch_are_the_edge_of_fitting(configs, count):
    config, device = configs["llama-3.1-8b"], gpu("RTX 4090")
    context = largest_context(config, device, count, "int4-g128", "fp16", batch=2)
    assert 0 < context < 16 * 1024**2
    assert fits(estimate(config, "int4-g128", "fp16", context, 2), config, device, count)
    assert not fits(estimate(config, "int4-g128", "fp16", context + 1, 2), config, device, count)
    batch = largest_batch(config, device, count, "int4-g128", "fp16", context=8192)
    assert batch > 0
    assert fits(estimate(config, "int4-g128", "fp16", 8192, batch), config, device, count)
    assert not fits(estimate(config, "int4-g128", "fp16", 8192, batch + 1), config, device, count)


def test_nothing_fits_means_zero(configs):
    config, device = configs["mixtral-8x7b-v0.1"], gpu("T4")
    assert largest_context(config, device, 1, "bf16") == 0
    assert largest_batch(config, device, 1, "bf16") == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, "GPU count must be from 1 to 64"),
        ({"count": 128}, "GPU count must be from 1 to 64"),
        ({"count": 3}, "power of two"),
        ({"count": 64}, "cannot split 32 attention heads"),
        ({"count": 2.0}, "whole number"),
        ({"context": 0}, "context must be from 1"),
        ({"context": -5}, "context must be from 1"),
        ({"context": 17 * 1024**2}, "context must be from 1 to 16,777,216"),
        ({"batch": 0}, "batch must be from 1"),
        ({"batch": 10**7}, "batch must be from 1 to 65,536"),
        ({"batch": True}, "whole number"),
    ],
)
def test_bad_requests_are_refused_in_words(configs, kwargs, message):
    config = configs["llama-3.1-8b"]
    request = {"count": 1, "context": 4096, "batch": 1, **kwargs}
    with pytest.raises(ConfigError, match=message):
        check_request(config, gpu("H100 80GB SXM"), **request)
    with pytest.raises(ConfigError, match=message):
        best_format(config, gpu("H100 80GB SXM"), **request)


def test_no_tensor_parallel_across_macs(configs):
    with pytest.raises(ConfigError, match="not modelled"):
        best_format(configs["llama-3.1-8b"], gpu("M3 Max"), count=2)
