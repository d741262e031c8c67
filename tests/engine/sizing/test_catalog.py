"""The model catalog: every file is well formed, builds a config, and counts to its published size."""

from __future__ import annotations

import json
import time

import pytest

from engine.sizing.catalog import (
    CATALOG_DIR,
    FIELD_ORDER,
    FIELDS,
    OPTIONAL_FIELDS,
    CatalogModel,
    _load,
    catalog_model,
    catalog_models,
)
from engine.sizing.estimate import parameters_by_kind

PATHS = sorted(CATALOG_DIR.glob("*.json"))
SLUGS = [path.stem for path in PATHS]
TOLERANCE = 0.001  # built on the meta device vs published: 0.1%
# Models whose only published size is a nominal figure (the count is 0.42% below "66B"); the source says so.
NOMINAL_ONLY = {"opt-66b": 0.005}


def test_there_are_enough_models():
    assert len(PATHS) >= 41
    assert len(catalog_models()) == len(PATHS)


@pytest.mark.parametrize("path", PATHS, ids=SLUGS)
def test_file_is_well_formed(path):
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(FIELDS) <= set(data)
    assert list(data) == [name for name in FIELD_ORDER if name in data]  # required and optional, in order
    assert path.stem == path.stem.lower() and " " not in path.stem
    for key in ("name", "hub_id", "family", "parameters_source", "notes"):
        assert isinstance(data[key], str) and data[key].strip(), key
    assert "/" in data["hub_id"]
    assert isinstance(data["published_parameters"], int) and data["published_parameters"] > 0
    if "published_precision" in data:  # a rounded figure: the unit it was rounded to, and the source says so
        assert isinstance(data["published_precision"], int) and data["published_precision"] > 0
        assert data["published_parameters"] % data["published_precision"] == 0
        assert "rounded" in data["parameters_source"]
    config = data["config"]
    assert isinstance(config.get("model_type"), str)
    assert "auto_map" not in config and "quantization_config" not in config


@pytest.mark.parametrize("slug", SLUGS)
def test_config_builds(slug):
    from transformers import PretrainedConfig

    model = catalog_model(slug)
    config = model.config()
    assert isinstance(config, PretrainedConfig)
    assert config.model_type == model.config_dict["model_type"]


@pytest.mark.parametrize("slug", SLUGS)
def test_meta_device_count_matches_published(slug):
    model = catalog_model(slug)
    config = model.config()
    start = time.perf_counter()
    counted = sum(parameters_by_kind(config).values())
    seconds = time.perf_counter() - start
    published = model.published_parameters
    # A rounded figure ("8.2B") allows half its rounding unit; an exact one 0.1% (or its declared nominal slack).
    allowed = model.published_margin or NOMINAL_ONLY.get(slug, TOLERANCE) * published
    assert abs(counted - published) <= allowed, (
        f"{slug}: counted {counted:,} vs published {published:,} "
        f"({100 * (counted - published) / published:+.4f}%, built in {seconds:.1f} s)"
    )


def test_nominal_exceptions_are_declared_in_the_data():
    for slug in NOMINAL_ONLY:
        assert "nominal" in catalog_model(slug).parameters_source.lower()


def test_rounded_figures_declare_their_precision(tmp_path):
    jamba = catalog_model("jamba-v0.1")
    assert (jamba.published_precision, jamba.published_margin) == (100_000_000, 50_000_000)
    exact = catalog_model("qwen3-8b")
    assert (exact.published_precision, exact.published_margin) == (None, 0.0)
    data = json.loads((CATALOG_DIR / "qwen3-8b.json").read_text(encoding="utf-8"))
    for bad in (0, -1, True, 1.5, data["published_parameters"]):
        fields = {**data, "published_precision": bad}
        (tmp_path / "bad.json").write_text(json.dumps(fields), encoding="utf-8")
        with pytest.raises(ValueError, match="published_precision"):
            _load(tmp_path / "bad.json")
    (tmp_path / "typo.json").write_text(json.dumps({**data, "published_precison": 10}), encoding="utf-8")
    with pytest.raises(ValueError, match="unknown field published_precison"):
        _load(tmp_path / "typo.json")
    assert OPTIONAL_FIELDS == ("published_precision",)


def test_sorted_by_family_then_size():
    models = catalog_models()
    keys = [(m.family.lower(), m.published_parameters) for m in models]
    assert keys == sorted(keys)
    assert models is not catalog_models()  # callers get their own list


def test_lookup_by_slug_name_or_hub_id():
    by_slug = catalog_model("llama-3.1-8b")
    assert catalog_model("Llama-3.1-8B") is by_slug
    assert catalog_model("meta-llama/Llama-3.1-8B") is by_slug
    assert catalog_model("  LLAMA-3.1-8B ") is by_slug
    assert isinstance(by_slug, CatalogModel) and by_slug.published_parameters == 8_030_261_248


def test_unknown_name_lists_close_matches():
    with pytest.raises(KeyError, match="llama-3.1-8b"):
        catalog_model("llama-3.1-8")
    with pytest.raises(KeyError, match="No catalog model"):
        catalog_model("zzzzzz")


def test_config_is_fresh_each_time():
    model = catalog_model("gemma-3-1b-it")
    first = model.config()
    first.num_hidden_layers = 1
    first.rope_parameters = None
    assert model.config().num_hidden_layers == 26
    assert model.config_dict["num_hidden_layers"] == 26


def test_memory_relevant_fields_survive():
    deepseek = catalog_model("deepseek-v3").config()
    assert (deepseek.kv_lora_rank, deepseek.qk_rope_head_dim, deepseek.n_routed_experts) == (512, 64, 256)
    gemma = catalog_model("gemma-3-1b-it").config()
    assert gemma.layer_types.count("full_attention") == 4 and gemma.sliding_window == 512
    assert catalog_model("mistral-7b-v0.1").config().sliding_window == 4096
    assert catalog_model("llama-3.2-1b").config().tie_word_embeddings is True


def _kinds(config) -> dict[str, int]:
    return {kind: config.layer_types.count(kind) for kind in sorted(set(config.layer_types))}


# Per-layer kinds and the state fields the KV / state sizing reads, as transformers derives them from each
# published config (layer_types from full_attention_interval, attn_layer_period/offset, hybrid_override_pattern,
# no_rope_layers or the sliding pattern).
HYBRIDS = {
    "qwen3-next-80b-a3b-instruct": (
        {"full_attention": 12, "linear_attention": 36},
        {
            "num_key_value_heads": 2,
            "head_dim": 256,
            "linear_num_key_heads": 16,
            "linear_num_value_heads": 32,
            "linear_key_head_dim": 128,
            "linear_value_head_dim": 128,
            "linear_conv_kernel_dim": 4,
        },
    ),
    "jamba-v0.1": (
        {"full_attention": 4, "linear_attention": 28},
        {
            "num_key_value_heads": 8,
            "attn_layer_period": 8,
            "attn_layer_offset": 4,
            "mamba_d_state": 16,
            "mamba_d_conv": 4,
            "mamba_expand": 2,
            "expert_layer_period": 2,
            "expert_layer_offset": 1,
        },
    ),
    "nemotron-h-8b-base-8k": (
        {"full_attention": 4, "linear_attention": 24, "mlp": 24},
        {
            "num_key_value_heads": 8,
            "head_dim": 128,
            "mamba_num_heads": 128,
            "mamba_head_dim": 64,
            "ssm_state_size": 128,
            "n_groups": 8,
            "conv_kernel": 4,
        },
    ),
    "falcon-h1-7b-instruct": (
        {"hybrid": 44},
        {
            "num_key_value_heads": 2,
            "head_dim": 128,
            "mamba_d_ssm": 3072,
            "mamba_n_heads": 24,
            "mamba_d_head": 128,
            "mamba_d_state": 256,
            "mamba_n_groups": 1,
            "mamba_d_conv": 4,
        },
    ),
    "llama-4-scout-17b-16e-instruct": (
        {"chunked_attention": 36, "full_attention": 12},
        {"num_key_value_heads": 8, "head_dim": 128, "attention_chunk_size": 8192},
    ),
    "gemma-3-27b-it-text": (
        {"full_attention": 10, "sliding_attention": 52},
        {"num_key_value_heads": 16, "head_dim": 128, "sliding_window": 1024},
    ),
}


@pytest.mark.parametrize("slug", sorted(HYBRIDS))
def test_hybrid_layer_kinds_and_state_fields(slug):
    kinds, fields = HYBRIDS[slug]
    config = catalog_model(slug).config()
    assert _kinds(config) == kinds and sum(kinds.values()) == config.num_hidden_layers
    assert {name: getattr(config, name) for name in fields} == fields
