"""Loading a model from a `ModelSource` onto a device, guarded by a memory check, and describing it.

The memory check builds the model on the meta device from its config (`build_on_meta`: nothing allocated)
and asks `engine._types.require_free` (the engine's one "will it fit" check) for the parameter bytes
before any weight is read. Loading always uses `trust_remote_code=False` and prefers safetensors.
`describe` reports the architecture numbers the overview page shows; parameter counts de-duplicate tied
weights.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine._types import NotEnoughMemoryError, Progress, require_free
from engine.models.checkpoints import (
    CheckpointError,
    CheckpointQuantization,
    check_loadable,
    checkpoint_quantization,
    preserved_environment,
)
from engine.models.sources import (
    ModelSource,
    ModelSourceError,
    bytes_on_disk,
    read_config_dict,
    resolve_folder,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LOAD_HEADROOM = 1.2  # weights plus transient copies while loading
MIN_FREE_AFTER_LOAD = 512 * 1024**2  # leave this much for activations and the app itself
ALLOCATOR_FAILURE = re.compile(r"tried to allocate (\d+) bytes")  # PyTorch's C++ allocator, CPU or CUDA


class ModelTooLargeError(ModelSourceError, NotEnoughMemoryError):
    """The model's weights would not fit in the free memory of the chosen device.

    A `ModelSourceError` (the sidebar shows it like any bad source) and a `NotEnoughMemoryError` (the one
    "will it fit" refusal, `engine._types.require_free`).
    """


def available_devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def default_dtype(device: str) -> str:
    """bfloat16 on GPUs (fast, safe range); float32 on CPU, where 16-bit matmuls are slow."""
    return "bfloat16" if device.startswith("cuda") else "float32"


def build_on_meta(config) -> torch.nn.Module:
    """The model a config describes, every parameter and buffer on the meta device: nothing is allocated.

    Built under `torch.device("meta")` rather than accelerate's `init_empty_weights`, which creates each
    parameter on the CPU and only then moves it to the meta device: one tensor too large for this machine
    (a 4M-token vocabulary × 131,072 channels is 2 TiB) failed in the CPU allocator although none is kept.
    Both build the same architectures with the same counts (every catalog model, and every causal-LM
    config transformers ships, were compared).
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    model.tie_weights()
    return model


def cannot_build(exc: BaseException) -> str:
    """Why a config could not be built, in words: an allocator failure becomes the size it asked for."""
    asked = ALLOCATOR_FAILURE.search(str(exc))
    if asked:
        return (
            f"one of its tensors alone would take {int(asked.group(1)) / 2**30:,.0f} GiB, more than this "
            "machine can allocate even briefly. Check its sizes (hidden_size, intermediate_size, vocab_size, "
            "max_position_embeddings, the number of experts)."
        )
    return f"transformers cannot build this architecture from its config: {str(exc)[:300]}"


def count_parameters_from_config(config) -> int:
    """Exact parameter count from a config alone: build on the meta device, count, allocate nothing."""
    return sum(p.numel() for p in build_on_meta(config).parameters())  # tied weights once


def check_fits(config, device: str, dtype: str) -> int:
    """Raise ModelTooLargeError (with the numbers) if the model would not fit; returns the bytes needed."""
    try:
        params = count_parameters_from_config(config)
    except Exception as exc:  # a folder's config.json transformers reads but cannot build
        raise ModelSourceError(cannot_build(exc)) from exc
    needed = int(params * DTYPES[dtype].itemsize * LOAD_HEADROOM) + MIN_FREE_AFTER_LOAD
    require_free(
        needed,
        device,
        f"Loading {params / 1e9:.2f} B parameters in {dtype}",
        "Pick a smaller model, a 16-bit dtype, or use the Memory page to size it without loading.",
        error=ModelTooLargeError,
    )
    return needed


@dataclass
class LoadedModel:
    model: torch.nn.Module  # shared by every session through the cache: never mutate it
    tokenizer: object
    source: ModelSource
    folder: Path
    device: str
    dtype: str
    load_seconds: float
    config: object = field(repr=False, default=None)
    quantization: CheckpointQuantization | None = None  # set for GPTQ / AWQ / bnb checkpoints


def _load_config(folder: Path):
    from transformers import AutoConfig

    raw = read_config_dict(folder)
    if "model_type" not in raw:
        raise ModelSourceError(f"{folder}/config.json has no `model_type`, so transformers cannot build it.")
    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise ModelSourceError(f"transformers cannot read {folder}/config.json: {exc}") from exc


def load_model(
    source: ModelSource, device: str = "cpu", dtype: str = "float32", progress: Progress | None = None
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ModelSourceError(f"Unknown dtype {dtype!r}; use one of {list(DTYPES)}.")
    if device not in available_devices():
        raise ModelSourceError(f"Device {device!r} is not available here; use one of {available_devices()}.")
    start = time.perf_counter()
    folder = resolve_folder(source, progress)
    config = _load_config(folder)
    quantization = checkpoint_quantization(config)
    try:
        check_loadable(quantization)
    except CheckpointError as exc:
        raise ModelSourceError(str(exc)) from exc
    if progress:
        progress(0.85, "Checking free memory")
    check_fits(config, device, dtype)
    if progress:
        progress(0.9, f"Loading weights onto {device} as {dtype}")
    multi_gpu = device == "cuda" and torch.cuda.device_count() > 1
    try:
        with preserved_environment():  # gptqmodel's import sets process-wide variables
            model = AutoModelForCausalLM.from_pretrained(
                folder,
                dtype=DTYPES[dtype],
                trust_remote_code=False,
                use_safetensors=None if source.allow_pickle else True,
                device_map="auto" if multi_gpu else device,
            )
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except ModelSourceError:
        raise
    except Exception as exc:  # corrupt weights surface as many exception types
        raise ModelSourceError(
            f"Could not load the model in {folder} ({type(exc).__name__}: {str(exc)[:300]})."
        ) from exc
    model.eval()
    if progress:
        progress(1.0, "Loaded")
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        source=source,
        folder=folder,
        device=device,
        dtype=dtype,
        load_seconds=time.perf_counter() - start,
        config=config,
        quantization=quantization,
    )


@dataclass(frozen=True)
class ArchitectureSummary:
    model_type: str
    layers: int
    hidden_size: int
    intermediate_size: int | None
    attention_heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int | None
    tied_embeddings: bool
    parameters: int
    parameters_by_kind: dict[str, int]  # embeddings / attention / mlp / norms / head / other
    dtype: str
    bytes_in_memory: int  # parameters + buffers as allocated, tied weights once
    bytes_on_disk: int  # safetensors files in the loaded folder
    quantization: str | None = None  # a GPTQ / AWQ / bitsandbytes checkpoint: what its config says


def parameter_kind(name: str) -> str:
    lowered = name.lower()
    if "embed" in lowered or "wte" in lowered or "wpe" in lowered:
        return "embeddings"
    if "lm_head" in lowered or lowered.startswith("output"):
        return "head"
    if "norm" in lowered or "ln_" in lowered:
        return "norms"
    if any(key in lowered for key in ("attn", "attention", "q_proj", "k_proj", "v_proj", "o_proj")):
        return "attention"
    if any(key in lowered for key in ("mlp", "ffn", "feed_forward", "experts", "fc1", "fc2")):
        return "mlp"
    return "other"


def describe(loaded: LoadedModel) -> ArchitectureSummary:
    model, config = loaded.model, loaded.model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    by_kind: dict[str, int] = {}
    seen: set[int] = set()
    total_bytes = 0
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total_bytes += tensor.numel() * tensor.element_size()
        if isinstance(tensor, torch.nn.Parameter):
            kind = parameter_kind(name)
            by_kind[kind] = by_kind.get(kind, 0) + tensor.numel()
    heads = int(text_config.num_attention_heads)
    hidden = int(text_config.hidden_size)
    return ArchitectureSummary(
        model_type=str(text_config.model_type),
        layers=int(text_config.num_hidden_layers),
        hidden_size=hidden,
        intermediate_size=getattr(text_config, "intermediate_size", None),
        attention_heads=heads,
        kv_heads=int(getattr(text_config, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(text_config, "head_dim", None) or hidden // heads),
        vocab_size=int(text_config.vocab_size),
        max_context=getattr(text_config, "max_position_embeddings", None),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        parameters=sum(by_kind.values()),
        parameters_by_kind=by_kind,
        dtype=loaded.dtype,
        bytes_in_memory=total_bytes,
        bytes_on_disk=bytes_on_disk(loaded.folder),
        quantization=None if loaded.quantization is None else loaded.quantization.label,
    )
