"""Module kinds: every parameter of a config's model classified by what it belongs to, and counted.

The model is built on the meta device (`engine.models.loading.build_on_meta`: no weights read; cached per
config; tied weights once) and each parameter is classified by its NAME through `KIND_PATTERNS`, a table
(first match wins): adding an architecture means adding a row. It covers llama / qwen / mistral / mixtral,
Qwen2/3-MoE, DeepSeek-V3, gpt-oss, Llama 4, GPT-2 / OPT / Falcon, and the Jamba / Falcon-H1 / Nemotron-H /
Granite / Qwen3-Next / LFM2 mixers; anything else lands in "other", and `unclassified` names it.

Within each kind, "matrices" (weights of linear layers, embeddings, stacked 3-D expert weights) carry a row
length, `in_features`: the last axis of an (out, in) weight, the middle axis of experts stored transposed
as (experts, in, out) (gpt-oss, Llama 4). "Vectors" (1-D tensors, biases including stacked per-expert
biases, convolution kernels, SSM A_log / D / dt_bias, attention sinks) have none: checkpoints keep them
unquantized.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass

from engine.sizing.parameters import ConfigError, _text_config, moe_fields

MODULE_KINDS = (
    "embeddings",
    "attention",
    "dense_mlp",
    "routed_experts",
    "shared_experts",
    "router",
    "state_space",
    "head",
    "norms",
    "other",
)
MODULE_LABELS = {  # what the page shows for each kind
    "embeddings": "embeddings",
    "attention": "attention",
    "dense_mlp": "dense MLP",
    "routed_experts": "routed experts",
    "shared_experts": "shared experts",
    "router": "routers",
    "state_space": "state-space / linear-attention mixers",
    "head": "output head",
    "norms": "norms",
    "other": "other (unrecognized)",
}
LINEAR_MODULE_KINDS = (
    "attention",
    "dense_mlp",
    "routed_experts",
    "shared_experts",
    "router",
    "state_space",
)

# (pattern searched in the parameter name, kind): the first match wins, so the order matters.
KIND_PATTERNS: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(pattern), kind)
    for pattern, kind in (
        (r"(^|\.)lm_head\.|^output\.", "head"),
        (r"norm|(^|\.)ln_", "norms"),  # layer norms, q_norm / k_norm, mixers' gated norms, embedding_norm
        (r"embed|(^|\.)(wte|wpe)\.", "embeddings"),  # embed_tokens, embeddings (Nemotron-H), embed_positions
        # MoE routers: mlp.gate, mlp.router, feed_forward.router, block_sparse_moe.gate, Qwen's shared_expert_gate
        (r"\.(gate|router)\.[^.]+$|shared_expert_gate\.", "router"),
        (r"shared_(experts?|mlp)\.", "shared_experts"),  # DeepSeek, Qwen / Llama 4, Granite's shared_mlp
        (r"(?<![A-Za-z_])experts\.", "routed_experts"),  # mlp.experts, block_sparse_moe.experts
        # Jamba / Falcon-H1 / Granite mamba, Qwen3-Next gated DeltaNet, LFM2's short convolutions
        (r"\.(mamba|linear_attn|conv)\.", "state_space"),
        (
            r"attn|attention|\.([qkvo]|qkv|q_a|q_b|kv_a|kv_b)_proj|kv_a_proj_with_mqa|query_key_value",
            "attention",
        ),
        (r"\.(in_proj|x_proj|dt_proj|conv1d)\.|\.(A_log|D|dt_bias)$|\.mixer\.out_proj\.", "state_space"),
        (
            r"mlp|ffn|feed_forward|(^|\.)fc[12]\.|\.(gate|up|down)_proj\.|dense_h_to_4h|dense_4h_to_h",
            "dense_mlp",
        ),
    )
)
VECTOR_NAMES = re.compile(
    r"bias$|conv1d\.|\.conv\.weight$|\.(A_log|D|dt_bias|sinks)$"
)  # kept unquantized whatever shape


def module_kind(name: str) -> str:
    """The module kind of a parameter from its name ('other' when no pattern matches)."""
    for pattern, kind in KIND_PATTERNS:
        if pattern.search(name):
            return kind
    return "other"


@dataclass(frozen=True)
class ModuleTensor:
    """One parameter of the meta build: its kind, shape and, for a matrix, the length of its rows."""

    name: str
    kind: str
    shape: tuple[int, ...]
    in_features: int | None  # None: a vector (1-D, a bias, a conv kernel, SSM constants): never quantized

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ModuleCount:
    parameters: int  # every parameter of the kind
    vectors: int  # of which 1-D tensors, biases and other small constants kept 16-bit


@dataclass(frozen=True)
class Build:
    tensors: tuple[ModuleTensor, ...]
    tied: bool  # the head is the input embedding (counted once, as embeddings)
    layers: int
    experts: int  # routed experts per layer (0: dense)
    experts_per_token: int


def _in_features(name: str, shape: tuple[int, ...], module, hidden: int) -> int | None:
    """The row length a matrix is quantized along; None for a vector."""
    from transformers.pytorch_utils import Conv1D

    if VECTOR_NAMES.search(name) or len(shape) < 2:
        return None
    if len(shape) == 2:  # nn.Linear / nn.Embedding: (out, in); GPT-2's Conv1D: (in, out)
        return shape[0] if isinstance(module, Conv1D) else shape[-1]
    transposed = getattr(module, "is_transposed", None)  # transformers' fused experts say how they store
    if transposed is None:  # undecorated (experts, a, b): hidden is gate_up's input and down's output
        down = name.endswith("down_proj")
        transposed = (shape[-1] == hidden) == down and shape[-2] != shape[-1]
    return shape[-2] if transposed else shape[-1]


@functools.lru_cache(maxsize=32)
def _build(config_json: str) -> Build:
    from transformers import AutoConfig

    from engine.models.loading import build_on_meta

    fields = json.loads(config_json)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    model = build_on_meta(config)
    text = _text_config(config)
    hidden = int(text.hidden_size)
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head is None or (embedding is not None and head.weight is embedding.weight)
    tensors = []
    for name, parameter in model.named_parameters():  # named_parameters() skips tied duplicates
        shape = tuple(parameter.shape)
        owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        tensors.append(ModuleTensor(name, module_kind(name), shape, _in_features(name, shape, owner, hidden)))
    experts, per_token = moe_fields(text)
    return Build(tuple(tensors), tied, int(text.num_hidden_layers), experts, per_token)


def _config_key(config) -> str:
    fields = config.to_dict()
    for key in ("transformers_version", "auto_map"):
        fields.pop(key, None)
    return json.dumps(fields, sort_keys=True, default=str)


def build_tensors(config) -> Build:
    """Every parameter of `config`'s model with its module kind (meta device; cached per config)."""
    try:
        return _build(_config_key(config))
    except Exception as exc:  # transformers raises every kind here (AssertionError, ImportError, ...)
        from engine.models.loading import cannot_build

        raise ConfigError(cannot_build(exc)) from exc


def module_counts(config) -> dict[str, ModuleCount]:
    """Parameters and vectors per module kind, in `MODULE_KINDS` order, kinds the model lacks left out."""
    parameters: dict[str, int] = dict.fromkeys(MODULE_KINDS, 0)
    vectors: dict[str, int] = dict.fromkeys(MODULE_KINDS, 0)
    for tensor in build_tensors(config).tensors:
        parameters[tensor.kind] += tensor.numel
        if tensor.in_features is None:
            vectors[tensor.kind] += tensor.numel
    return {kind: ModuleCount(parameters[kind], vectors[kind]) for kind in MODULE_KINDS if parameters[kind]}


def parameters_by_module(config) -> dict[str, int]:
    """Exact parameter counts per module kind (kinds with none left out)."""
    return {kind: count.parameters for kind, count in module_counts(config).items()}


def unclassified(config) -> tuple[str, ...]:
    """Parameter names no pattern recognizes (layer numbers folded to N), to report and to extend the table."""
    names = (re.sub(r"\.\d+\.", ".N.", t.name) for t in build_tensors(config).tensors if t.kind == "other")
    return tuple(dict.fromkeys(names))
