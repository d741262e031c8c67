"""Exact parameter counts from a config alone, by kind, with MoE's active share.

The model is built on the meta device (`engine.models.loading.build_on_meta`): nothing is allocated and no
weights are read, so a 671B config is counted on a laptop. Tied embeddings are counted once. Results are
cached per config, since large MoE configs take seconds to build.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

ROUTED_EXPERT = re.compile(r"(?<![A-Za-z_])experts\.")  # routed experts, not `shared_experts`


class ConfigError(ValueError):
    """A config that cannot be sized (missing or impossible fields); the message is for the user."""


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


@dataclass(frozen=True)
class ParameterCount:
    by_kind: dict[str, int]  # embeddings, attention, mlp, norms, head, other (tied weights once)
    routed_experts: int  # parameters of routed MoE experts (part of "mlp")
    experts: int  # routed experts per layer (0 for dense models)
    experts_per_token: int  # experts each token visits

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    @property
    def active(self) -> int:
        """Parameters one token reads: all but the routed experts it does not visit."""
        if not self.experts:
            return self.total
        return self.total - round(self.routed_experts * (1 - self.experts_per_token / self.experts))

    @property
    def active_without_input_embedding(self) -> int:
        """Active parameters less the input embedding, of which a token reads one row (gpt-oss's model card
        counts this way; Mixtral's and DeepSeek's figures include it). A tied embedding is the output head
        too, read whole every token, so it stays."""
        if not self.by_kind.get("head"):
            return self.active
        return self.active - self.by_kind.get("embeddings", 0)


def moe_fields(config) -> tuple[int, int]:
    experts = 0
    for name in ("num_local_experts", "num_experts", "n_routed_experts"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 1:
            experts = value
            break
    per_token = getattr(config, "num_experts_per_tok", None) or 0
    return experts, int(per_token) if experts else 0


@functools.lru_cache(maxsize=64)
def _count(config_json: str) -> ParameterCount:
    from transformers import AutoConfig

    from engine.models.loading import build_on_meta, parameter_kind

    fields = json.loads(config_json)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    model = build_on_meta(config)
    counts: dict[str, int] = {}
    routed = 0
    for name, parameter in model.named_parameters():  # named_parameters() skips tied duplicates
        kind = parameter_kind(name)
        counts[kind] = counts.get(kind, 0) + parameter.numel()
        if ROUTED_EXPERT.search(name):
            routed += parameter.numel()
    experts, per_token = moe_fields(_text_config(config))
    if not routed:  # a config class's default MoE fields (Nemotron-H) on a model built without experts
        experts, per_token = 0, 0
    return ParameterCount(counts, routed, experts, per_token)


def count_parameters(config) -> ParameterCount:
    """Exact parameter counts from the config alone (meta device; cached per config)."""
    fields = config.to_dict()
    fields.pop("transformers_version", None)
    fields.pop("auto_map", None)
    try:
        return _count(json.dumps(fields, sort_keys=True, default=str))
    except Exception as exc:  # transformers raises every kind here (AssertionError, ImportError, ...)
        from engine.models.loading import cannot_build

        raise ConfigError(cannot_build(exc)) from exc


def parameters_by_kind(config) -> dict[str, int]:
    return dict(count_parameters(config).by_kind)
