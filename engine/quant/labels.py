"""The scheme label grammar, both ways: `write_label(scheme)` prints it, `read_label(label)` reads its fields.

`engine.quant.schemes` documents the grammar and builds the QuantScheme (`parse_label`, `QuantScheme.label`);
this module holds the words: the presets, the scale dtype names, and the token rules. It reads a scheme
duck-typed (its fields and `element`), so it imports nothing from `schemes`.
"""

from __future__ import annotations

import re
from decimal import Decimal

import torch

from engine.quant.elements import ELEMENTS, element

SCALE_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "e8m0": torch.float8_e8m0fnu,  # power of two, floor rule (OCP MX, torchao FLOOR)
    "e8m0_rceil": torch.float8_e8m0fnu,  # power of two, rounded up (torchao RCEIL)
    "e4m3": torch.float8_e4m3fn,  # NVFP4: E4M3 per block times one float32 per tensor
}
# preset label -> (element, group size, scale dtype); printed whenever a scheme is one (rceil appended)
PRESETS = {
    "mxfp4": ("fp4_e2m1", 32, "e8m0"),
    "mxfp6_e2m3": ("fp6_e2m3", 32, "e8m0"),
    "mxfp6_e3m2": ("fp6_e3m2", 32, "e8m0"),
    "mxfp8_e4m3": ("fp8_e4m3", 32, "e8m0"),
    "mxfp8_e5m2": ("fp8_e5m2", 32, "e8m0"),
    "nvfp4": ("fp4_e2m1", 16, "e4m3"),
}
_PRESET_ALIASES = {"mxfp8": "mxfp8_e4m3"}
_SCALE_DTYPE_ALIASES = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "e8m0": "e8m0",
    "ue8m0": "e8m0",
    "e8m0_floor": "e8m0",
    "e8m0_rceil": "e8m0_rceil",
    "e4m3": "e4m3",
    "ue4m3": "e4m3",
}
_SHORT_SCALE = {
    "float16": "fp16",
    "bfloat16": "bf16",
    "float32": "fp32",
    "e8m0": "e8m0",
    "e8m0_rceil": "e8m0_rceil",
    "e4m3": "e4m3",
}
_FIELD_WORDS = {  # how a label error names a field
    "format": "the format",
    "bits": "the bits",
    "symmetric": "the range",
    "zero_kind": "the zero point",
    "granularity": "the granularity",
    "group_size": "the group size",
    "clip_ratio": "the clip ratio",
    "scale_dtype": "the scale dtype",
    "double_quant": "double quantization",
    "rceil": "the scale rounding (rceil)",
}
_GRAMMAR_HINT = (
    "expected tokens like int4, nf4, bnb_fp4, fp4_e2m1, fp8_e4m3, mxfp4, nvfp4, sym, asym, tensor, channel, "
    "g128, block128, clip0.9, scale_fp32, scale_e8m0, rceil, dq"
)


def default_scale_dtype(granularity: str) -> str:
    """The scale dtype a label leaves out: float32 for 2-D blocks (DeepSeek-V3's FP8 blocks), else float16."""
    return "float32" if granularity == "block" else "float16"


def normalize_scale_dtype(value: object) -> str:
    """The canonical scale dtype name of a name, an alias ("fp32") or a torch dtype."""
    if isinstance(value, torch.dtype):
        for name, dtype in SCALE_DTYPES.items():
            if dtype == value:
                return name
    elif isinstance(value, str) and value.lower() in _SCALE_DTYPE_ALIASES:
        return _SCALE_DTYPE_ALIASES[value.lower()]
    raise ValueError(
        f"the scale dtype must be one of float16, bfloat16, float32, or a microscaling scale: e8m0, "
        f"e8m0_rceil, e4m3 (got {value!r})"
    )


def preset_of(scheme) -> str | None:
    """The preset label a scheme is ("mxfp4", "nvfp4"), ignoring clip and rceil; else None."""
    scale = "e8m0" if scheme.scale_dtype == "e8m0_rceil" else scheme.scale_dtype
    for name, (fmt, group, preset_scale) in PRESETS.items():
        if (scheme.format, scheme.granularity, scheme.group_size, scale) == (
            fmt,
            "group",
            group,
            preset_scale,
        ):
            return name
    return None


def _clip(ratio: float) -> str:
    return f"clip{Decimal(repr(ratio)):f}"  # positional: no "e-05" hyphen


def write_label(scheme) -> str:
    """The label of a QuantScheme (see engine.quant.schemes for the grammar)."""
    if preset := preset_of(scheme):
        parts = [preset] + (["rceil"] if scheme.scale_dtype == "e8m0_rceil" else [])
        if scheme.clip_ratio != 1.0:
            parts.append(_clip(scheme.clip_ratio))
        return " ".join(parts)
    parts = [scheme.element.label(scheme.bits)]
    if scheme.has_zero_point:
        parts.append("asym_min" if scheme.zero_kind == "float" else "asym")
    grain = {"group": f"g{scheme.group_size}", "block": f"block{scheme.group_size}"}
    parts.append(grain.get(scheme.granularity, scheme.granularity))
    if scheme.clip_ratio != 1.0:
        parts.append(_clip(scheme.clip_ratio))
    if scheme.scale_dtype != default_scale_dtype(scheme.granularity):
        parts.append(f"scale_{_SHORT_SCALE[scheme.scale_dtype]}")
    if scheme.double_quant:
        parts.append("dq")
    return " ".join(parts)


def read_label(label: str) -> dict[str, object]:
    """The QuantScheme fields a label sets (the inverse of `write_label`); ValueError naming the token."""
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"empty scheme label; {_GRAMMAR_HINT}")
    fields: dict[str, object] = {}
    preset: list[str] = []  # the preset token, once read

    def put(key: str, value: object, token: str) -> None:
        if key in fields:
            if preset and key in ("format", "bits", "granularity", "group_size", "scale_dtype"):
                fmt, group, scale = PRESETS[preset[0]]
                raise ValueError(
                    f"{preset[0]} fixes its format, blocks of {group} and its scale, so {token!r} cannot "
                    f"change them; for other settings write the element with the usual grammar, e.g. "
                    f"'{fmt} g64 scale_{scale}'"
                )
            raise ValueError(f"scheme label {label!r} sets {_FIELD_WORDS[key]} twice (at {token!r})")
        fields[key] = value

    for token in re.split(r"[\s,\-]+", label.strip().lower()):
        if not token:
            continue
        if (name := _PRESET_ALIASES.get(token, token)) in PRESETS:
            fmt, group, scale = PRESETS[name]
            for key, value in (("format", fmt), ("granularity", "group"), ("group_size", group)):
                put(key, value, token)
            put("bits", element(fmt).bits[0], token)
            put("scale_dtype", scale, token)
            preset.append(name)
        elif token == "rceil":
            put("rceil", True, token)
        elif named := _format_token(token):
            put("format", named[0], token)
            put("bits", named[1], token)
        elif token in ("sym", "asym"):
            put("symmetric", token == "sym", token)
        elif token == "asym_min":
            put("symmetric", False, token)
            put("zero_kind", "float", token)
        elif token in ("tensor", "channel"):
            put("granularity", token, token)
        elif m := re.fullmatch(r"(g|block)(\d+)", token):
            put("granularity", "group" if m.group(1) == "g" else "block", token)
            put("group_size", int(m.group(2)), token)
        elif m := re.fullmatch(r"clip(\d*\.?\d+)", token):
            put("clip_ratio", float(m.group(1)), token)
        elif m := re.fullmatch(r"scale_(\w+)", token):
            put("scale_dtype", m.group(1), token)
        elif token == "dq":
            put("double_quant", True, token)
        else:
            raise ValueError(f"cannot read {token!r} in scheme label {label!r}; {_GRAMMAR_HINT}")
    if "format" not in fields:
        raise ValueError(f"scheme label {label!r} names no format; {_GRAMMAR_HINT}")
    if fields.pop("rceil", False):
        if normalize_scale_dtype(fields.get("scale_dtype", "float16")) != "e8m0":
            raise ValueError(
                f"rceil (rounding the power-of-two scale up) only applies to E8M0 scales, as in 'mxfp4 rceil' "
                f"or 'fp4_e2m1 g32 scale_e8m0 rceil' (label {label!r})"
            )
        fields["scale_dtype"] = "e8m0_rceil"
    return fields


def _format_token(token: str) -> tuple[str, int] | None:
    """(format, bits) when a label token names a registered format ("int4", "nf4"), else None."""
    for name, fmt in ELEMENTS.items():
        if (bits := fmt.parse(token)) is not None:
            return name, bits
    return None
