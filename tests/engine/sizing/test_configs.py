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
    with pytest.raises(ConfigError, match="Could not fetch|not a valid Hub id"):
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
