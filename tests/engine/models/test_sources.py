"""Model sources: every bad input gets a ModelSourceError with a specific message, never a crash."""

from __future__ import annotations

import json

import pytest

from engine.models.sources import ModelSource, ModelSourceError, check_folder, convert_gguf, resolve_folder
from tests.conftest import write_config


def test_tiny_folder_resolves(tiny_model_dir):
    assert resolve_folder(ModelSource("folder", str(tiny_model_dir))) == tiny_model_dir.resolve()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: ModelSource("folder", str(tmp / "nope")), "Folder not found"),
        (lambda tmp: ModelSource("gguf", str(tmp / "missing.gguf")), "GGUF file not found"),
        (lambda tmp: ModelSource("gguf", str(tmp)), "is a folder"),
        (lambda tmp: ModelSource("gguf", str(tmp / "weights.bin")), "does not end in .gguf"),
    ],
)
def test_missing_paths(tmp_path, make, message):
    with pytest.raises(ModelSourceError, match=message):
        resolve_folder(make(tmp_path))


def test_empty_location_and_unknown_kind():
    with pytest.raises(ModelSourceError, match="box is empty"):
        ModelSource("folder", "  ")
    with pytest.raises(ModelSourceError, match="Unknown model source kind"):
        ModelSource("s3", "bucket")


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelSourceError, match="No config.json"):
        check_folder(tmp_path, allow_pickle=False)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "not valid UTF-8 JSON"),
        (b"\xff\xfe\x00garbage", "not valid UTF-8 JSON"),
        (b"[1, 2, 3]", "must hold a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid UTF-8 JSON"),
    ],
)
def test_malformed_config(tmp_path, payload, message):
    (tmp_path / "config.json").write_bytes(payload)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelSourceError, match=message):
        check_folder(tmp_path, allow_pickle=False)


def test_remote_code_is_refused(tmp_path):
    write_config(tmp_path, {"model_type": "custom", "auto_map": {"AutoModelForCausalLM": "modeling.Custom"}})
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelSourceError, match="never runs remote code"):
        check_folder(tmp_path, allow_pickle=False)


def test_pickle_needs_opt_in(pickle_only_dir):
    with pytest.raises(ModelSourceError, match="Allow pickle weights"):
        check_folder(pickle_only_dir, allow_pickle=False)
    assert check_folder(pickle_only_dir, allow_pickle=True) == pickle_only_dir.resolve()


def test_folder_without_weights(tmp_path):
    write_config(tmp_path, {"model_type": "llama"})
    with pytest.raises(ModelSourceError, match="No weight files"):
        check_folder(tmp_path, allow_pickle=False)


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(ModelSourceError, match="not a GGUF file"):
        convert_gguf(bad)


def test_truncated_gguf(tmp_path, monkeypatch):
    from engine.models.sources import default_gguf_path

    monkeypatch.setenv("QE_CACHE_DIR", str(tmp_path / "cache"))
    truncated = tmp_path / "truncated.gguf"
    with open(default_gguf_path(), "rb") as handle:
        truncated.write_bytes(handle.read(200_000))
    with pytest.raises(ModelSourceError, match="Could not read truncated.gguf"):
        convert_gguf(truncated)


def test_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelSourceError, match="offline|Could not reach"):
        resolve_folder(ModelSource("hub", "HuggingFaceTB/definitely-not-cached-model-xyz"))


def test_invalid_hub_id():
    with pytest.raises(ModelSourceError, match="not a valid Hub id"):
        resolve_folder(ModelSource("hub", "not a valid id//"))


def test_gguf_conversion_is_cached(tmp_path):
    """The default model's conversion marker is honoured: a second call returns at once, same folder."""
    from engine.models.sources import prepare_default_model

    first = prepare_default_model()
    marker = json.loads((first / "qe_conversion.json").read_text())
    assert marker["gguf_file"].endswith(".gguf")
    assert prepare_default_model() == first


def test_model_roots_restrict_typed_paths(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("QE_MODEL_ROOTS", str(tmp_path / "models"))
    with pytest.raises(ModelSourceError, match="outside the folders this server allows"):
        resolve_folder(ModelSource("folder", str(tiny_model_dir)))
    with pytest.raises(ModelSourceError, match="outside the folders"):
        resolve_folder(ModelSource("gguf", "/etc/../etc/passwd.gguf"))
    monkeypatch.setenv("QE_MODEL_ROOTS", str(tiny_model_dir.parent))
    assert resolve_folder(ModelSource("folder", str(tiny_model_dir))) == tiny_model_dir.resolve()
    monkeypatch.delenv("QE_MODEL_ROOTS")
    assert resolve_folder(ModelSource("folder", str(tiny_model_dir))) == tiny_model_dir.resolve()


@pytest.fixture
def hub_not_configured_offline(monkeypatch):
    """HF_HUB_OFFLINE unset and no remembered probe: hub_reachable really probes."""
    import huggingface_hub.constants

    import engine.models.sources as sources

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sources, "_hub_probes", {})
    return sources


def test_hub_reachable_answers_in_time_when_the_lookup_hangs(hub_not_configured_offline, monkeypatch):
    """A resolver that does not answer: socket timeouts do not bound the DNS lookup, the probe must."""
    import socket
    import time

    sources = hub_not_configured_offline
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: time.sleep(10) or [])
    start = time.perf_counter()
    assert sources.hub_reachable(timeout=0.5) is False
    assert time.perf_counter() - start < 2
    start = time.perf_counter()
    assert sources.hub_reachable(timeout=0.5) is False  # remembered: the next page rerun asks nobody
    assert time.perf_counter() - start < 0.1


def test_hub_reachable_is_false_at_once_when_configured_offline(monkeypatch):
    import socket

    import engine.models.sources as sources

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sources, "_hub_probes", {})
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed while offline"))
    assert sources.hub_reachable() is False


def test_shown_paths_are_short_and_printable():
    from engine.models.paths import SHOWN_PATH_CHARS, shown_path

    assert shown_path("/models/llama") == "/models/llama"
    long = shown_path("/tmp/" + "a" * 5000 + "/config.json")
    assert len(long) <= SHOWN_PATH_CHARS + 1 and long.startswith("/tmp/aaa") and long.endswith("/config.json")
    assert "\x00" not in shown_path("/tmp/model\x00folder")
