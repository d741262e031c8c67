"""Statistics collection and outlier analyses: hooks always go, planted outliers are found, numbers add up."""

from __future__ import annotations

import math

import pytest
import torch

from engine.analysis import outliers
from engine.analysis.site_stats import HIST_BINS, StatsError, _Accumulator, histogram_edges
from engine.analysis.stats import StatsCollector, collect_stats
from engine.analysis.weight_stats import weight_numbers
from engine.quant.schemes import QuantScheme
from tests.conftest import build_tiny_llama

HIDDEN, LAYERS, KV_HEADS, HEAD_DIM = 64, 2, 2, 16
READERS = ("self_attn.q_proj", "mlp.gate_proj")  # the linear inputs that read the residual stream


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _ids(count: int = 3, window: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 96, (count, window), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_stats():
    model = build_tiny_llama()
    return model, collect_stats(model, [_ids()[:2], _ids()[2:]], sample_tokens=16, kivi_block=16)


def test_hooks_are_removed_after_success():
    model = build_tiny_llama()
    before = _hook_count(model)
    with StatsCollector(model) as collector:
        assert _hook_count(model) > before  # the hooks really were there
        collector.run(_ids(1))
    assert _hook_count(model) == before
    collect_stats(model, _ids(2))
    assert _hook_count(model) == before


def test_hooks_are_removed_after_an_exception():
    model = build_tiny_llama()
    before = _hook_count(model)
    with pytest.raises(IndexError), StatsCollector(model) as collector:
        collector.run(torch.full((1, 8), 10_000))  # token id beyond the vocabulary: embedding raises
    assert _hook_count(model) == before

    def progress(fraction, message):
        if "layer 2" in message:
            raise KeyboardInterrupt  # a user stopping the run mid-forward

    with pytest.raises(KeyboardInterrupt):
        collect_stats(model, _ids(2), progress=progress)
    assert _hook_count(model) == before


def test_bad_targets_and_inputs_are_explained():
    model = build_tiny_llama()
    with pytest.raises(StatsError, match="subset of"):
        StatsCollector(model, targets=("weights",))
    with pytest.raises(StatsError, match=r"\(count, window\)"):
        collect_stats(model, torch.zeros(5, dtype=torch.long))
    with pytest.raises(StatsError, match="decoder layers"):
        StatsCollector(torch.nn.Linear(4, 4))


def test_sites_layout_and_shared_inputs(tiny_stats):
    model, stats = tiny_stats
    assert stats.tokens == 3 * 48 and stats.windows == 3 and stats.window == 48
    labels = [site.label for site in stats.sites if site.layer == 0]
    assert labels == [
        "q_proj·k_proj·v_proj in",
        "o_proj in",
        "gate_proj·up_proj in",
        "down_proj in",
        "residual",
        "key",
        "value",
    ]
    down = stats.site("model.layers.1.mlp.down_proj")
    assert down.channels == 128 and down.tokens == 144 and down.sample.shape == (16, 128)
    key = stats.site("model.layers.1.key")
    assert key.heads == KV_HEADS and key.channels == KV_HEADS * HEAD_DIM
    assert stats.input_token_max.shape == (144, HIDDEN)
    both = torch.stack([stats.site(f"model.layers.{i}.{m}").absmax for i in (0, 1) for m in READERS])
    torch.testing.assert_close(stats.input_token_max.float().amax(0), both.amax(0), rtol=1e-3, atol=1e-3)
    assert stats.kivi_sqnr.shape == (LAYERS, 2, 2, 3, KV_HEADS)


def test_keys_are_recorded_after_rope():
    model = build_tiny_llama()
    ids = _ids(1, 32)
    stats = collect_stats(model, ids, targets=("kv",), sample_tokens=32)
    raw = {}
    handle = model.model.layers[1].self_attn.k_proj.register_forward_hook(
        lambda module, args, output: raw.setdefault("k", output[0])  # (tokens, heads * head_dim)
    )
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
    handle.remove()
    keys = cache.layers[1].keys[0].permute(1, 0, 2).reshape(32, -1)  # (tokens, heads * head_dim)
    torch.testing.assert_close(stats.site("model.layers.1.key").sample, keys)
    torch.testing.assert_close(keys[0], raw["k"][0])  # RoPE leaves position 0 alone ...
    assert not torch.allclose(keys[5], raw["k"][5], atol=1e-3)  # ... and rotates the rest
    assert [s.kind for s in stats.sites] == ["key", "value"] * LAYERS


def test_running_moments_match_direct_computation():
    generator = torch.Generator().manual_seed(1)
    chunks = [torch.randn(n, 6, generator=generator).pow(3) * 2 + 5 for n in (7, 40, 13)]  # skewed, offset
    accumulator = _Accumulator(sample_tokens=4)
    for chunk in chunks:
        accumulator.update(chunk, chunk)
    site = accumulator.finish(name="x", kind="activation", layer=0, label="x", consumers=())
    x = torch.cat(chunks).double()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    kurtosis = ((x - mean) ** 4).mean(0) / std**4
    torch.testing.assert_close(site.mean.double(), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(site.std.double(), std, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(site.kurtosis.double(), kurtosis, rtol=1e-3, atol=1e-3)
    whole = ((x - x.mean()) ** 4).mean() / x.var(unbiased=False) ** 2
    assert site.tensor_kurtosis == pytest.approx(float(whole), rel=1e-3)
    torch.testing.assert_close(site.absmax, x.abs().amax(0).float())
    torch.testing.assert_close(site.token_absmax, x.abs().amax(1).float())
    assert int(site.histogram.sum()) == x.numel()
    edges = histogram_edges()
    assert edges.numel() == HIST_BINS + 2
    peak_bin = int(torch.searchsorted(edges, x.abs().max().float(), right=True)) - 1
    assert site.histogram[peak_bin] >= 1 and site.histogram[peak_bin + 1 :].sum() == 0
    torch.testing.assert_close(site.sample, chunks[0][:4])


def _planted_model(where: str):
    """A tiny Llama with one planted outlier: embedding column 7 (x300, the residual stream), layer 1's
    attention norm weight 13 (x1000, the q/k/v input), or a constant offset on layer 0's key channel 7
    (a slow RoPE frequency, so the channel stays large on every token, as in real models)."""
    model = build_tiny_llama(seed=3, attention_bias=True)
    with torch.no_grad():
        if where == "residual":
            model.model.embed_tokens.weight[:, 7] *= 300.0
        elif where == "norm":
            model.model.layers[1].input_layernorm.weight[13] = 1000.0
        else:
            model.model.layers[0].self_attn.k_proj.bias[7] = 3.0
    return model


def test_planted_residual_channel_is_found():
    model = _planted_model("residual")
    ids = _ids(4, 64, seed=2)
    stats = collect_stats(model, ids, sample_tokens=16)
    top = outliers.residual_outliers(stats, ratio=10.0)[0]
    assert top["channel"] == 7
    planted = float(model.model.embed_tokens.weight.detach()[ids.flatten(), 7].abs().max())
    assert 0.8 * planted < top["max |x|"] < 1.2 * planted
    assert top["layers ≥ 10× median"] == LAYERS and top["× median"] > 50
    residual = stats.by_kind("residual")[0]
    assert outliers.notable_channels(residual.absmax, top=3, ratio=10.0) == [7]


def test_planted_activation_feature_meets_the_llm_int8_criteria():
    stats = collect_stats(_planted_model("norm"), _ids(4, 64, seed=2), sample_tokens=16)
    qkv_in = stats.site("model.layers.1.self_attn.q_proj")
    assert int(qkv_in.absmax.argmax()) == 13
    rows = outliers.llm_int8_outliers(stats, threshold=20.0)
    first = rows[0]
    assert first["feature dim"] == 13 and first["systematic"]
    assert first["% layers"] == pytest.approx(50.0)  # layer 1 of 2
    assert first["% tokens"] > 50 and first["max |x|"] == pytest.approx(float(qkv_in.absmax[13]))
    assert not any(row["systematic"] for row in rows[1:])
    labels, layers, values = outliers.site_matrix(stats, ("activation",), "outlier channels", 20.0)
    assert layers == [0, 1] and values[labels.index("q_proj·k_proj·v_proj in"), 1] >= 1


def test_fixed_key_channel_favours_per_channel_quantization():
    # blocks of 16 tokens per channel vs one head (16 channels) per token: the same scale overhead
    stats = collect_stats(_planted_model("key"), _ids(4, 64, seed=2), sample_tokens=16, kivi_block=HEAD_DIM)
    rows = outliers.kivi_summary(stats, layer=0)
    sqnr = {(r["tensor"], r["layout"], r["bits"], r["head"]): r["SQNR (dB)"] for r in rows}
    for bits in (4, 2):  # head 0 holds the planted channel; values and head 1 have no preference
        assert sqnr[("key", "per-channel", bits, 0)] > sqnr[("key", "per-token", bits, 0)] + 4
        for tensor, head in (("value", 0), ("key", 1)):
            gap = sqnr[(tensor, "per-channel", bits, head)] - sqnr[(tensor, "per-token", bits, head)]
            assert abs(gap) < 1.5
    assert sqnr[("key", "per-channel", 8, 0)] > sqnr[("key", "per-channel", 4, 0)] + 15
    contrast = outliers.kv_contrast(stats)[0]
    assert contrast["key max/median"] > 2 * contrast["value max/median"]
    assert len(outliers.kivi_summary(stats)) == 2 * 2 * 3


def test_sensitivity_ranks_every_tensor(tiny_stats):
    model, stats = tiny_stats
    int4 = outliers.sensitivity(stats, model, QuantScheme(4, granularity="channel"))
    int8 = outliers.sensitivity(stats, model, QuantScheme(8, granularity="channel"))
    assert {r["kind"] for r in int4} == {"weight", "activation", "key", "value"}
    assert len(int4) == LAYERS * (7 + 4 + 2)  # 7 weights, 4 activation sites, keys, values per layer
    by_name = {(r["name"], r["kind"]): r["SQNR (dB)"] for r in int8}
    for row in int4:
        assert by_name[(row["name"], row["kind"])] > row["SQNR (dB)"] + 15
    values = [r["SQNR (dB)"] for r in int4]
    assert values == sorted(values)  # worst first
    worst = outliers.layer_sensitivity(int4)
    assert {(r["layer"], r["kind"]) for r in worst} == {
        (layer, kind) for layer in range(LAYERS) for kind in ("weight", "activation", "key", "value")
    }
    too_big = outliers.sensitivity(stats, model, QuantScheme(4, granularity="group", group_size=48))
    skipped = [r for r in too_big if math.isnan(r["SQNR (dB)"])]
    assert skipped and all("does not divide" in r["note"] for r in skipped)


def test_weight_stats_find_a_planted_input_channel():
    model = build_tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[:, 3] *= 25.0
    found = {w.name: w for w in outliers.weight_stats(model)}
    assert len(found) == LAYERS * 7 + 1  # every linear in the layers, plus lm_head
    down = found["model.layers.1.mlp.down_proj.weight"]
    assert down.shape == (HIDDEN, 128) and int(down.in_absmax.argmax()) == 3
    assert float(down.in_absmax[3] / down.in_absmax.median()) > 15 and down.kurtosis > 10
    assert outliers.notable_channels(down.in_absmax, top=3) == [3]
    modules, layers, values = outliers.weight_matrix(list(found.values()), "max/median input channel")
    assert values[modules.index("down_proj"), 1] > 5 * values[modules.index("down_proj"), 0]


def test_gaussian_weights_have_gaussian_statistics():
    gaussian = torch.randn(512, 2048, generator=torch.Generator().manual_seed(0))
    numbers = weight_numbers(gaussian, k=3.0)
    assert numbers["kurtosis"] == pytest.approx(3.0, abs=0.05)
    assert numbers["beyond_k"] == pytest.approx(0.0027, abs=0.0005)
    assert float(numbers["out_kurtosis"].median()) == pytest.approx(3.0, abs=0.2)
    assert float(numbers["in_beyond_k"].mean()) == pytest.approx(0.0027, abs=0.001)


def test_analyses_explain_missing_targets():
    stats = collect_stats(build_tiny_llama(), _ids(1, 16), targets=("residual",))
    assert stats.kivi_sqnr is None and stats.input_token_max is None and len(stats.sites) == LAYERS
    with pytest.raises(ValueError, match="'kv' target"):
        outliers.kv_contrast(stats)
    with pytest.raises(ValueError, match="'activations' target"):
        outliers.llm_int8_outliers(stats)
    with pytest.raises(ValueError, match="unknown statistic"):
        outliers.site_matrix(stats, ("residual",), "median")


@pytest.mark.slow
def test_default_model_outliers(default_loaded):
    """SmolLM2-135M: channel 507 dominates the residual stream; keys have outlier channels, values not."""
    from engine.models.data import WindowSpec, load_text, token_windows

    ids = token_windows(default_loaded.tokenizer, load_text("britannica"), WindowSpec(count=2))
    stats = collect_stats(default_loaded.model, ids)
    top = outliers.residual_outliers(stats)[0]
    assert top["channel"] == 507 and top["max |x|"] > 5_000 and top["× median"] > 50
    features = [row["feature dim"] for row in outliers.llm_int8_outliers(stats) if row["systematic"]]
    assert 247 in features
    contrast = outliers.kv_contrast(stats)
    key_ratio = sorted(row["key max/median"] for row in contrast)[len(contrast) // 2]
    value_ratio = sorted(row["value max/median"] for row in contrast)[len(contrast) // 2]
    assert key_ratio > 2.5 and key_ratio > 1.5 * value_ratio
    summary = {(r["tensor"], r["layout"], r["bits"]): r["SQNR (dB)"] for r in outliers.kivi_summary(stats)}
    for bits in (4, 2):
        assert summary[("key", "per-channel", bits)] > summary[("key", "per-token", bits)] + 3
