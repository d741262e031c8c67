"""Configs for sizing without weights: from the catalog, a config.json (path or upload), or a Hub id.

Everything here reads JSON only: no weights, no remote code. An uploaded config is untrusted, so it is
size-capped, must be UTF-8 JSON describing an architecture transformers knows natively, and its sizes are
bounded before the model is built on the meta device (a config claiming a million layers would otherwise
take minutes to build, even without allocating anything).
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.models.paths import plain_reason, shown_path
from engine.models.sources import MAX_CONFIG_BYTES, hub_reachable
from engine.sizing.parameters import ConfigError

SIZE_LIMITS = {  # field -> largest value we accept; published models sit far below these
    "num_hidden_layers": 1024,
    "hidden_size": 131_072,
    "intermediate_size": 1_048_576,
    "moe_intermediate_size": 1_048_576,
    "num_attention_heads": 4096,
    "num_key_value_heads": 4096,
    "head_dim": 4096,
    "vocab_size": 4_194_304,
    "num_local_experts": 1024,
    "num_experts": 1024,
    "n_routed_experts": 1024,
    "num_experts_per_tok": 1024,
    "kv_lora_rank": 65_536,
    "max_position_embeddings": 1 << 30,
    "sliding_window": 1 << 30,
}
REQUIRED = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")


def _check_sizes(fields: dict, where: str) -> None:
    for name in REQUIRED:
        if fields.get(name) is None:
            raise ConfigError(f"{where} has no {name}; a decoder config needs {', '.join(REQUIRED)}")
    for name, limit in SIZE_LIMITS.items():
        if name not in fields or fields[name] is None:
            continue
        value = fields[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {name} must be an integer (got {value!r})")
        if value <= 0:
            raise ConfigError(f"{where}: {name} must be positive (got {value})")
        if value > limit:
            raise ConfigError(f"{where}: {name} = {value:,} is beyond any real model (limit {limit:,})")


def config_from_dict(fields: dict, where: str = "config.json"):
    """A transformers config from a plain dict, validated; raises ConfigError with the reason."""
    from transformers import CONFIG_MAPPING

    if not isinstance(fields, dict):
        raise ConfigError(f"{where} must hold a JSON object, not {type(fields).__name__}")
    fields = dict(fields)
    if fields.get("auto_map"):
        raise ConfigError(f"{where} needs custom code (auto_map); only built-in architectures are sized")
    model_type = fields.pop("model_type", None)
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ConfigError(
            f"{where}: model_type {model_type!r} is not an architecture transformers knows "
            "(e.g. llama, mistral, qwen2, gemma2, mixtral, deepseek_v3)"
        )
    text_fields = fields.get("text_config") if isinstance(fields.get("text_config"), dict) else fields
    _check_sizes(text_fields, where)
    for name in ("transformers_version", "quantization_config"):
        fields.pop(name, None)
    try:
        return CONFIG_MAPPING[model_type](**fields)
    except Exception as exc:  # config classes validate with ValueError, TypeError and their own types
        raise ConfigError(f"{where}: transformers rejects this {model_type} config: {exc}") from exc


def config_from_json(payload: bytes, where: str = "uploaded config.json"):
    if len(payload) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where} is larger than {MAX_CONFIG_BYTES // 1024} KiB; that is not a config")
    if not payload.strip():
        raise ConfigError(f"{where} is empty")
    try:
        fields = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"{where} is not valid UTF-8 JSON ({exc})") from exc
    return config_from_dict(fields, where)


def config_from_hub(repo_id: str):
    """Download config.json only (never weights) from the Hub. Offline (`hub_reachable`: 2 s at most) only
    the local Hugging Face cache is read, without `hf_hub_download`: even with `local_files_only` that
    builds request headers, and huggingface_hub fetches a registry from the Hub for them once per process,
    which offline waits for the DNS lookup (about 20 s where a resolver does not answer)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    offline = (
        f"This machine cannot reach the Hugging Face Hub, and {repo_id}'s config.json is not in the local "
        "cache. Pick a catalog model or upload the config.json instead."
    )
    try:
        if hub_reachable():
            path = hf_hub_download(repo_id, "config.json")
        elif not isinstance(path := try_to_load_from_cache(repo_id, "config.json"), str):
            raise ConfigError(offline)
    except HFValidationError as exc:
        raise ConfigError(f"{repo_id!r} is not a valid Hub id (expected 'owner/name')") from exc
    except LocalEntryNotFoundError as exc:  # before its parent classes: the connection was lost
        raise ConfigError(offline) from exc
    except GatedRepoError as exc:
        raise ConfigError(f"{repo_id} is gated: accept its licence on the Hub and log in first") from exc
    except RepositoryNotFoundError as exc:
        raise ConfigError(f"No model called {repo_id} on the Hugging Face Hub") from exc
    except EntryNotFoundError as exc:
        raise ConfigError(f"{repo_id} has no config.json on the Hub") from exc
    except ConfigError:
        raise
    except Exception as exc:  # network errors and the rest: all end the same way for the user
        raise ConfigError(
            f"Could not fetch config.json for {repo_id} from the Hugging Face Hub. Pick a catalog model or "
            "upload the config.json instead."
        ) from exc
    return config_from_json(Path(path).read_bytes(), f"{repo_id}/config.json")


def load_config(spec: str):
    """A config from a catalog name or slug, a config.json path or model folder, or a Hub id."""
    from engine.sizing.catalog import catalog_model

    spec = spec.strip()
    try:  # a typed path the file system refuses (too long, a null byte, no permission) is not a config
        path = Path(spec).expanduser()
        if path.is_dir():
            path = path / "config.json"
        payload = path.read_bytes() if path.is_file() else None
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"Cannot read {shown_path(spec)} ({plain_reason(exc)})") from exc
    if payload is not None:
        return config_from_json(payload, shown_path(path))
    try:
        return catalog_model(spec).config()
    except KeyError as exc:
        if "/" in spec:
            return config_from_hub(spec)
        raise ConfigError(str(exc.args[0]) if exc.args else f"unknown model {spec!r}") from exc
