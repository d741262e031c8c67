"""What the Speed page times, as recipes (engine.recipes), and how each is built: one layer or a whole model.

`FORMATS` (one linear layer, for the microbenchmarks) and `VARIANTS` (a whole model, for decode) map the
page's short names to catalog recipes; a name is looked up once, where it comes in, and everything after
works on the `Recipe`. What gets built is chosen by the recipe's axis from a table (`LAYER_BUILDERS`,
`MODEL_BUILDERS`), not by parsing the name:

- float: a recast (`_Dense` for one layer; the model itself in its own dtype, or a copy);
- packed: engine.kernels' `QuantLinear` from the recipe's schemes, group size fitted to the widths, the
  output head packed too when `recipe.packed_head`, tinygemm when `recipe.kernel` asks for it;
- bitsandbytes: its NF4 / LLM.int8() layers as users get them: on a CPU with AVX512-BF16, bitsandbytes
  repacks 4-bit weights at the first forward for its fast kernel (its default, which engine.methods.bnb
  turns off for exact weights; here speed is the point).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from engine import recipes
from engine._types import Progress, require_free
from engine.kernels import QuantLinear, to_quant_linears
from engine.recipes import Recipe
from engine.speed.bandwidth import float_dtype, model_weight_bytes
from engine.speed.synthetic import DTYPE_NAMES, SYNTHETIC_HEADROOM

COMPUTE_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
FLOATS = {r.label: r for r in recipes.on_axis("float")}  # fp32, bf16, fp16
DTYPES = {name: r.dtype for name, r in FLOATS.items()}
BNB_FORMATS = {r.label: r for r in map(recipes.get, ("NF4 (bnb)", "LLM.int8 (bnb)"))}
PACKED_FORMATS = {r.label: r for r in map(recipes.get, ("W8A16 packed", "W4A16 packed", "W8A8 packed"))}
TINYGEMM = recipes.get("W4A16 tinygemm")
FORMATS = {**FLOATS, **PACKED_FORMATS, TINYGEMM.label: TINYGEMM, **BNB_FORMATS}  # layers
HEAD = recipes.get("W4A16 packed + int8 head")
VARIANTS = {  # whole models, in the page's order
    **FLOATS,
    "W8A16": PACKED_FORMATS["W8A16"],
    "W4A16": PACKED_FORMATS["W4A16"],
    HEAD.label: HEAD,
    "W8A8": PACKED_FORMATS["W8A8"],
    **BNB_FORMATS,
}
INT8_HEAD = recipes.get("W8A16 packed").weights  # the packed output head: int8 per channel


def bnb_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def _lookup(table: dict[str, Recipe], recipe: Recipe | str, what: str) -> Recipe:
    """The recipe a name stands for on the Speed page; a Recipe passes through."""
    if isinstance(recipe, Recipe):
        return recipe
    if recipe not in table:
        raise ValueError(f"unknown {what} {recipe!r}; choose from {', '.join(table)}")
    return table[recipe]


def format_recipe(fmt: Recipe | str) -> Recipe:
    return _lookup(FORMATS, fmt, "format")


def variant_recipe(name: Recipe | str) -> Recipe:
    return _lookup(VARIANTS, name, "variant")


def available_formats(device: str) -> list[str]:
    """The microbenchmark formats for `device` (fp16 and tinygemm on CUDA, fp32 on a CPU)."""
    if device.startswith("cuda"):
        ours = ["fp16", "bf16", "W8A16", "W4A16", TINYGEMM.label, "W8A8"]
    else:
        ours = ["fp32", "bf16", "W8A16", "W4A16", "W8A8"]
    return ours + (list(BNB_FORMATS) if bnb_installed() else [])


def available_variants(device: str) -> list[str]:
    """The end-to-end variants for `device` (a CPU runs no fp16 model; bitsandbytes only when installed)."""
    skip = "fp32" if device.startswith("cuda") else "fp16"
    return [v for v in VARIANTS if v != skip and (v not in BNB_FORMATS or bnb_installed())]


def baseline_format(device: str) -> str:
    return "bf16" if device.startswith("cuda") else "fp32"


def int4_scheme(*in_features: int, group_size: int | None = None):
    """int4 asym (tinygemm's native form) in groups of the largest of 128 / 64 / 32 dividing every width."""
    return PACKED_FORMATS["W4A16"].for_model(*in_features, group_size=group_size).weights


# -- bitsandbytes ----------------------------------------------------------------------------------


def bnb_default_cpu_path(model: nn.Module) -> nn.Module:
    """Give bitsandbytes 4-bit layers back bitsandbytes' own default: on a CPU with AVX512-BF16, repack
    the weights at the first forward for its fast kernel (engine.methods.bnb turns that off so the
    weights stay exactly as quantized; the repacked absmax is rounded to bfloat16)."""
    from bitsandbytes.functional import has_avx512bf16

    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = has_avx512bf16()
    return model


def bnb_config(recipe: Recipe | str, compute_dtype: torch.dtype):
    """The recipe's BnbConfig, computing in `compute_dtype` (what the layer or model is fed)."""
    recipe = format_recipe(recipe)
    return dataclasses.replace(recipe.method, compute_dtype=COMPUTE_DTYPE_NAMES[compute_dtype])


def _is_bnb(layer: nn.Module) -> bool:
    return type(getattr(layer, "weight", None)).__name__ in ("Params4bit", "Int8Params")


# -- one layer (microbenchmarks) -------------------------------------------------------------------


class _Dense(nn.Module):
    """The baseline: nn.functional.linear on a weight in one dtype."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def _tinygemm(module: QuantLinear) -> nn.Module:
    from engine.kernels.cuda import TinygemmLinear

    return TinygemmLinear(module)


KERNEL_WRAPPERS: dict[str, Callable[[QuantLinear], nn.Module]] = {
    "": lambda module: module,
    "tinygemm": _tinygemm,
}


def _float_linear(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device)
    linear.weight.data = weight.float()
    return linear


def _dense_layer(recipe: Recipe, weight: torch.Tensor, group_size, act_dtype) -> nn.Module:
    return _Dense(weight.to(recipe.dtype))


def _packed_layer(recipe: Recipe, weight: torch.Tensor, group_size, act_dtype) -> nn.Module:
    fitted = recipe.for_model(weight.shape[1], group_size=group_size)
    module = QuantLinear.from_linear(_float_linear(weight), fitted.weights, fitted.method.activations)
    return KERNEL_WRAPPERS[recipe.kernel](module)


def _bnb_layer(recipe: Recipe, weight: torch.Tensor, group_size, act_dtype) -> nn.Module:
    from engine.methods.bnb import bnb_linear

    layer = bnb_linear(_float_linear(weight), bnb_config(recipe, act_dtype).transformers_config())
    return bnb_default_cpu_path(layer)


LayerBuilder = Callable[[Recipe, torch.Tensor, "int | None", torch.dtype], nn.Module]
LAYER_BUILDERS: dict[str, LayerBuilder] = {  # by recipe axis
    "float": _dense_layer,
    "packed": _packed_layer,
    "bitsandbytes": _bnb_layer,
}


def layer_for(
    fmt: Recipe | str,
    weight: torch.Tensor,
    group_size: int | None = None,
    act_dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """A module computing x @ weight^T as `fmt` says, on weight's device (bitsandbytes layers compute in
    `act_dtype`)."""
    recipe = format_recipe(fmt)
    if recipe.axis not in LAYER_BUILDERS:
        raise ValueError(
            f"{recipe.name} is not a format the microbenchmarks run; choose from {', '.join(FORMATS)}"
        )
    return LAYER_BUILDERS[recipe.axis](recipe, weight, group_size, act_dtype)


def kernel_name(layer: nn.Module, tokens: int) -> str:
    """What actually runs for `tokens` rows: QuantLinear's kernel, bitsandbytes' path, tinygemm or linear."""
    if isinstance(layer, QuantLinear):
        return layer.kernel_for(tokens)
    if _is_bnb(layer):
        if type(layer.weight).__name__ == "Int8Params":
            return "bnb int8 (LLM.int8)"
        repacked = getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
        return "bnb nf4 (CPU AVX512-BF16)" if repacked else "bnb nf4"
    return "tinygemm" if hasattr(layer, "scales_and_zeros") else f"linear {DTYPE_NAMES[layer.weight.dtype]}"


def _nbytes(layer: nn.Module) -> int:
    """Bytes the layer's weights take: QuantLinear's and _Dense's buffers, or a bitsandbytes layer's
    stored codes and statistics (call it before the first forward, which may repack them)."""
    if _is_bnb(layer):
        from engine.methods.bnb import stored_bytes

        return sum(stored_bytes(layer).values())
    return sum(t.numel() * t.element_size() for t in layer.buffers())


# -- whole models (decode) -------------------------------------------------------------------------


def _recast(model: nn.Module, recipe: Recipe, group_size, progress) -> nn.Module:
    """The model itself in its own dtype, else a recast copy, refused when it would not fit."""
    if float_dtype(model) == recipe.dtype:
        return model
    ratio = torch.finfo(recipe.dtype).bits / torch.finfo(float_dtype(model)).bits
    require_free(
        model_weight_bytes(model) * (1 + ratio) * SYNTHETIC_HEADROOM,  # deepcopy first, then the cast
        str(next(model.parameters()).device),
        f"The {recipe.label} variant copies the model",
        f"It needs that much while it is built. Leave {recipe.label} out or use a smaller model.",
    )
    return copy.deepcopy(model).to(recipe.dtype)


def _packed_copy(model: nn.Module, recipe: Recipe, group_size, progress) -> nn.Module:
    fitted = recipe.for_module(model, group_size=group_size)
    packed = to_quant_linears(model, fitted.weights, fitted.method.activations, progress=progress)
    return pack_output_head(packed) if recipe.packed_head else packed


def _bnb_copy(model: nn.Module, recipe: Recipe, group_size, progress) -> nn.Module:
    from engine.methods.registry import quantize_model

    built = quantize_model(model, bnb_config(recipe, float_dtype(model)), progress=progress).model
    return bnb_default_cpu_path(built)


ModelBuilder = Callable[[nn.Module, Recipe, "int | None", "Progress | None"], nn.Module]
MODEL_BUILDERS: dict[str, ModelBuilder] = {
    "float": _recast,
    "packed": _packed_copy,
    "bitsandbytes": _bnb_copy,
}


def build_variant(
    model: nn.Module, name: Recipe | str, group_size: int | None = None, progress: Progress | None = None
) -> nn.Module:
    """The model itself (its own dtype), a recast copy, or a packed copy; `model` is never changed.
    NotEnoughMemoryError, with the numbers, when a recast copy would not fit in free memory."""
    recipe = variant_recipe(name)
    if recipe.axis not in MODEL_BUILDERS or recipe.kernel:
        raise ValueError(
            f"{recipe.name} is not a variant the decode benchmark builds; choose from {', '.join(VARIANTS)}"
        )
    if recipe.axis == "bitsandbytes" and not bnb_installed():
        raise ValueError(f"{recipe.name} needs bitsandbytes, which is not installed")
    return MODEL_BUILDERS[recipe.axis](model, recipe, group_size, progress)


def pack_output_head(packed: nn.Module) -> nn.Module:
    """Pack a packed copy's output head too, int8 per channel (W8A16), in place. Every method keeps the
    head in 16/32 bits, but in a small model it is most of what a decode step reads (SmolLM2-135M's tied
    fp32 head: 113 of the 168 MB a W4A16 token reads). A tied head gets its own packed copy; the
    embedding table stays as it is for the lookups, which read one row per token."""
    head = packed.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"the output head is a {type(head).__name__}, not a linear layer: nothing to pack")
    packed.set_output_embeddings(QuantLinear.from_linear(head, INT8_HEAD))
    return packed


# -- Methods-lab models ----------------------------------------------------------------------------


def runnable_refusal(quantized: nn.Module) -> str | None:
    """Why `runnable_copy` would refuse a Methods-lab model (without building it); None if it runs."""
    from engine.methods.packed import pack_refusal

    if any(_is_bnb(module) for module in quantized.modules()):
        return None
    return pack_refusal(quantized)


def runnable_copy(quantized: nn.Module, progress: Progress | None = None) -> nn.Module:
    """A copy of a Methods-lab model that runs real kernels: its fake-quantized layers packed from the
    integer codes the method chose (engine.methods.packed.pack_quantized_model), or its bitsandbytes layers on
    bitsandbytes' default CPU path. ValueError, with the reason, when no kernel runs its layers."""
    from engine.methods.packed import pack_quantized_model

    if any(_is_bnb(module) for module in quantized.modules()):
        return bnb_default_cpu_path(copy.deepcopy(quantized))
    return pack_quantized_model(quantized, progress=progress)
