"""Bad input, clear answers: one table of cases fed through the engine API, each asserting the exact kind
of error and a message a user can act on (issue 9). The UI side (AppTest) is in tests/app; this table is
the catalogue the closing note lists."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from engine.evaluation.perplexity import EvaluationError, perplexity
from engine.methods import RTNConfig, quantize_model
from engine.methods.registry import NotEnoughMemoryError
from engine.models.data import DataError, WindowSpec, decode_upload
from engine.models.loading import ModelTooLargeError, check_fits, load_model
from engine.models.sources import ModelSource, ModelSourceError, convert_gguf, resolve_folder
from engine.quant.schemes import QuantScheme, check_shape
from engine.runtime.generation import GenerationError, GenerationSettings, generate
from engine.runtime.kv_cache import KVCacheConfig, KVCacheError
from engine.sizing.configs import config_from_json, load_config
from engine.sizing.estimate import ConfigError, estimate, kv_format
from engine.sizing.gpus import gpu, serving_what_if
from engine.sizing.presets import weight_preset
from tests.conftest import build_char_tokenizer, build_tiny_llama, write_config

GOOD_CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
}


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable  # (tmp_path, tiny_model_dir, pickle_only_dir) -> anything; must raise
    error: type[BaseException]
    message: str  # regex the message must match


def _config(**changes) -> bytes:
    return json.dumps({**GOOD_CONFIG, **changes}).encode()


def _corrupt_safetensors(tmp, tiny, _):
    broken = tmp / "broken"
    shutil.copytree(tiny, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return load_model(ModelSource("folder", str(broken)))


def _remote_code(tmp, _, __):
    write_config(tmp, {**GOOD_CONFIG, "auto_map": {"AutoModelForCausalLM": "modeling_evil.Evil"}})
    (tmp / "model.safetensors").write_bytes(b"")
    return resolve_folder(ModelSource("folder", str(tmp)))


def _huge_model(*_):
    from transformers import LlamaConfig

    huge = LlamaConfig(hidden_size=16384, intermediate_size=53248, num_hidden_layers=400, vocab_size=128256)
    return check_fits(huge, "cpu", "float32")


def _generate(prompt: str, **settings):
    def run(_, tiny, __):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(tiny)
        return generate(model, build_char_tokenizer(), prompt, GenerationSettings(chat=False, **settings))

    return run


def _no_room(*_):
    import engine._types

    original = engine._types.free_memory_bytes
    engine._types.free_memory_bytes = lambda device: 0
    try:
        return quantize_model(build_tiny_llama(), RTNConfig(QuantScheme(8)))
    finally:
        engine._types.free_memory_bytes = original


LONG_NAME = "a" * 300  # one name over the 255 bytes file systems allow
DEEP_PATH = "/".join(["b" * 200] * 30)  # every name legal, the whole path over PATH_MAX (4096)


def _unreadable(kind: str):
    """A typed path the OS refuses with an error other than 'not found' (here: permission denied)."""

    def run(tmp, *_):
        import pathlib

        def refuse(self, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(self))

        original = pathlib.Path.exists, pathlib.Path.is_dir, pathlib.Path.is_file
        pathlib.Path.exists = pathlib.Path.is_dir = pathlib.Path.is_file = refuse
        try:
            return resolve_folder(ModelSource(kind, str(tmp / "locked" / "model.gguf")))
        finally:
            pathlib.Path.exists, pathlib.Path.is_dir, pathlib.Path.is_file = original

    return run


def _allocator_failure(*_):
    """A build that fails in PyTorch's CPU allocator (as accelerate's init_empty_weights did for one huge
    tensor): the message names the size, not the C++ source line."""
    import engine.models.loading

    def build(config):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
            "tried to allocate 2199023255552 bytes. Error code 12 (Cannot allocate memory)"
        )

    original = engine.models.loading.build_on_meta
    engine.models.loading.build_on_meta = build
    try:
        return estimate(config_from_json(_config(vocab_size=4_194_303, hidden_size=131_072)))
    finally:
        engine.models.loading.build_on_meta = original


CASES = [
    Case(
        "nonexistent folder",
        lambda t, *_: resolve_folder(ModelSource("folder", str(t / "nope"))),
        ModelSourceError,
        "Folder not found",
    ),
    Case(
        "folder without config",
        lambda t, *_: resolve_folder(ModelSource("folder", str(t))),
        ModelSourceError,
        "No config.json",
    ),
    Case("empty location", lambda *_: resolve_folder(ModelSource("folder", "")), ModelSourceError, "empty"),
    Case(
        "folder path with a name over 255 characters",
        lambda t, *_: resolve_folder(ModelSource("folder", str(t / LONG_NAME))),
        ModelSourceError,
        "Folder not found: .*longer than this system allows",
    ),
    Case(
        "folder path over the system's length limit",
        lambda t, *_: resolve_folder(ModelSource("folder", str(t / DEEP_PATH))),
        ModelSourceError,
        "Folder not found: .*longer than this system allows",
    ),
    Case(
        "GGUF path with a name over 255 characters",
        lambda t, *_: resolve_folder(ModelSource("gguf", str(t / f"{LONG_NAME}.gguf"))),
        ModelSourceError,
        "GGUF file not found: .*longer than this system allows",
    ),
    Case(
        "GGUF path over the system's length limit",
        lambda t, *_: convert_gguf(t / DEEP_PATH / "model.gguf"),
        ModelSourceError,
        "GGUF file not found: .*longer than this system allows",
    ),
    Case(
        "folder path with a null character",
        lambda t, *_: resolve_folder(ModelSource("folder", f"{t}/model\x00folder")),
        ModelSourceError,
        "Folder not found: .*null character",
    ),
    Case(
        "folder the server may not read",
        _unreadable("folder"),
        ModelSourceError,
        "Folder not found: .*not allowed",
    ),
    Case(
        "GGUF file the server may not read",
        _unreadable("gguf"),
        ModelSourceError,
        "GGUF file not found: .*not allowed",
    ),
    Case(
        "sizing CLI: config path with a name over 255 characters",
        lambda t, *_: load_config(str(t / LONG_NAME / "config.json")),
        ConfigError,
        "Cannot read .*longer than this system allows",
    ),
    Case("corrupt safetensors", _corrupt_safetensors, ModelSourceError, "Could not load the model"),
    Case(
        "corrupt GGUF",
        lambda t, *_: (t / "x.gguf").write_bytes(b"nope" * 20) and convert_gguf(t / "x.gguf"),
        ModelSourceError,
        "not a GGUF file",
    ),
    Case(
        "invalid Hub id",
        lambda *_: resolve_folder(ModelSource("hub", "not a valid id//")),
        ModelSourceError,
        "not a valid Hub id",
    ),
    Case("needs trust_remote_code", _remote_code, ModelSourceError, "never runs remote code"),
    Case(
        "pickle-only without opt-in",
        lambda _, __, p: resolve_folder(ModelSource("folder", str(p))),
        ModelSourceError,
        "only pickle weights",
    ),
    Case("model too large for free memory", _huge_model, ModelTooLargeError, "GiB is free"),
    Case("config upload: empty", lambda *_: config_from_json(b""), ConfigError, "empty"),
    Case("config upload: non-UTF-8", lambda *_: config_from_json(b"\xff\xfe\x00"), ConfigError, "UTF-8"),
    Case(
        "config upload: deep nesting",
        lambda *_: config_from_json(b"[" * 50_000 + b"]" * 50_000),
        ConfigError,
        "JSON",
    ),
    Case(
        "config upload: wrong type",
        lambda *_: config_from_json(_config(hidden_size="64")),
        ConfigError,
        "must be an integer",
    ),
    Case(
        "config upload: negative size",
        lambda *_: config_from_json(_config(num_hidden_layers=-1)),
        ConfigError,
        "must be positive",
    ),
    Case(
        "config upload: enormous size",
        lambda *_: config_from_json(_config(vocab_size=10**12)),
        ConfigError,
        "beyond any real model",
    ),
    Case(
        "config upload: unknown architecture",
        lambda *_: config_from_json(_config(model_type="evil")),
        ConfigError,
        "not an architecture",
    ),
    Case(
        "config upload: remote code",
        lambda *_: config_from_json(_config(auto_map={"a": "b.C"})),
        ConfigError,
        "custom code",
    ),
    Case(
        "config the CPU allocator refuses to build", _allocator_failure, ConfigError, "would take 2,048 GiB"
    ),
    Case("config upload: too large", lambda *_: config_from_json(b" " * 3_000_000), ConfigError, "larger"),
    Case("unknown catalog model", lambda *_: load_config("llama-9-900b"), ConfigError, "llama"),
    Case(
        "group size not dividing",
        lambda *_: check_shape(QuantScheme(4, "int", True, "group", 128), (8, 576)),
        ValueError,
        "group size 128 does not divide the rows of 576 values",
    ),
    Case("nf4 at 3 bits", lambda *_: QuantScheme(3, "nf4"), ValueError, "16-value"),
    Case(
        "asymmetric fp8", lambda *_: QuantScheme(8, "fp8_e4m3", symmetric=False), ValueError, "no zero point"
    ),
    Case("1-bit scheme", lambda *_: QuantScheme(1), ValueError, "from 2 to 8"),
    Case(
        "KV cache per tensor",
        lambda *_: KVCacheConfig(QuantScheme(8, granularity="tensor")),
        KVCacheError,
        "growing KV cache",
    ),
    Case("unknown KV format", lambda *_: kv_format("int7"), ConfigError, "unknown KV-cache format"),
    Case(
        "unknown weight format", lambda *_: weight_preset("int4-banana"), ValueError, "unknown weight format"
    ),
    Case(
        "context of zero tokens",
        lambda *_: estimate(config_from_json(_config()), context=0),
        ConfigError,
        "context must be a positive",
    ),
    Case("unknown GPU", lambda *_: gpu("Voodoo 5 6000"), ConfigError, "unknown GPU"),
    Case(
        "utilization above 1",
        lambda *_: serving_what_if(estimate(config_from_json(_config())), gpu("L4"), utilization=1.5),
        ConfigError,
        "gpu_memory_utilization",
    ),
    Case("empty prompt", _generate("   "), GenerationError, "prompt is empty"),
    Case("prompt longer than the context", _generate("a" * 400), GenerationError, "context"),
    Case(
        "max new tokens beyond the cap",
        _generate("hello", max_new_tokens=10_000),
        GenerationError,
        "max_new_tokens must be between",
    ),
    Case(
        "calibration upload: binary",
        lambda *_: decode_upload(bytes(range(256)) * 100),
        DataError,
        "binary|text",
    ),
    Case("calibration upload: empty", lambda *_: decode_upload(b""), DataError, "empty|characters"),
    Case("windows of 2 tokens", lambda *_: WindowSpec(window=2), DataError, "at least 8 tokens"),
    Case(
        "evaluation window beyond the context",
        lambda *_: perplexity(build_tiny_llama(), torch.zeros(1, 300, dtype=torch.long)),
        EvaluationError,
        "context|max_position",
    ),
    Case(
        "evaluation of no windows", lambda *_: perplexity(build_tiny_llama(), []), EvaluationError, "window"
    ),
    Case(
        "unknown method config",
        lambda *_: quantize_model(build_tiny_llama(), object()),
        ValueError,
        "no quantization method registered",
    ),
    Case(  # activations in blocks of the input dim (MX / NVFP4) must fit every layer's width
        "activation blocks that do not divide a layer",
        lambda *_: quantize_model(
            build_tiny_llama(), RTNConfig(QuantScheme(8), QuantScheme(8, "int", True, "group", 48))
        ),
        ValueError,
        "group size 48 does not divide the rows of 64 values",
    ),
    Case("no memory for the quantized copy", _no_room, NotEnoughMemoryError, "GiB is free"),
]


def test_the_table_has_at_least_30_cases():
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_gets_a_clear_error(case, tmp_path, tiny_model_dir, pickle_only_dir):
    with pytest.raises(case.error, match=case.message) as caught:
        case.run(tmp_path, tiny_model_dir, pickle_only_dir)
    message = str(caught.value)
    assert 15 < len(message) < 600, message  # a sentence, not a code or a dump
    assert "Traceback" not in message
    assert "Errno" not in message and "enforce fail" not in message  # no OS or C++ message passed through


def test_cancelling_a_quantization_midway_leaves_the_model_untouched():
    model = build_tiny_llama()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    seen = []

    class Cancelled(Exception):
        pass

    def progress(fraction, message):
        seen.append(fraction)
        if fraction > 0.3:
            raise Cancelled("the user pressed stop")

    with pytest.raises(Cancelled):
        quantize_model(model, RTNConfig(QuantScheme(4, "int", True, "group", 32)), progress=progress)
    assert 0 < len(seen) < 14
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
