"""Checkpoint recipes: a weight format per module kind, for checkpoints that ship in mixed formats.

One "weights format" cannot describe how real checkpoints ship: gpt-oss stores its routed experts in MXFP4
(E2M1 + one E8M0 scale per 32: 4.25 bpw; the experts' biases stay bf16) and everything else in bf16;
DeepSeek-V3 stores its linears in FP8 e4m3 with one fp32 scale per 128 x 128 block and keeps embeddings,
head, norms and the MoE gate in bf16 (the gate's fp32 `e_score_correction_bias` is a buffer in
transformers, not a parameter: its 59 KB are left out); NVIDIA ModelOpt's NVFP4 checkpoints store the linears of the blocks in NVFP4 and keep embeddings, head, routers and norms in
bf16; llama.cpp's Q4_K_M gives every tensor a type by its role (`engine.sizing.presets.mix_bytes_by_kind`).

`engine.sizing.modules` classifies and counts every parameter by module kind (`MODULE_KINDS`), matrices
apart from vectors. A `CheckpointRecipe` gives each kind a format; `checkpoint_bytes(config, recipe)`
prices each matrix with its format's `linear_bits_for(in_features)` at the matrix's own row length (not the
hidden size for every matrix, as `engine.sizing.estimate.weight_bytes` does: it only matters for
per-channel and block scales), and vectors at the format's `norm_bits` (16, or 32 for GGUF), as real
checkpoints keep biases and norms unquantized. A llama.cpp mix prices every tensor by its own rules.
Adding a recipe means adding one entry to `CHECKPOINT_RECIPES`.

Where we simplify: partial 128 x 128 blocks at the bottom of a matrix and NVFP4's fp32 per-tensor and
input scales (64 bits per tensor or per expert: under a megabyte even for DeepSeek-V3) are left out;
SSM `A_log` / `D` are priced at 16 bits though some checkpoints keep them fp32.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.quant.gguf import GGUFType
from engine.quant.schemes import QuantScheme
from engine.sizing.modules import (  # noqa: F401  (re-exported: the recipes' vocabulary)
    LINEAR_MODULE_KINDS,
    MODULE_KINDS,
    MODULE_LABELS,
    Build,
    build_tensors,
    module_counts,
    parameters_by_module,
    unclassified,
)
from engine.sizing.presets import PRESETS, WeightPreset, weight_preset

Format = WeightPreset | QuantScheme | GGUFType | str  # anything `as_format` turns into a WeightPreset


@functools.singledispatch
def as_format(fmt: Format) -> WeightPreset:
    """A weight format from a preset, a preset name, a scheme (the sidebar's) or a scheme label."""
    return weight_preset(fmt)


@as_format.register
def _(fmt: GGUFType) -> WeightPreset:
    """A llama.cpp type as llama.cpp stores it: every 2-D weight at its bits, 1-D tensors fp32."""
    bits = fmt.bits_per_weight
    return PRESETS.get(fmt.name) or WeightPreset(
        fmt.name,
        f"GGUF {fmt.name}",
        linear_bits=bits,
        embedding_bits=bits,
        norm_bits=32,
        note=fmt.description,
    )


def fixed_bits(bits: float, vector_bits: float = 16.0) -> WeightPreset:
    """A plain float format: bf16 / fp16 (16), fp32 (32); vectors at `vector_bits`."""
    name = {16.0: "bf16", 32.0: "fp32"}.get(float(bits), f"{bits:g}-bit")
    if vector_bits == bits and name in PRESETS:
        return PRESETS[name]
    label = PRESETS[name].label if name in PRESETS else name
    suffix = f", {vector_bits:g}-bit vectors" if vector_bits != bits else ""
    return WeightPreset(
        f"{name}{suffix}", f"{label}{suffix}", linear_bits=bits, embedding_bits=bits, norm_bits=vector_bits
    )


@dataclass(frozen=True)
class CheckpointRecipe:
    """How a checkpoint stores each module kind; kinds not listed take `default`."""

    name: str  # short key for the CLI and URLs, e.g. "gpt-oss"
    label: str  # what the page shows
    formats: tuple[tuple[str, WeightPreset], ...] = ()  # (module kind, format); a Mapping is accepted too
    default: WeightPreset = field(default_factory=lambda: PRESETS["bf16"])
    source: str = ""  # where the published layout is described
    note: str = ""

    def __post_init__(self) -> None:
        pairs = self.formats.items() if isinstance(self.formats, Mapping) else self.formats
        formats = tuple((str(kind), as_format(fmt)) for kind, fmt in pairs)
        unknown = [kind for kind, _ in formats if kind not in MODULE_KINDS]
        if unknown:
            raise ValueError(f"unknown module kind {', '.join(unknown)}: use {', '.join(MODULE_KINDS)}")
        object.__setattr__(self, "formats", formats)
        object.__setattr__(self, "default", as_format(self.default))

    def format_for(self, kind: str) -> WeightPreset:
        return dict(self.formats).get(kind, self.default)

    @classmethod
    def uniform(cls, fmt: Format) -> CheckpointRecipe:
        """One preset for the whole model, as `engine.sizing.estimate.weight_bytes` prices it: every linear
        kind takes it, embeddings and head its `embedding_bits`, norms its `norm_bits`, unrecognized
        parameters `norm_bits` too (kept unquantized); a llama.cpp mix prices every tensor by its own rules."""
        preset = as_format(fmt)
        if preset.mix is not None:
            return cls(preset.name, preset.label, default=preset, note=preset.note)
        embeddings = preset
        if preset.scheme is not None or preset.embedding_bits != preset.linear_bits:
            embeddings = fixed_bits(preset.embedding_bits, preset.norm_bits)
        formats = {kind: preset for kind in (*LINEAR_MODULE_KINDS, "norms")}
        formats |= {"embeddings": embeddings, "head": embeddings}
        return cls(preset.name, preset.label, formats, fixed_bits(preset.norm_bits), note=preset.note)


CHECKPOINT_RECIPES: dict[str, CheckpointRecipe] = {
    recipe.name: recipe
    for recipe in (
        CheckpointRecipe(
            "gpt-oss",
            "gpt-oss: routed experts MXFP4, the rest bf16",
            {"routed_experts": "mxfp4"},
            source="gpt-oss model card (arXiv 2508.10925), section 2; openai/gpt-oss-* safetensors store "
            "the experts' weights as *_blocks (E2M1) and *_scales (E8M0), their biases bf16.",
            note="Attention, routers, embeddings and head stay bf16: about 4.25 bits per weight in the "
            "experts, which hold over 90% of the parameters.",
        ),
        CheckpointRecipe(
            "deepseek-fp8",
            "DeepSeek-V3: FP8 linears, 128 x 128 blocks",
            dict.fromkeys(("attention", "dense_mlp", "routed_experts", "shared_experts"), "fp8-block128"),
            source="DeepSeek-V3 technical report (arXiv 2412.19437), section 3.3; deepseek-ai/DeepSeek-V3 "
            "README_WEIGHTS.md: FP8 weights with a weight_scale_inv per 128 x 128 block.",
            note="Embeddings, head, norms and the MoE gate stay bf16.",
        ),
        CheckpointRecipe(
            "nvfp4-modelopt",
            "NVFP4 (NVIDIA ModelOpt): linears FP4, the rest bf16",
            dict.fromkeys(
                ("attention", "dense_mlp", "routed_experts", "shared_experts", "state_space"), "nvfp4"
            ),
            source="NVIDIA TensorRT Model Optimizer: NVFP4 checkpoints (e.g. nvidia/*-FP4 on the Hub) keep "
            "lm_head, routers and gates out of quantization.",
            note="E2M1 in blocks of 16 with an E4M3 scale each: 4.5 bpw; one fp32 scale per tensor left out.",
        ),
        CheckpointRecipe(
            "gguf-q4_k_m",
            "GGUF Q4_K_M: a type per tensor by llama.cpp's rules",
            default=PRESETS["Q4_K_M"],
            source="llama.cpp src/llama-quant.cpp (llama_tensor_get_type)",
            note=PRESETS["Q4_K_M"].note,
        ),
        CheckpointRecipe("bf16", "bf16 everywhere (as trained)", note="The usual published checkpoint."),
    )
}


def checkpoint_recipe(spec: CheckpointRecipe | Format) -> CheckpointRecipe:
    """A recipe by name, or a uniform one from any format `as_format` accepts ('int4-g128', a scheme)."""
    if isinstance(spec, CheckpointRecipe):
        return spec
    if isinstance(spec, str) and spec.strip().lower() in CHECKPOINT_RECIPES:
        return CHECKPOINT_RECIPES[spec.strip().lower()]
    return CheckpointRecipe.uniform(spec)


@dataclass(frozen=True)
class CheckpointBytes:
    recipe: CheckpointRecipe
    by_kind: dict[str, float]  # bytes per module kind (kinds the model has, MODULE_KINDS order)
    parameters: dict[str, int]  # parameters per module kind
    formats: dict[str, str]  # the format's label per module kind
    experts: int  # routed experts per layer (0: dense)
    experts_per_token: int
    unclassified: tuple[str, ...]  # parameter names priced as "other"

    @property
    def total(self) -> float:
        return sum(self.by_kind.values())

    @property
    def bits_per_weight(self) -> float:
        count = sum(self.parameters.values())
        return 8 * self.total / count if count else 0.0

    def bits(self, kind: str) -> float:
        """Effective bits per parameter of one module kind, vectors included."""
        return 8 * self.by_kind[kind] / self.parameters[kind] if self.parameters.get(kind) else 0.0

    @property
    def routed_experts(self) -> float:
        """Bytes of the routed experts: decode reads only the ones each token visits."""
        return self.by_kind.get("routed_experts", 0.0)

    def decode_read_bytes(self) -> float:
        """Weight bytes one decode step reads: all but the input embedding (one row) and the routed
        experts its token does not visit (the average expert's bytes, per_token of experts)."""
        unvisited = 1 - self.experts_per_token / self.experts if self.experts else 0.0
        tied = "head" not in self.by_kind  # a tied embedding is the output head too: read whole
        embedding = 0.0 if tied else self.by_kind.get("embeddings", 0.0)
        return self.total - embedding - self.routed_experts * unvisited


def _mix_bits(build: Build, mix) -> dict[str, float]:
    """Bits per parameter of each tensor stored as llama.cpp's `mix`, as `mix_bytes_by_kind` prices them."""
    weights = [(t.name.removesuffix(".weight"), t.shape[-1]) for t in build.tensors if len(t.shape) >= 2]
    plan = mix.plan(weights, build.layers, n_expert=build.experts, tied=build.tied)
    bits = {}
    for tensor in build.tensors:
        planned = plan.get(tensor.name.removesuffix(".weight")) if len(tensor.shape) >= 2 else None
        if planned is None or planned[0] is None:  # 1-D, or a router llama.cpp keeps: F32
            bits[tensor.name] = 32.0
        else:
            bits[tensor.name] = planned[1].bits_per_weight if planned[1] is not None else 16.0
    return bits


def checkpoint_bytes(config, recipe: CheckpointRecipe | Format) -> CheckpointBytes:
    """Bytes per module kind of `config`'s weights stored as `recipe` (a recipe, its name, or a format)."""
    recipe = checkpoint_recipe(recipe)
    build = build_tensors(config)
    mixes = {fmt.mix for fmt in (recipe.default, *dict(recipe.formats).values()) if fmt.mix is not None}
    mix_bits = {mix.name: _mix_bits(build, mix) for mix in mixes}
    by_kind: dict[str, float] = {}
    parameters: dict[str, int] = {}
    for tensor in build.tensors:
        fmt = recipe.format_for(tensor.kind)
        if fmt.mix is not None:
            bits = mix_bits[fmt.mix.name][tensor.name]
        elif tensor.in_features is None:
            bits = fmt.norm_bits
        else:
            bits = fmt.linear_bits_for(tensor.in_features)
        by_kind[tensor.kind] = by_kind.get(tensor.kind, 0.0) + tensor.numel * bits / 8
        parameters[tensor.kind] = parameters.get(tensor.kind, 0) + tensor.numel
    order = [kind for kind in MODULE_KINDS if kind in parameters]
    return CheckpointBytes(
        recipe=recipe,
        by_kind={kind: by_kind[kind] for kind in order},
        parameters={kind: parameters[kind] for kind in order},
        formats={kind: recipe.format_for(kind).label for kind in order},
        experts=build.experts,
        experts_per_token=build.experts_per_token,
        unclassified=unclassified(config),
    )


@dataclass(frozen=True)
class PublishedCheckpoint:
    """A published checkpoint's size, to hold our pricing against."""

    recipe: str  # the CHECKPOINT_RECIPES key that describes how it ships
    bytes: float  # tensors only, as published
    source: str


PUBLISHED_CHECKPOINTS = {  # catalog slug -> published size; a catalog JSON's "published_checkpoint" wins
    "gpt-oss-120b": PublishedCheckpoint("gpt-oss", 60.8 * 2**30, "gpt-oss model card, Table 1: 60.8 GiB"),
    "gpt-oss-20b": PublishedCheckpoint("gpt-oss", 12.8 * 2**30, "gpt-oss model card, Table 1: 12.8 GiB"),
    "qwen3-30b-a3b": PublishedCheckpoint(
        "bf16", 61_064_245_248, "Qwen/Qwen3-30B-A3B model.safetensors.index.json total_size"
    ),
}


def published_checkpoint(slug: str | None) -> PublishedCheckpoint | None:
    """The published checkpoint of a catalog model: its JSON's optional "published_checkpoint" object
    ({"recipe": ..., "bytes": ..., "source": ...}), else `PUBLISHED_CHECKPOINTS`; None if neither has one."""
    if not slug:
        return None
    from engine.sizing.catalog import CATALOG_DIR

    path = CATALOG_DIR / f"{slug}.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    entry = data.get("published_checkpoint") if isinstance(data, dict) else None
    if isinstance(entry, dict) and {"recipe", "bytes", "source"} <= entry.keys():
        return PublishedCheckpoint(str(entry["recipe"]), float(entry["bytes"]), str(entry["source"]))
    return PUBLISHED_CHECKPOINTS.get(slug)
