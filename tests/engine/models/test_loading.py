"""Loading and describing models: the tiny fixture for logic, the real default model for integration."""

from __future__ import annotations

import pytest
import torch

from engine.models.loading import ModelTooLargeError, check_fits, describe, load_model, parameter_kind
from engine.models.sources import ModelSource, ModelSourceError
from engine.runtime.generation import GenerationError, GenerationSettings, generate
from tests.conftest import write_config


def test_load_tiny_folder(tiny_model_dir):
    loaded = load_model(ModelSource("folder", str(tiny_model_dir)))
    summary = describe(loaded)
    assert summary.layers == 2 and summary.hidden_size == 64 and summary.kv_heads == 2
    assert summary.head_dim == 16
    assert summary.parameters == sum(p.numel() for p in loaded.model.parameters())
    assert set(summary.parameters_by_kind) == {"embeddings", "attention", "mlp", "norms", "head"}
    assert summary.bytes_in_memory >= summary.parameters * 4


def test_load_bfloat16(tiny_model_dir):
    loaded = load_model(ModelSource("folder", str(tiny_model_dir)), dtype="bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_unknown_dtype_and_device(tiny_model_dir):
    source = ModelSource("folder", str(tiny_model_dir))
    with pytest.raises(ModelSourceError, match="Unknown dtype"):
        load_model(source, dtype="int3")
    with pytest.raises(ModelSourceError, match="not available"):
        load_model(source, device="tpu")


def test_too_large_for_memory_is_refused_before_loading(tmp_path):
    from transformers import LlamaConfig

    huge = LlamaConfig(hidden_size=16384, intermediate_size=53248, num_hidden_layers=400, vocab_size=128256)
    with pytest.raises(ModelTooLargeError, match="GiB is free"):
        check_fits(huge, "cpu", "float32")


def test_config_without_model_type(tmp_path):
    write_config(tmp_path, {"hidden_size": 8})
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelSourceError, match="no `model_type`"):
        load_model(ModelSource("folder", str(tmp_path)))


def test_corrupt_safetensors(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelSourceError, match="Could not load the model"):
        load_model(ModelSource("folder", str(broken)))


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("model.embed_tokens.weight", "embeddings"),
        ("model.layers.0.self_attn.q_proj.weight", "attention"),
        ("model.layers.0.mlp.down_proj.weight", "mlp"),
        ("model.layers.0.input_layernorm.weight", "norms"),
        ("lm_head.weight", "head"),
    ],
)
def test_parameter_kind(name, kind):
    assert parameter_kind(name) == kind


def test_generation_input_checks(tiny_model_dir):
    loaded = load_model(ModelSource("folder", str(tiny_model_dir)))
    with pytest.raises(GenerationError, match="empty"):
        generate(loaded.model, loaded.tokenizer, "   ")
    with pytest.raises(GenerationError, match="context is 256"):
        generate(loaded.model, loaded.tokenizer, "a" * 400, GenerationSettings(chat=False))
    with pytest.raises(GenerationError, match="between 1 and"):
        GenerationSettings(max_new_tokens=10**6)


def test_generation_counts_and_callbacks(tiny_model_dir):
    loaded = load_model(ModelSource("folder", str(tiny_model_dir)))
    seen = []
    result = generate(
        loaded.model,
        loaded.tokenizer,
        "hello",
        GenerationSettings(max_new_tokens=5, chat=False),
        on_token=lambda token, text: seen.append(token),
    )
    assert seen == result.token_ids and 1 <= len(seen) <= 5
    stopped = generate(
        loaded.model,
        loaded.tokenizer,
        "hello",
        GenerationSettings(max_new_tokens=20, chat=False),
        should_stop=lambda: True,
    )
    assert stopped.stopped_early and len(stopped.token_ids) == 1


def test_greedy_matches_transformers_generate(tiny_model_dir):
    """Our loop is a faithful greedy decoder: same tokens as transformers' own generate()."""
    loaded = load_model(ModelSource("folder", str(tiny_model_dir)))
    ours = generate(loaded.model, loaded.tokenizer, "abc", GenerationSettings(max_new_tokens=8, chat=False))
    ids = loaded.tokenizer("abc", return_tensors="pt")["input_ids"]
    reference = loaded.model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
    expected = reference[0, ids.shape[1] :].tolist()
    assert ours.token_ids == expected[: len(ours.token_ids)]
    assert len(ours.token_ids) == 8 or expected[len(ours.token_ids)] == loaded.tokenizer.eos_token_id


@pytest.mark.slow
def test_default_model_says_paris(default_loaded):
    summary = describe(default_loaded)
    assert (summary.layers, summary.hidden_size, summary.attention_heads, summary.kv_heads) == (30, 576, 9, 3)
    assert summary.head_dim == 64 and summary.vocab_size == 49152 and summary.tied_embeddings
    assert 134_000_000 < summary.parameters < 135_000_000
    result = generate(
        default_loaded.model,
        default_loaded.tokenizer,
        "What is the capital of France?",
        GenerationSettings(max_new_tokens=12),
    )
    assert "Paris" in result.text


def test_parameter_count_from_config_counts_tied_embeddings_once():
    from engine.models.loading import count_parameters_from_config
    from tests.conftest import build_tiny_llama

    for tied in (True, False):
        model = build_tiny_llama(tie_word_embeddings=tied)
        assert count_parameters_from_config(model.config) == sum(p.numel() for p in model.parameters())
