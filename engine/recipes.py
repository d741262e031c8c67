"""One catalog of named recipes ("W8", "W4A4", "KV4", "NF4 (bnb)", "W4A16 packed", "bf16", ...), typed.

A `Recipe` says what a name means once, for every page: the method config that quantizes the weights
(and activations) through `engine.methods.quantize_model`, a quantized KV cache, whether the weights are
packed into integer kernels (engine.kernels) instead of fake-quantized, whether the output head is packed
too, or which float dtype a plain recast uses. Evaluate's grid, Compare's quick variants and the Speed
page's formats and decode variants all read their recipes from here; strings appear only at the UI edge
(a multiselect's options), which looks names up with `get(name)`.

What each name means, and why (the catalogs this replaced disagreed on "W8" and "W8A8"):

- `W<b>` (W8, W4, W3, W2): symmetric round-to-nearest weights, activations and KV cache untouched.
  8 bits are per output channel, 4 bits and below per group of the input dim. One scale per row is
  how int8 weights are used everywhere (LLM.int8(), SmoothQuant, our W8A16 kernel), and it keeps
  "W8A16 packed" the packed form of "W8"; below 8 bits a row-wide scale costs too much accuracy, so
  they are grouped (the Qllm-Eval grid's group 128). Before this catalog the Evaluate grid used
  int8 per group and the Compare page int8 per channel.
- `W<b>A<a>` (W8A8, W4A8, W4A4): the W<b> weights plus symmetric per-token dynamic activations
  (granularity "channel" on an activation is one scale per token row).
- `KV<b>` (KV8, KV4, KV3, KV2): weights as they are; keys and values asymmetric, one scale and zero per
  token and head (granularity "channel" runs along head_dim), as KIVI's per-token values.
- `NF4`: fake-quantized NF4 in blocks of 64 with an fp32 absmax (bitsandbytes' storage, our primitive);
  `NF4 (bnb)`, `NF4 double quant (bnb)`, `FP4 (bnb)` and `LLM.int8 (bnb)` are bitsandbytes' own layers.
- `W8A16 packed`, `W4A16 packed`, `W8A8 packed`: engine.kernels' QuantLinear. int8 weights per
  channel (the W8 above); int4 asymmetric per group (tinygemm's native form, so it is not W4's
  symmetric grid); W8A8 adds int8 per-token activations. `W4A16 packed + int8 head` also packs the
  output head int8 per channel; `W4A16 tinygemm` forces the CUDA tinygemm kernel (one layer only).
- `fp32`, `bf16`, `fp16`: the model recast to that dtype, nothing quantized.
- `W4 Q4_1` (axis "gguf"): llama.cpp's Q4_1 block format, fake-quantized: int4 asymmetric, groups of
  32, an fp16 scale and a float minimum per group (`int4 asym_min g32`). The offline default model was
  distributed this way, so on it this recipe reproduces the weights exactly (its best 4-bit scheme);
  W4 (symmetric, the model's group size) is a second rounding there. Its group size stays 32.

- `Q4_0`, `Q4_K`, `Q5_K`, `Q6_K`, `Q8_0` (axis "gguf"): llama.cpp's block formats as llama.cpp quantizes
  them (`engine.methods.gguf`, its scale searches and byte layouts in `engine.quant.gguf`), every linear
  weight; a k-quant on rows that are not a multiple of 256 falls back per tensor as llama.cpp does (on
  SmolLM2, 180 of 210 tensors: Q4_K comes out at 5.25 bits per weight).
- `Q4_K_M`, `Q5_K_M` (axis "gguf"): llama.cpp's file-level mixes (`engine.quant.gguf.mixes`), a type per
  tensor by llama.cpp's rules, the token embedding and head included, as `llama-quantize` writes the file.
- axis "formats" (W4 g32, W4 MXFP4, W4 NVFP4, W4A4 MXFP4, W4A4 NVFP4, W8A8 MXFP8, W8 / W8A8 FP8 block128;
  KV8 FP8, KV4 MXFP4, KV4 NVFP4 and K FP8 / V MXFP4, keys and values apart): today's formats for
  Evaluate's "Formats at 4 bits" grid (`engine.evaluation.study.FORMATS_GRID`). MX and NVFP4 fix their
  block (32, 16) in the format, so their `group_sizes` hold only that; activations are quantized per token
  in the same blocks along the input dim, dynamically, as the GPUs that run these formats do. FP8 block128
  is DeepSeek-V3's: weights in 128 x 128 tiles with a float32 scale each, activations in 1 x 128 groups
  per token; edge tiles and groups are partial where 128 does not divide (SmolLM2's 576), so it needs
  no group size from the model.

Group sizes depend on the model: a group must divide every quantized layer's in_features (SmolLM2's
576 takes 64, not 128). Catalog recipes hold their preferred size; `recipe.for_model(*in_features)`
(or `for_module(model)`) returns the recipe with the largest of `group_sizes` dividing every width.
When none divides, fake-quantized recipes fall back to one scale per output channel (what Compare did);
packed int4 has no per-channel kernel, so it refuses with the widths.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from engine.methods.bnb import BnbConfig
from engine.methods.gguf import GGUFConfig
from engine.methods.rtn import RTNConfig
from engine.quant.gguf import Q4_0, Q4_K, Q5_K, Q6_K, Q8_0
from engine.quant.gguf.mixes import Q4_K_M, Q5_K_M
from engine.quant.schemes import QuantScheme, parse_label
from engine.runtime.kv_cache import KVCacheConfig

GROUP_SIZES = (128, 64, 32)  # preferred group sizes, largest first (Qllm-Eval and AWQ use 128)
AXES = (
    "weights",
    "weight-activation",
    "kv",
    "codebook",
    "bitsandbytes",
    "packed",
    "float",
    "gguf",
    "formats",
)
MethodConfig = RTNConfig | BnbConfig | GGUFConfig


@dataclass(frozen=True)
class Recipe:
    name: str  # the catalog key, shown in tables and charts ("W4A16 packed")
    axis: str  # one of AXES: what it varies (Evaluate's grid reads weights, weight-activation, kv)
    description: str  # one line for a tooltip or a caption
    method: MethodConfig | None = None  # quantizes the weights (and activations); None keeps them
    kv: KVCacheConfig | None = None  # a quantized KV cache; None keeps the model's 16/32-bit cache
    packed: bool = False  # True: real integer kernels (engine.kernels.QuantLinear), not fake quantization
    packed_head: bool = False  # packed recipes only: pack the output head too, int8 per channel
    dtype: torch.dtype | None = None  # float recipes: the dtype the whole model is recast to
    kernel: str = ""  # packed recipes: force one kernel ("tinygemm"); empty lets engine.kernels choose
    group_sizes: tuple[int, ...] = GROUP_SIZES  # grouped weights: sizes for_model tries, largest first
    short_name: str = ""  # where the context says "packed" (the Speed page: "W4A16"); empty: name

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise ValueError(f"{self.name}: axis must be one of {', '.join(AXES)} (got {self.axis!r})")
        if self.packed and not isinstance(self.method, RTNConfig):
            raise ValueError(f"{self.name}: a packed recipe needs an RTNConfig of the schemes to pack")
        if self.packed_head and not self.packed:
            raise ValueError(f"{self.name}: only a packed recipe can pack its output head")
        if self.dtype is not None and (self.method is not None or self.kv is not None):
            raise ValueError(f"{self.name}: a float recast ({self.dtype}) quantizes nothing else")

    @property
    def label(self) -> str:
        """What a chart or table shows: the short name where there is one, else the name."""
        return self.short_name or self.name

    @property
    def weights(self) -> QuantScheme | None:
        """The weight scheme of an RTN recipe (None for float, KV-only and bitsandbytes recipes)."""
        return self.method.weights if isinstance(self.method, RTNConfig) else None

    @property
    def grouped(self) -> bool:
        """Whether the weights are grouped, so the group size depends on the model (see for_model)."""
        return self.weights is not None and self.weights.granularity == "group"

    def for_model(self, *in_features: int, group_size: int | None = None) -> Recipe:
        """This recipe with a group size that divides every width in `in_features`: `group_size` when
        given, else the largest of `group_sizes` dividing all of them. Ungrouped recipes come back as
        they are. ValueError, with the widths, when nothing divides a packed recipe's layers."""
        if not self.grouped:
            return self
        size = group_size or next(
            (g for g in self.group_sizes if all(width % g == 0 for width in in_features)), None
        )
        if size is None and self.packed:
            raise ValueError(
                f"{self.name}: no group size in {self.group_sizes} divides every layer width "
                f"{sorted(set(in_features))}; pass group_size"
            )
        if size is None:  # odd widths: one scale per output channel instead
            weights = dataclasses.replace(self.weights, granularity="channel", group_size=None)
        else:
            weights = dataclasses.replace(self.weights, group_size=size)
        return dataclasses.replace(self, method=dataclasses.replace(self.method, weights=weights))

    def for_module(self, model: torch.nn.Module, group_size: int | None = None) -> Recipe:
        """for_model with the in_features of every quantizable linear of `model`."""
        return self.for_model(*in_features_of(model), group_size=group_size)


def in_features_of(model: torch.nn.Module) -> tuple[int, ...]:
    """The distinct in_features of the model's quantizable linears (what a group size must divide)."""
    from engine.quant.linear import linear_names

    return tuple(sorted({model.get_submodule(name).in_features for name in linear_names(model)}))


def _int(bits: int, granularity: str = "channel", group_size: int | None = None, symmetric: bool = True):
    return QuantScheme(bits, "int", symmetric, granularity, group_size)


def _weights(bits: int) -> QuantScheme:
    """W<bits>'s weights: int8 per output channel, fewer bits per group (128 until for_model)."""
    return _int(8) if bits >= 8 else _int(bits, "group", 128)


PER_TOKEN = {bits: _int(bits) for bits in (8, 4)}  # activations: one scale per token row
INT8_CHANNEL = _int(8)  # the int8 kernels' weights (and activations, per token)
INT4_ASYM_GROUP = _int(4, "group", 128, symmetric=False)  # tinygemm's native int4, group set by for_model


def _catalog() -> list[Recipe]:
    recipes = [
        Recipe(f"W{b}", "weights", f"int{b} symmetric weights, {grain}", RTNConfig(_weights(b)))
        for b, grain in ((8, "per output channel"), (4, "per group"), (3, "per group"), (2, "per group"))
    ]
    for w, a in ((8, 8), (4, 8), (4, 4)):
        recipes.append(
            Recipe(
                f"W{w}A{a}",
                "weight-activation",
                f"W{w} weights and int{a} symmetric per-token activations",
                RTNConfig(_weights(w), PER_TOKEN[a]),
            )
        )
    for b in (8, 4, 3, 2):
        recipes.append(
            Recipe(
                f"KV{b}",
                "kv",
                f"int{b} KV cache, asymmetric, one scale and zero per token and head",
                kv=KVCacheConfig(_int(b, symmetric=False)),
            )
        )
    nf4 = QuantScheme(4, "nf4", True, "group", 64, scale_dtype="float32")
    recipes.append(
        Recipe("NF4", "codebook", "NF4 codebook, blocks of 64, fp32 absmax (fake-quantized)", RTNConfig(nf4),
               group_sizes=(64, 32))
    )  # fmt: skip
    recipes += [
        Recipe("NF4 (bnb)", "bitsandbytes", "bitsandbytes' NF4 layers (blocks of 64, fp32 absmax)",
               BnbConfig("nf4")),
        Recipe("NF4 double quant (bnb)", "bitsandbytes", "bitsandbytes' NF4 with 8-bit absmax (QLoRA)",
               BnbConfig("nf4", double_quant=True)),
        Recipe("FP4 (bnb)", "bitsandbytes", "bitsandbytes' FP4 layers (blocks of 64, fp32 absmax)",
               BnbConfig("fp4")),
        Recipe("LLM.int8 (bnb)", "bitsandbytes", "bitsandbytes' LLM.int8(): int8 with fp16 outlier dims",
               BnbConfig("int8")),
    ]  # fmt: skip
    packed = [  # name, short name, description, schemes, output head packed, forced kernel
        ("W8A16 packed", "W8A16", "int8 per-channel weights in the int8 kernel", RTNConfig(INT8_CHANNEL),
         False, ""),
        ("W4A16 packed", "W4A16", "int4 asymmetric grouped weights in the int4 kernel",
         RTNConfig(INT4_ASYM_GROUP), False, ""),
        ("W4A16 packed + int8 head", "W4A16 + int8 head", "W4A16 packed, and the head int8 per channel",
         RTNConfig(INT4_ASYM_GROUP), True, ""),
        ("W4A16 tinygemm", "", "W4A16 packed through the CUDA tinygemm kernel (one layer)",
         RTNConfig(INT4_ASYM_GROUP), False, "tinygemm"),
        ("W8A8 packed", "W8A8", "int8 per-channel weights, int8 per-token activations, int8 matmul",
         RTNConfig(INT8_CHANNEL, INT8_CHANNEL), False, ""),
    ]  # fmt: skip
    recipes += [
        Recipe(name, "packed", text, method, packed=True, packed_head=head, kernel=kernel, short_name=short)
        for name, short, text, method, head, kernel in packed
    ]
    q4_1 = QuantScheme(4, "int", False, "group", 32, zero_kind="float")
    text = "llama.cpp's Q4_1: int4 asymmetric, groups of 32, an fp16 scale and float minimum per group"
    recipes.append(Recipe("W4 Q4_1", "gguf", text, RTNConfig(q4_1), group_sizes=(32,)))
    fallback = "rows that are not a multiple of 256 fall back to {}, as llama.cpp does"
    recipes += [
        Recipe("Q4_0", "gguf", "llama.cpp's Q4_0: 4-bit codes, an fp16 scale per 32 weights (4.5 bits)",
               GGUFConfig(Q4_0)),
        Recipe("Q4_K", "gguf", "llama.cpp's Q4_K: 4-bit super-blocks of 256 with 6-bit sub-block scales and "
               "minimums (4.5 bits); " + fallback.format("Q5_0"), GGUFConfig(Q4_K)),
        Recipe("Q5_K", "gguf", "llama.cpp's Q5_K: 5-bit super-blocks of 256 (5.5 bits); " + fallback.format("Q5_1"),
               GGUFConfig(Q5_K)),
        Recipe("Q6_K", "gguf", "llama.cpp's Q6_K: 6-bit super-blocks of 256 (6.5625 bits); "
               + fallback.format("Q8_0"), GGUFConfig(Q6_K)),
        Recipe("Q8_0", "gguf", "llama.cpp's Q8_0: 8-bit codes, an fp16 scale per 32 weights (8.5 bits)",
               GGUFConfig(Q8_0)),
        Recipe("Q4_K_M", "gguf", "llama.cpp's Q4_K_M file: Q4_K, with attention v and down projections Q6_K "
               "on half the layers and the head (or tied embedding) Q6_K, embeddings included; "
               + fallback.format("Q5_0 / Q8_0"), GGUFConfig(Q4_K_M, include_embeddings=True)),
        Recipe("Q5_K_M", "gguf", "llama.cpp's Q5_K_M file: Q5_K, with attention v and down projections Q6_K "
               "on half the layers and the head (or tied embedding) Q6_K, embeddings included; "
               + fallback.format("Q5_1 / Q8_0"), GGUFConfig(Q5_K_M, include_embeddings=True)),
    ]  # fmt: skip
    recipes += _format_recipes()
    recipes += [
        Recipe(name, "float", f"the model recast to {dtype}, nothing quantized", dtype=dtype)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16))
    ]
    return recipes


def _format_recipes() -> list[Recipe]:
    """Today's formats (axis "formats"): the OCP microscaling and NVIDIA formats on weights and on
    activations, beside int4 with groups of 32. Their block sizes are part of the format (MX: 32, NVFP4:
    16), so `group_sizes` holds only that size and for_model never changes it."""
    mxfp4, nvfp4, mxfp8 = parse_label("mxfp4"), parse_label("nvfp4"), parse_label("mxfp8_e4m3")
    fp8_block = parse_label("fp8_e4m3 block128")
    fp8 = parse_label("fp8_e4m3 channel")
    return [
        Recipe("W4 g32", "formats", "int4 symmetric weights, groups of 32, fp16 scales",
               RTNConfig(_int(4, "group", 32)), group_sizes=(32,)),
        Recipe("W4 MXFP4", "formats", "MXFP4 weights: FP4 (E2M1) elements, blocks of 32, power-of-two "
               "(E8M0) scales", RTNConfig(mxfp4), group_sizes=(32,)),
        Recipe("W4 NVFP4", "formats", "NVFP4 weights: FP4 (E2M1) elements, blocks of 16, FP8 (E4M3) scales "
               "times one FP32 scale per tensor", RTNConfig(nvfp4), group_sizes=(16,)),
        Recipe("W4A4 MXFP4", "formats", "MXFP4 weights and activations (activations per token, dynamic "
               "blocks of 32 along the input, as Blackwell GPUs run them)", RTNConfig(mxfp4, mxfp4),
               group_sizes=(32,)),
        Recipe("W4A4 NVFP4", "formats", "NVFP4 weights and activations (activations per token, dynamic "
               "blocks of 16 with a per-call tensor scale)", RTNConfig(nvfp4, nvfp4), group_sizes=(16,)),
        Recipe("W8A8 MXFP8", "formats", "MXFP8 (E4M3) weights and activations, blocks of 32 with E8M0 "
               "scales", RTNConfig(mxfp8, mxfp8), group_sizes=(32,)),
        Recipe("W8 FP8 block128", "formats", "FP8 (E4M3) weights in 128 x 128 blocks with a float32 scale "
               "each (DeepSeek-V3)", RTNConfig(fp8_block), group_sizes=(128,)),
        Recipe("W8A8 FP8 block128", "formats", "FP8 (E4M3) weights in 128 x 128 blocks and activations in "
               "dynamic 1 x 128 groups per token, float32 scales (DeepSeek-V3)",
               RTNConfig(fp8_block, fp8_block), group_sizes=(128,)),
        Recipe("KV8 FP8", "formats", "FP8 (E4M3) KV cache, one fp16 scale per token and head",
               kv=KVCacheConfig(fp8)),
        Recipe("KV4 MXFP4", "formats", "MXFP4 KV cache: E2M1 in blocks of 32 along each head, power-of-two "
               "scales", kv=KVCacheConfig(mxfp4)),
        Recipe("KV4 NVFP4", "formats", "NVFP4 KV cache: E2M1 in blocks of 16, E4M3 block scales, one FP32 "
               "scale per layer and side, set by the prompt", kv=KVCacheConfig(nvfp4)),
        Recipe("K FP8 / V MXFP4", "formats", "keys FP8 (E4M3) per token and head, values MXFP4",
               kv=KVCacheConfig(key_scheme=fp8, value_scheme=mxfp4)),
    ]  # fmt: skip


RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in _catalog()}


def get(name: str) -> Recipe:
    """The recipe called `name`; ValueError naming every recipe when there is none."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}") from None


def on_axis(*axes: str) -> tuple[Recipe, ...]:
    """The recipes on any of `axes`, in catalog order (Evaluate's grid: weights, weight-activation, kv)."""
    return tuple(recipe for recipe in RECIPES.values() if recipe.axis in axes)
