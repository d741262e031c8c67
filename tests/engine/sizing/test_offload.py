"""Offload plans: layers or routed experts on the CPU, weights streamed over PCIe, and the speed cliff."""

from __future__ import annotations

import dataclasses

import pytest

from engine.sizing.catalog import catalog_model
from engine.sizing.estimate import ConfigError, estimate
from engine.sizing.gpus import GPU, decode_estimate, gpu
from engine.sizing.offload import (
    EXPERTS_ON_CPU,
    LAYERS_ON_CPU,
    OFFLOAD_MODES,
    STREAMED,
    Host,
    best_gpu_layers,
    model_parts,
    offload_plan,
    speed_cliff,
)

GIB = 1024**3
HOST = Host(ram_bytes=128 * GIB, memory_bandwidth=100e9, pcie_bandwidth=25e9)  # round numbers
# a GPU with round numbers for the hand-worked example: 1 TB/s, 80 GiB
ROUND_GPU = GPU("round", "NVIDIA", 80 * GIB, 1e12, 1e15, 1.0, "test", "Hopper")


@pytest.fixture(scope="module")
def sized():
    """(config, breakdown) per catalog model: dense Llama, Mixtral (8 experts), Qwen3-30B-A3B (128)."""
    out = {}
    for slug in ("llama-3.1-8b", "mixtral-8x7b-v0.1", "qwen3-30b-a3b"):
        config = catalog_model(slug).config()
        out[slug] = config, estimate(config, "Q4_K_M", "fp16", 8192)
    return out


@pytest.mark.parametrize("slug", ["llama-3.1-8b", "mixtral-8x7b-v0.1", "qwen3-30b-a3b"])
def test_speed_never_drops_as_layers_move_to_the_gpu(sized, slug):
    config, breakdown = sized[slug]
    modes = OFFLOAD_MODES if breakdown.parameters.experts else (LAYERS_ON_CPU, STREAMED)
    for mode in modes:
        cliff = speed_cliff(breakdown, config, gpu("RTX 4090"), HOST, mode)
        assert [p.gpu_layers for p in cliff] == list(range(breakdown_layers(config) + 1))
        speeds = [p.tokens_per_s for p in cliff]
        assert speeds == sorted(speeds), mode.label
        assert [p.gpu_bytes for p in cliff] == sorted(p.gpu_bytes for p in cliff), mode.label
        assert [p.cpu_bytes for p in cliff] == sorted((p.cpu_bytes for p in cliff), reverse=True)
        assert cliff[0].tokens_per_s < cliff[-1].tokens_per_s  # the cliff is there


def breakdown_layers(config) -> int:
    return config.get_text_config().num_hidden_layers


@pytest.mark.parametrize("slug", ["llama-3.1-8b", "mixtral-8x7b-v0.1", "qwen3-30b-a3b"])
def test_everything_on_the_gpu_is_the_decode_roofline(sized, slug):
    config, breakdown = sized[slug]
    device = gpu("H100 80GB SXM")
    expected = decode_estimate(breakdown, device).tokens_per_s
    modes = OFFLOAD_MODES if breakdown.parameters.experts else (LAYERS_ON_CPU, STREAMED)
    for mode in modes:
        plan = offload_plan(breakdown, config, device, HOST, breakdown_layers(config), mode)
        assert plan.cpu_seconds == plan.pcie_seconds == 0
        assert plan.tokens_per_s == pytest.approx(expected, rel=1e-9), mode.label


def test_hand_worked_llama_half_on_the_gpu():
    """Llama-3.1-8B bf16, 4,096 tokens, fp16 KV, 16 of 32 layers on the GPU (llama.cpp -ngl 17).

    Parameters: 8,030,261,248 in all; embeddings and the untied head 128,256 x 4,096 = 525,336,576 each;
    the 32 layers (final norm spread over them) 6,979,588,096 / 32 = 218,112,128 each, 436,224,256 bytes.
    KV per layer: 2 x 8 heads x 128 x 2 bytes x 4,096 tokens = 16,777,216 bytes. One layer: 453,001,472.
    GPU: the last 16 layers (7,248,023,552) + head (1,050,673,152) = 8,298,696,704 bytes, read at 1 TB/s:
    8.2987 ms. CPU: the first 16 layers, 7,248,023,552 bytes read at 100 GB/s: 72.480 ms; it also holds
    the embedding table, 1,050,673,152 bytes. 80.779 ms a token: 12.38 tokens/s.
    """
    config = catalog_model("llama-3.1-8b").config()
    breakdown = estimate(config, "bf16", "fp16", 4096)
    plan = offload_plan(breakdown, config, ROUND_GPU, HOST, 16, LAYERS_ON_CPU)
    fixed = breakdown.activations.peak + breakdown.overhead
    assert plan.gpu_bytes - fixed == pytest.approx(8_298_696_704, abs=1)
    assert plan.cpu_bytes == pytest.approx(7_248_023_552 + 1_050_673_152, abs=1)
    assert plan.gpu_seconds == pytest.approx(8.298696704e-3)
    assert plan.cpu_seconds == pytest.approx(72.48023552e-3)
    assert plan.pcie_seconds == 0
    assert plan.tokens_per_s == pytest.approx(1 / 80.778932224e-3)
    assert plan.flags == "llama.cpp -ngl 17"
    assert plan.fits_gpu and plan.fits_ram


def test_layers_rule_follows_llama_cpp(sized):
    """-ngl 0: all on the CPU; the output layer is the first slot to go to the GPU; embeddings never do."""
    config, breakdown = sized["llama-3.1-8b"]
    none = offload_plan(breakdown, config, ROUND_GPU, HOST, 0)
    fixed = breakdown.activations.peak + breakdown.overhead
    assert (
        none.gpu_bytes == pytest.approx(fixed) and none.gpu_seconds == 0 and none.flags == "llama.cpp -ngl 0"
    )
    one = offload_plan(breakdown, config, ROUND_GPU, HOST, 1)
    head = breakdown.weights.by_kind["head"]
    assert one.gpu_bytes - fixed > head
    every = offload_plan(breakdown, config, ROUND_GPU, HOST, 32)
    assert every.cpu_bytes == pytest.approx(breakdown.weights.by_kind["embeddings"])
    with pytest.raises(ConfigError, match="from 0 to 32"):
        offload_plan(breakdown, config, ROUND_GPU, HOST, 33)


def test_expert_offload_keeps_everything_else_on_the_gpu(sized):
    config, breakdown = sized["qwen3-30b-a3b"]
    counts, by_kind = breakdown.parameters, breakdown.weights.by_kind
    expert_bytes = counts.routed_experts * by_kind["mlp"] / counts.by_kind["mlp"]
    fixed = breakdown.activations.peak + breakdown.overhead
    plan = offload_plan(breakdown, config, ROUND_GPU, HOST, 0, EXPERTS_ON_CPU)  # --cpu-moe
    non_expert = breakdown.weights.total - expert_bytes - by_kind["embeddings"]
    assert plan.gpu_bytes == pytest.approx(non_expert + breakdown.kv_cache + fixed)
    assert plan.cpu_bytes == pytest.approx(expert_bytes + by_kind["embeddings"])
    # a token reads 8 of 128 experts per layer from host memory
    assert plan.cpu_seconds * HOST.memory_bandwidth == pytest.approx(expert_bytes * 8 / 128, rel=1e-6)
    assert plan.flags == "llama.cpp -ngl 99 --cpu-moe"
    partial = offload_plan(breakdown, config, ROUND_GPU, HOST, 40, EXPERTS_ON_CPU)
    assert partial.flags == "llama.cpp -ngl 99 --n-cpu-moe 8"
    assert partial.cpu_bytes == pytest.approx(expert_bytes * 8 / 48 + by_kind["embeddings"])


def test_expert_offload_needs_experts(sized):
    config, breakdown = sized["llama-3.1-8b"]
    with pytest.raises(ConfigError, match="no routed experts"):
        offload_plan(breakdown, config, ROUND_GPU, HOST, 0, EXPERTS_ON_CPU)


def test_streaming_moves_every_offloaded_byte_over_pcie(sized):
    """accelerate copies whole modules: all experts of a streamed MoE layer cross PCIe, not the active ones."""
    config, breakdown = sized["mixtral-8x7b-v0.1"]
    by_kind = breakdown.weights.by_kind
    layer = (breakdown.weights.total - by_kind["embeddings"] - by_kind["head"]) / 32
    plan = offload_plan(breakdown, config, ROUND_GPU, HOST, 20, STREAMED)
    assert plan.pcie_seconds * HOST.pcie_bandwidth == pytest.approx(12 * layer + by_kind["head"])
    assert plan.cpu_seconds == 0
    assert plan.gpu_seconds == pytest.approx(decode_estimate(breakdown, ROUND_GPU).seconds_per_step)


def test_best_gpu_layers_is_the_most_that_fit(sized):
    device = gpu("RTX 4090")
    for slug in ("llama-3.1-8b", "mixtral-8x7b-v0.1"):
        config, breakdown = sized[slug]
        best = best_gpu_layers(breakdown, config, device, HOST)
        cliff = speed_cliff(breakdown, config, device, HOST)
        assert cliff[best].fits_gpu
        assert best == len(cliff) - 1 or not cliff[best + 1].fits_gpu
    config, breakdown = sized["mixtral-8x7b-v0.1"]  # about 26 GiB in Q4_K_M: not all of it on 24 GB
    assert 0 < best_gpu_layers(breakdown, config, device, HOST) < 32


def test_sliding_window_layers_hold_less_kv():
    """The estimate's per-layer KV is used; without it, the cache is split by the tokens each layer keeps,
    and both agree on Gemma-2 (even layers slide over 4,096 tokens, odd layers attend fully)."""
    config = catalog_model("gemma-2-9b").config()
    breakdown = estimate(config, "bf16", "fp16", 32768)
    given = model_parts(breakdown, config).kv_by_layer
    split = model_parts(dataclasses.replace(breakdown, kv_by_layer=()), config).kv_by_layer
    for kv in (given, split):
        assert sum(kv) == pytest.approx(breakdown.kv_cache)
        assert kv[0] * 8 == pytest.approx(kv[1])  # 4,096 of 32,768 tokens
    assert split == pytest.approx(given)


@pytest.mark.parametrize("field", ["ram_bytes", "memory_bandwidth", "pcie_bandwidth"])
def test_host_rejects_nonsense(field):
    with pytest.raises(ConfigError, match="must be a positive number"):
        Host(**{"ram_bytes": 64 * GIB, field: 0})
