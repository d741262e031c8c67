"""Untrusted config.json uploads: clear ConfigErrors for anything odd, never a crash; fuzzed."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.sizing.configs import config_from_dict, config_from_json, load_config
from engine.sizing.estimate import ConfigError, estimate

GOOD = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
}


def test_a_good_config_is_sized():
    breakdown = estimate(config_from_json(json.dumps(GOOD).encode()), "bf16", context=16)
    assert breakdown.parameters.total > 0 and breakdown.kv_bytes_per_token == 2 * 2 * 2 * 16 * 2


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty"),
        (b"\xff\xfe\x00garbage", "UTF-8"),
        (b"[1, 2, 3]", "JSON object"),
        (b"{" * 100_000 + b"}" * 100_000, "UTF-8 JSON|larger"),
        (b" " * 3_000_000, "larger"),
        (json.dumps({**GOOD, "model_type": "banana"}).encode(), "not an architecture"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "model_type"}).encode(), "not an architecture"),
        (json.dumps({**GOOD, "auto_map": {"AutoModel": "x.Y"}}).encode(), "custom code"),
        (json.dumps({**GOOD, "num_hidden_layers": 0}).encode(), "positive"),
        (json.dumps({**GOOD, "num_hidden_layers": -3}).encode(), "positive"),
        (json.dumps({**GOOD, "hidden_size": "64"}).encode(), "integer"),
        (json.dumps({**GOOD, "hidden_size": 1e9}).encode(), "integer"),
        (json.dumps({**GOOD, "num_hidden_layers": 10**9}).encode(), "beyond any real model"),
        (json.dumps({**GOOD, "vocab_size": 10**12}).encode(), "beyond any real model"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "hidden_size"}).encode(), "no hidden_size"),
    ],
)
def test_bad_uploads_get_a_specific_message(payload, message):
    with pytest.raises(ConfigError, match=message):
        config_from_json(payload)


def test_unknown_catalog_name_suggests_close_matches():
    with pytest.raises(ConfigError, match="llama-3.1-8b|Llama-3.1-8B"):
        load_config("llama-3.1-8")


def test_hub_id_offline_is_explained():
    with pytest.raises(
        ConfigError, match="cannot reach the Hugging Face Hub|Could not fetch|not a valid Hub id"
    ):
        load_config("some-org/some-model-that-is-not-here")


FIELD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
)
FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "sliding_window",
    "max_position_embeddings",
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model_type=st.sampled_from(["llama", "mistral", "qwen2", "gemma2", "banana"]),
    changes=st.dictionaries(st.sampled_from(FIELDS), FIELD_VALUES, max_size=4),
    dropped=st.sets(st.sampled_from(FIELDS), max_size=2),
)
def test_fuzzed_configs_give_an_estimate_or_a_config_error(model_type, changes, dropped):
    fields = {**GOOD, "model_type": model_type, **changes}
    for name in dropped:
        fields.pop(name, None)
    try:
        config = config_from_dict(fields)
        breakdown = estimate(config, "int4-g128", "int8", context=32, batch=2)
    except ConfigError as exc:
        assert str(exc)  # a message for the user, never an unrelated exception type
        return
    assert breakdown.total > 0 and breakdown.weights.total > 0


def test_sizes_within_limits_are_built_without_allocating():
    """Issue 22: each parameter used to be created on the CPU before moving to the meta device, so a
    4M-token × 131,072-channel embedding (2 TiB) failed in the C++ allocator although every size is
    within SIZE_LIMITS. On the meta device nothing is allocated; an OPT with 2^30 learned positions too."""
    huge = config_from_dict(
        {**GOOD, "hidden_size": 131_072, "num_attention_heads": 1024, "vocab_size": 4_194_304}
    )
    breakdown = estimate(huge, "int4-g128", "int8", context=32, batch=1)
    assert breakdown.parameters.by_kind["embeddings"] == 4_194_304 * 131_072
    opt = config_from_dict({**GOOD, "model_type": "opt", "max_position_embeddings": 1 << 30})
    assert estimate(opt, "bf16", "fp16", context=32, batch=1).parameters.total > (1 << 30) * 64


def _cached_hub_config(tmp_path, repo_id: str) -> None:
    """A config.json in a Hugging Face cache layout, as an earlier online session would have left it."""
    commit = "0" * 40
    repo = tmp_path / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text(json.dumps(GOOD))


def test_a_hub_id_offline_reads_the_local_cache_without_the_network(tmp_path, monkeypatch):
    """Offline, config_from_hub must not call hf_hub_download: even with local_files_only it builds
    request headers, for which huggingface_hub fetches a registry from the Hub once per process (about
    20 s offline while the DNS lookup hangs)."""
    import huggingface_hub
    import huggingface_hub.constants

    import engine.sizing.configs as configs

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(configs, "hub_reachable", lambda: False)

    def no_network(*args, **kwargs):
        raise AssertionError("hf_hub_download called while offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    _cached_hub_config(tmp_path, "some-org/cached-model")
    assert configs.config_from_hub("some-org/cached-model").hidden_size == 64
    with pytest.raises(ConfigError, match="cannot reach the Hugging Face Hub.*not in the local cache"):
        configs.config_from_hub("some-org/not-cached-model")
