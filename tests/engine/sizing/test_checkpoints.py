"""Checkpoint recipes: module kinds counted from the config, each priced in its own format, held against
published checkpoint sizes."""

from __future__ import annotations

import re

import pytest

from engine.quant.gguf import gguf_type
from engine.quant.schemes import QuantScheme
from engine.sizing import modules
from engine.sizing.catalog import catalog_model
from engine.sizing.checkpoints import (
    CHECKPOINT_RECIPES,
    CheckpointRecipe,
    checkpoint_bytes,
    module_counts,
    parameters_by_module,
    published_checkpoint,
)
from engine.sizing.estimate import _weights, count_parameters, weight_bytes
from engine.sizing.presets import PRESETS

GIB = 1024**3


@pytest.fixture(scope="module")
def configs():
    slugs = ("gpt-oss-120b", "gpt-oss-20b", "qwen3-30b-a3b", "deepseek-v3", "smollm2-135m-instruct")
    return {slug: catalog_model(slug).config() for slug in slugs}


@pytest.mark.parametrize(("slug", "published_gib"), [("gpt-oss-120b", 60.8), ("gpt-oss-20b", 12.8)])
def test_gpt_oss_recipe_matches_the_published_checkpoint(configs, slug, published_gib):
    """gpt-oss model card, Table 1: the checkpoints (experts MXFP4, the rest bf16) are 60.8 and 12.8 GiB."""
    priced = checkpoint_bytes(configs[slug], "gpt-oss")
    assert priced.total / GIB == pytest.approx(published_gib, rel=0.02)
    assert published_checkpoint(slug).bytes == pytest.approx(published_gib * GIB)


def test_gpt_oss_120b_module_split_matches_the_model_card(configs):
    """Table 1: MLP 114.71B (experts and routers), attention 0.96B, embedding + unembedding 1.16B,
    116.83B in all; expert biases are vectors and stay bf16 while their matrices take MXFP4."""
    counts = parameters_by_module(configs["gpt-oss-120b"])
    assert round((counts["routed_experts"] + counts["router"]) / 1e9, 2) == 114.71
    assert round(counts["attention"] / 1e9, 2) == 0.96
    assert round((counts["embeddings"] + counts["head"]) / 1e9, 2) == 1.16
    assert round(sum(counts.values()) / 1e9, 2) == 116.83
    experts = module_counts(configs["gpt-oss-120b"])["routed_experts"]
    assert experts.vectors == 36 * 128 * (2 * 2880 + 2880)  # gate_up_proj_bias and down_proj_bias
    priced = checkpoint_bytes(configs["gpt-oss-120b"], "gpt-oss")
    matrices = experts.parameters - experts.vectors
    assert priced.routed_experts == pytest.approx(matrices * 4.25 / 8 + experts.vectors * 2)
    assert priced.bits("attention") == 16.0
    assert priced.formats["routed_experts"] == PRESETS["mxfp4"].label


@pytest.mark.parametrize(
    "fmt",
    [
        "bf16",
        "fp32",
        "int4-g128",
        "gptq-int4-g128",
        "nf4-dq",
        "mxfp4",
        "Q8_0",
        QuantScheme.from_label("int4 asym g64"),
    ],
)
@pytest.mark.parametrize("slug", ["smollm2-135m-instruct", "qwen3-30b-a3b"])
def test_uniform_recipe_equals_weight_bytes(configs, slug, fmt):
    """One preset for the whole model prices a bias-free model exactly as the estimate always has."""
    config = configs[slug]
    expected = weight_bytes(count_parameters(config).by_kind, fmt, config.hidden_size)
    assert checkpoint_bytes(config, CheckpointRecipe.uniform(fmt)).total == pytest.approx(
        expected.total, rel=1e-12
    )


@pytest.mark.parametrize(
    ("slug", "output", "output_type"),
    [
        ("smollm2-135m-instruct", "embeddings", "Q8_0"),  # tied; rows of 576 fall back from Q6_K
        ("qwen3-30b-a3b", "head", "Q6_K"),
    ],
)
def test_gguf_mix_recipe_prices_every_tensor_as_llama_cpp(configs, slug, output, output_type):
    config = configs[slug]
    expected = _weights(config, count_parameters(config).by_kind, PRESETS["Q4_K_M"], config.hidden_size)
    priced = checkpoint_bytes(config, "gguf-q4_k_m")
    assert priced.total == pytest.approx(expected.total, rel=1e-12)
    assert priced.bits("norms") == 32.0  # llama.cpp keeps 1-D tensors in F32
    assert priced.bits(output) == pytest.approx(gguf_type(output_type).bits_per_weight)


def test_gguf_type_from_the_sidebar_is_a_format(configs):
    config = configs["smollm2-135m-instruct"]
    priced = checkpoint_bytes(
        config, CheckpointRecipe("q6", "Q6_K linears", {"attention": gguf_type("Q6_K")})
    )
    assert priced.bits("attention") == pytest.approx(6.5625)
    assert priced.bits("dense_mlp") == 16.0  # the default: bf16


def test_deepseek_v3_fp8_matches_the_published_checkpoint_without_mtp(configs):
    """deepseek-ai/DeepSeek-V3 on the Hub is 688.6 GB, which includes the Multi-Token Prediction module
    (README_WEIGHTS.md: 11.5B unique parameters, one more MoE decoder layer plus eh_proj and two norms, and
    stored copies of the 0.9B embedding and 0.9B head) that transformers does not build. We price that
    module with the same recipe (a 62nd layer; eh_proj as an FP8 linear, at bf16 it would add 0.015%) and
    compare the main model with what is left."""
    config = configs["deepseek-v3"]
    main = checkpoint_bytes(config, "deepseek-fp8")
    assert sum(main.parameters.values()) == pytest.approx(671e9, rel=0.001)  # the card's 671B main model
    longer = catalog_model("deepseek-v3").config()
    longer.num_hidden_layers = 62
    extra_layer = checkpoint_bytes(longer, "deepseek-fp8").total - main.total
    hidden = config.hidden_size
    mtp = (
        extra_layer + 2 * hidden * hidden + 2 * hidden * 2 + main.by_kind["embeddings"] + main.by_kind["head"]
    )
    assert main.total == pytest.approx(688.6e9 - mtp, rel=0.02)
    assert main.bits("routed_experts") == pytest.approx(8 + 32 / 128**2)
    assert main.bits("embeddings") == main.bits("head") == 16.0


def test_deepseek_v3_module_kinds(configs):
    counts = parameters_by_module(configs["deepseek-v3"])
    assert counts["dense_mlp"] == 3 * 3 * 7168 * 18432  # first_k_dense_replace = 3 dense layers
    assert counts["shared_experts"] == 58 * 3 * 7168 * 2048
    assert counts["routed_experts"] == 58 * 256 * 3 * 7168 * 2048
    assert counts["router"] == 58 * 256 * 7168


def test_qwen3_moe_splits_routed_experts_from_the_router(configs):
    config = configs["qwen3-30b-a3b"]
    counts = parameters_by_module(config)
    assert counts["routed_experts"] == 48 * 128 * 3 * 2048 * 768
    assert counts["router"] == 48 * 128 * 2048
    assert counts["attention"] == 48 * (4096 * 2048 * 2 + 2 * 512 * 2048)  # q/k norms are norms
    assert "shared_experts" not in counts and "other" not in counts
    bf16 = checkpoint_bytes(config, "bf16")
    assert bf16.total == 61_064_245_248  # the Hub's safetensors index total_size
    nvfp4 = checkpoint_bytes(config, "nvfp4-modelopt")
    assert nvfp4.bits("routed_experts") == pytest.approx(4.5)
    assert nvfp4.bits("router") == nvfp4.bits("embeddings") == 16.0
    unvisited = nvfp4.routed_experts * (1 - 8 / 128)
    assert nvfp4.decode_read_bytes() == pytest.approx(nvfp4.total - nvfp4.by_kind["embeddings"] - unvisited)


def test_unknown_parameters_end_in_other_and_are_reported(configs, monkeypatch):
    """A parameter no pattern knows is counted in "other", kept unquantized, and named."""
    no_norms = tuple((pattern, kind) for pattern, kind in modules.KIND_PATTERNS if kind != "norms")
    monkeypatch.setattr(modules, "KIND_PATTERNS", no_norms)
    modules._build.cache_clear()
    try:
        config = configs["smollm2-135m-instruct"]
        priced = checkpoint_bytes(config, CheckpointRecipe.uniform("int4-g128"))
        assert "norms" not in priced.parameters
        # every layer's input_layernorm and the final norm (post_attention_layernorm reads as attention)
        assert priced.parameters["other"] == (30 + 1) * 576
        assert priced.bits("other") == 16.0
        assert "model.layers.N.input_layernorm.weight" in priced.unclassified
        assert all(not re.search(r"\.\d+\.", name) for name in priced.unclassified)
    finally:
        modules._build.cache_clear()
    assert modules.module_kind("model.layers.0.mystery.weight") == "other"


def test_recipes_check_their_kinds():
    with pytest.raises(ValueError, match="unknown module kind experts"):
        CheckpointRecipe("bad", "bad", {"experts": "mxfp4"})
    assert set(CHECKPOINT_RECIPES) >= {"gpt-oss", "deepseek-fp8", "nvfp4-modelopt", "gguf-q4_k_m"}
    assert hash(CHECKPOINT_RECIPES["gpt-oss"])  # frozen and hashable: usable as a cache key
