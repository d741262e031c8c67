"""How many bits each weight costs in memory, per storage format: the Memory page's weight presets.

A preset says what happens to each kind of parameter (see `engine.models.loading.parameter_kind`): linear layers
(attention, MLP, experts) take the quantized format with its scales and zero points; embeddings, the
head and norms usually stay 16-bit under weight-only methods (GPTQ, AWQ, bitsandbytes), while
llama.cpp's formats quantize the embeddings and head too and keep norms in fp32.

llama.cpp's file-level mixes (Q3_K_M, Q4_K_M, Q5_K_M) use a different type per tensor: their presets carry
the mix (`engine.quant.gguf.mixes`), and `mix_bytes_by_kind` prices every tensor of the config (built on
the meta device, no weights read) at the type llama.cpp's rules give it for its role, layer and row
length, fallback included; 1-D tensors (norms, biases) at F32 as llama.cpp keeps them. On SmolLM2-135M
this gives 103,668,480 bytes of tensors for Q4_K_M (the published file, with its tokenizer, is about
105 MB); on Llama-3.1-8B 4.92 GB, the published Q4_K_M file's size.

Where we simplify: GPTQ checkpoints also store a `g_idx` of one int32 per input feature (32 / out_features
bits per weight, under 0.01 bpw at 4096 rows); we leave it out.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

from engine.quant.gguf.mixes import GGUF_MIXES, GGUFMix, expert_count
from engine.quant.schemes import QuantScheme, bits_per_weight

LINEAR_KINDS = ("attention", "mlp")


@dataclass(frozen=True)
class WeightPreset:
    name: str  # short key for the CLI and URLs, e.g. "int4-g128"
    label: str  # what the page shows
    scheme: QuantScheme | None = None  # linear layers' format (scales priced by bits_per_weight); None: fixed
    linear_bits: float = 16.0  # bits per linear weight when there is no scheme
    packed_zero_bits: float = 0.0  # bits per group for a zero point packed beside the codes (GPTQ/AWQ)
    embedding_bits: float = 16.0  # embeddings and the head (tied or not)
    norm_bits: float = 16.0  # norms and other small vectors
    outlier_fraction: float = 0.0  # share of linear weights kept in 16-bit (LLM.int8 outlier columns)
    note: str = ""
    mix: GGUFMix | None = (
        None  # a llama.cpp file type: priced per tensor from the config (mix_bytes_by_kind);
    )
    # linear_bits / embedding_bits then hold its base type's bits, for where no config is at hand

    def __post_init__(self) -> None:
        if not 0.0 <= self.outlier_fraction < 1.0:
            raise ValueError(f"outlier_fraction must be in [0, 1) (got {self.outlier_fraction})")

    def linear_bits_for(self, in_features: int) -> float:
        """Bits per linear weight for rows of `in_features`, scales, zeros and 16-bit outliers included."""
        if self.scheme is None:
            quantized = self.linear_bits
        elif self.scheme.granularity in ("channel", "block"):  # block: ceil(in / g) tiles per g rows
            quantized = bits_per_weight(self.scheme, in_features=in_features)
        else:  # groups: libraries pad a last partial group, so price the large-matrix limit
            quantized = bits_per_weight(self.scheme)
        if self.scheme is not None and self.scheme.granularity == "group":
            quantized += self.packed_zero_bits / self.scheme.group_size
        return (1 - self.outlier_fraction) * quantized + self.outlier_fraction * 16.0

    def bits_for(self, kind: str, in_features: int) -> float:
        if kind in LINEAR_KINDS:
            return self.linear_bits_for(in_features)
        if kind in ("embeddings", "head"):
            return self.embedding_bits
        return self.norm_bits

    @property
    def quantized(self) -> bool:
        return self.scheme is not None or self.linear_bits < 16

    @classmethod
    def from_scheme(cls, scheme: QuantScheme) -> WeightPreset:
        """A weight-only preset for any scheme (the sidebar's), with embeddings and head kept 16-bit."""
        return cls(scheme.label, f"{scheme.label} (your scheme)", scheme=scheme, note="Linear layers only.")


def _gguf(name: str, bits: float, note: str) -> WeightPreset:
    """llama.cpp formats quantize embeddings and head too, and keep norms in fp32."""
    return WeightPreset(name, f"GGUF {name}", linear_bits=bits, embedding_bits=bits, norm_bits=32, note=note)


def _gguf_mix(mix: GGUFMix, note: str) -> WeightPreset:
    bits = mix.base.bits_per_weight
    return WeightPreset(
        mix.name, f"GGUF {mix.name}", linear_bits=bits, embedding_bits=bits, norm_bits=32, note=note, mix=mix
    )


def _scheme(label: str) -> QuantScheme:
    return QuantScheme.from_label(label)


PRESETS: dict[str, WeightPreset] = {
    p.name: p
    for p in (
        WeightPreset("fp32", "fp32", linear_bits=32, embedding_bits=32, norm_bits=32, note="CPU default."),
        WeightPreset("bf16", "bf16 / fp16", linear_bits=16, note="The usual GPU reference."),
        WeightPreset(
            "fp8",
            "FP8 e4m3 (per-channel)",
            scheme=_scheme("fp8_e4m3 channel scale_fp32"),
            note="One fp32 scale per output row, as vLLM / TensorRT-LLM checkpoints store it.",
        ),
        WeightPreset(
            "fp8-block128",
            "FP8 e4m3 block128 (DeepSeek-V3)",
            scheme=_scheme("fp8_e4m3 block128"),
            note="One fp32 scale per 128 x 128 block, as DeepSeek-V3 and vLLM / llm-compressor's FP8 block "
            "checkpoints store it: 8 + 32/(128 x 128) = 8.002 bpw for large matrices. Priced per row length "
            "with a partial last block counted whole; partial blocks at the bottom of a matrix are left out.",
        ),
        WeightPreset(
            "int8",
            "int8 per-channel (W8, SmoothQuant)",
            scheme=_scheme("int8 channel"),
            note="One fp16 scale per output row.",
        ),
        WeightPreset(
            "llm.int8",
            "LLM.int8() (bitsandbytes)",
            scheme=_scheme("int8 channel scale_fp32"),
            note="bitsandbytes stores every weight in int8 with an fp32 row scale; outlier columns are "
            "dequantized on the fly, so they cost nothing extra in memory.",
        ),
        WeightPreset(
            "int4-g128",
            "int4 g128, fp16 scales",
            scheme=_scheme("int4 g128"),
            note="Symmetric: 4 + 16/128 = 4.125 bits per weight.",
        ),
        WeightPreset(
            "gptq-int4-g128",
            "GPTQ int4 g128 (checkpoint)",
            scheme=_scheme("int4 g128"),
            packed_zero_bits=4,
            note="fp16 scale plus a zero packed at 4 bits per group of 128: 4.156 bpw (g_idx left out).",
        ),
        WeightPreset(
            "awq-int4-g128",
            "AWQ int4 g128 (checkpoint)",
            scheme=_scheme("int4 g128"),
            packed_zero_bits=4,
            note="Same layout cost as GPTQ: fp16 scale and a 4-bit zero per group.",
        ),
        WeightPreset("int3-g128", "int3 g128", scheme=_scheme("int3 g128"), note="3 + 16/128 = 3.125 bpw."),
        WeightPreset(
            "int2-g64",
            "int2 g64",
            scheme=_scheme("int2 g64"),
            note="2 + 16/64 = 2.25 bpw; quality collapses.",
        ),
        WeightPreset(
            "nf4",
            "NF4 (bitsandbytes)",
            scheme=_scheme("nf4 g64 scale_fp32"),
            note="Blocksize 64 with an fp32 absmax: 4.5 bpw.",
        ),
        WeightPreset(
            "nf4-dq",
            "NF4 + double quant (QLoRA)",
            scheme=_scheme("nf4 g64 scale_fp32 dq"),
            note="Absmax re-quantized to 8 bits in blocks of 256: 4.127 bpw.",
        ),
        WeightPreset(
            "fp4", "FP4 (bitsandbytes)", scheme=_scheme("fp4 g64 scale_fp32"), note="Same layout as NF4."
        ),
        WeightPreset(
            "mxfp8",
            "MXFP8 e4m3 (OCP microscaling)",
            scheme=_scheme("mxfp8_e4m3"),
            note="FP8 elements in blocks of 32 sharing one power-of-two (E8M0) scale: 8 + 8/32 = 8.25 bpw.",
        ),
        WeightPreset(
            "mxfp4",
            "MXFP4 (OCP microscaling)",
            scheme=_scheme("mxfp4"),
            note="FP4 (E2M1) elements in blocks of 32 sharing one E8M0 scale: 4.25 bpw; how gpt-oss ships "
            "its experts.",
        ),
        WeightPreset(
            "nvfp4",
            "NVFP4 (NVIDIA)",
            scheme=_scheme("nvfp4"),
            note="FP4 (E2M1) in blocks of 16 with an FP8 (E4M3) scale each, times one FP32 scale per "
            "tensor: 4.5 bpw plus 32 bits per tensor.",
        ),
        _gguf("Q8_0", 8.5, "int8 with an fp16 scale per 32: 8.5 bpw."),
        _gguf("Q6_K", 6.5625, "Super-blocks of 256: 6.5625 bpw."),
        _gguf_mix(
            GGUF_MIXES["Q5_K_M"],
            "Q5_K, attention v and down projections Q6_K on half the layers, "
            "head Q6_K: a type per tensor by llama.cpp's rules.",
        ),
        _gguf_mix(
            GGUF_MIXES["Q4_K_M"],
            "Q4_K, attention v and down projections Q6_K on half the layers, "
            "head Q6_K: a type per tensor by llama.cpp's rules.",
        ),
        _gguf(
            "Q4_1",
            5.0,
            "int4 with fp16 scale and min per 32: 5 bpw (how the default SmolLM2 was distributed).",
        ),
        _gguf("Q4_0", 4.5, "int4 with an fp16 scale per 32: 4.5 bpw."),
        _gguf("Q5_K", 5.5, "5-bit super-blocks of 256, 6-bit sub-block scales and mins: 5.5 bpw."),
        _gguf("Q4_K", 4.5, "4-bit super-blocks of 256, 6-bit sub-block scales and mins: 4.5 bpw."),
        _gguf_mix(
            GGUF_MIXES["Q3_K_M"],
            "Q3_K, attention v Q5_K / Q4_K, attention output Q4_K, down "
            "projections Q5_K / Q4_K, head Q6_K: a type per tensor by llama.cpp's rules.",
        ),
        _gguf("Q3_K", 3.4375, "3-bit super-blocks of 256, 6-bit sub-block scales: 3.4375 bpw."),
        _gguf("Q2_K", 2.625, "2-bit super-blocks of 256, 4-bit sub-block scales and mins: 2.625 bpw."),
    )
}


def weight_preset(name: str | WeightPreset | QuantScheme) -> WeightPreset:
    """A preset by name (case-insensitive), or a scheme label such as 'int4 asym g64'."""
    if isinstance(name, WeightPreset):
        return name
    if isinstance(name, QuantScheme):
        return WeightPreset.from_scheme(name)
    for key, preset in PRESETS.items():
        if key.lower() == str(name).strip().lower():
            return preset
    try:
        return WeightPreset.from_scheme(QuantScheme.from_label(str(name)))
    except ValueError as exc:
        raise ValueError(
            f"unknown weight format {name!r}: use one of {', '.join(PRESETS)} or a scheme label such as "
            f"'int4 asym g64' ({exc})"
        ) from exc


@functools.lru_cache(maxsize=64)
def _tensors(config_json: str) -> tuple[tuple[tuple[str, tuple[int, ...]], ...], bool]:
    """((name, shape) of every parameter, tied weights once), and whether the head is the embedding."""
    from transformers import AutoConfig

    from engine.models.loading import build_on_meta

    fields = json.loads(config_json)
    model = build_on_meta(AutoConfig.for_model(fields.pop("model_type"), **fields))
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head is None or (embedding is not None and head.weight is embedding.weight)
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters()), tied


def mix_bytes_by_kind(config, mix: GGUFMix) -> dict[str, float]:
    """Bytes per parameter kind of `config`'s weights stored as llama.cpp's `mix`: each 2-D (or 3-D expert)
    weight at the type the mix's rules and fallback give it (F16 where none fits, routers F32), 1-D at F32."""
    from engine.models.loading import parameter_kind

    fields = config.to_dict()
    for key in ("transformers_version", "auto_map"):
        fields.pop(key, None)
    tensors, tied = _tensors(json.dumps(fields, sort_keys=True, default=str))
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    weights = [(name.removesuffix(".weight"), shape[-1]) for name, shape in tensors if len(shape) >= 2]
    plan = mix.plan(weights, int(text.num_hidden_layers), n_expert=expert_count(text), tied=tied)
    by_kind: dict[str, float] = {}
    for name, shape in tensors:
        count = functools.reduce(lambda a, b: a * b, shape, 1)
        planned = plan.get(name.removesuffix(".weight"), (None, None)) if len(shape) >= 2 else None
        if planned is None or planned[0] is None:  # 1-D, or a router llama.cpp keeps: F32
            bits = 32.0
        else:
            bits = planned[1].bits_per_weight if planned[1] is not None else 16.0
        kind = parameter_kind(name)
        by_kind[kind] = by_kind.get(kind, 0.0) + count * bits / 8
    return by_kind
