"""Quantization schemes: what a user picks, validated before any tensor is touched.

`QuantScheme` is a frozen, hashable dataclass so it can be a Streamlit cache key. Every impossible
combination raises `ValueError` with a message that names the fix.

Label grammar (`QuantScheme.label` writes it, `QuantScheme.from_label` reads it back), tokens
separated by spaces, hyphens or commas, in any order when parsing:

    int4 | int8 | ... | nf4 | bnb_fp4 | fp8_e4m3 | fp8_e5m2  format (and bits; required); fp4 is read as
    fp4_e2m1 | fp6_e2m3 | fp6_e3m2                          bnb_fp4 (bitsandbytes' FP4); the OCP elements
    mxfp4 | mxfp6_e2m3 | mxfp6_e3m2 | mxfp8_e4m3 | mxfp8_e5m2 | nvfp4   presets: format, group and scale
    sym | asym | asym_min                                   int only; sym is the default and is omitted;
                                                            asym_min = float minimum offset (Q4_1 style)
    tensor | channel | g<N> | block<N>                      granularity; g128 = groups of 128 along a row,
                                                            block128 = 128 x 128 tiles (DeepSeek-V3)
    clip<r>                                                 clip_ratio, omitted when 1.0
    scale_fp32 | scale_bf16 | scale_fp16                    scale dtype, omitted when fp16 (fp32 for block)
    scale_e8m0 | scale_e8m0_rceil | scale_e4m3              microscaling scales (engine.quant.microscaling)
    rceil                                                   E8M0 scales rounded up (with a preset: mxfp4 rceil)
    dq                                                      double quantization of the scales

so "int4 asym g128", "nf4 g64 scale_fp32 dq" and "fp8_e4m3 channel" (and "int4-asym-g128"). The words
live in `engine.quant.labels` (`write_label` / `read_label`).

Block granularity (`fp8_e4m3 block128`, DeepSeek-V3's FP8 weights as torchao, vLLM and llm-compressor
store them): a 2-D weight (out, in) gets one scale per `group_size` x `group_size` tile, float32 by default;
edge tiles are partial when the size does not divide a dim (SmolLM2's 576 = 4.5 x 128), and tensors with
more dims flatten their leading dims into rows. Activations under a block scheme are quantized per token in
1 x `group_size` groups (`engine.quant.primitives.fake_quantize_tokens`). Block scales are not quantized
again (no double quantization) and take no microscaling scale dtype.

Presets (`PRESETS`) name a whole microscaling format and are printed whenever a scheme is one:

    mxfp4       fp4_e2m1 g32 scale_e8m0        4.25 bits per weight
    mxfp6_e2m3  fp6_e2m3 g32 scale_e8m0        6.25  (mxfp6_e3m2 alike)
    mxfp8_e4m3  fp8_e4m3 g32 scale_e8m0        8.25  (mxfp8_e5m2 alike; "mxfp8" is read as mxfp8_e4m3)
    nvfp4       fp4_e2m1 g16 scale_e4m3        4.5, plus one float32 per tensor

A preset fixes its format, group and scale, so "nvfp4 g32" is refused with the spelled-out alternative.

Formats come from one registry, `engine.quant.elements.ELEMENTS`: a scheme's format is validated there
(which bits it allows, whether it takes a zero point, the messages that name the fix), and its label token
is written and read there, so registering a format is all it takes for schemes to accept it.

Storage convention (`bits_per_weight` and `QTensor.nbytes` agree): codes cost `bits` each, densely
packed; each scale costs its scale dtype; an asymmetric int zero point is an integer code but is stored
in the scale dtype next to its scale (as torchao / Hugging Face do), so int4 asym g128 with fp16 scales
is 4 + 32/128 = 4.25 bits per weight. A float minimum offset (`asym_min`) costs the same: llama.cpp's Q4_1
is int4 asym_min g32 with fp16 scale and min, 5 bits per weight. GPTQ's checkpoints pack zeros at `bits` bits instead (4.156);
we do not model that. E8M0 and E4M3 block scales cost 8 bits; NVFP4's float32 tensor scale adds 32 bits per
tensor, counted by `storage_bits` (so by `bits_per_weight` given both dims) but not by the large-matrix
limit `bits_per_weight(scheme)` (4.5 for nvfp4, like one per-tensor scale). A block scheme costs
8 + 32 * ceil(out/128) * ceil(in/128) / (out * in) for fp8_e4m3 block128 (8.002 for large matrices). With `double_quant` each scale costs 8 bits plus one fp32 per 256 scales plus one
fp32 mean per tensor: NF4 at blocksize 64 is 4 + 8/64 + 32/(64*256) = 4.127 (QLoRA's figure).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from engine.quant import elements  # microscaling registers the OCP fp4 / fp6 elements
from engine.quant.elements import ELEMENTS, ElementFormat
from engine.quant.labels import PRESETS as PRESETS  # re-exported, as SCALE_DTYPES
from engine.quant.labels import (
    SCALE_DTYPES,
    default_scale_dtype,
    normalize_scale_dtype,
    preset_of,
    read_label,
    write_label,
)
from engine.quant.microscaling import MX_SCALE_DTYPES, TWO_LEVEL_SCALE_DTYPES
from engine.quant.shapes import check_shape, tile_counts

# Snapshots of the registry at import, for importers that list formats (the UI's format picker, the
# prior-grid matcher). Validation and the properties below read `elements.ELEMENTS` itself.
FORMATS = tuple(ELEMENTS)
CODEBOOK_FORMATS = tuple(name for name, fmt in ELEMENTS.items() if fmt.family == "codebook")
FP8_FORMATS = tuple(name for name, fmt in ELEMENTS.items() if fmt.family == "float")
GRANULARITIES = ("tensor", "channel", "group", "block")
MICROSCALING_SCALE_DTYPES = MX_SCALE_DTYPES + TWO_LEVEL_SCALE_DTYPES
DOUBLE_QUANT_BLOCK = 256  # scales per fp32 block scale when double-quantizing (bitsandbytes)
DOUBLE_QUANT_BITS = 8

_FLOAT_ELEMENTS_WORDS = "fp4_e2m1, fp6_e2m3, fp6_e3m2, fp8_e4m3 or fp8_e5m2"


@dataclass(frozen=True)
class QuantScheme:
    bits: int = 8  # width of one code; 4-bit codes pack two per byte
    format: str = "int"  # a name in elements.ELEMENTS: uniform int, a codebook (nf4/fp4) or a float8 type
    symmetric: bool = True  # int only: absmax around 0, or min/max range plus a zero point
    granularity: str = "channel"  # who shares a scale: whole tensor, each row/token, each group of a row,
    # or each 2-D block (tile) of a weight ("block": group_size x group_size, DeepSeek-V3's FP8 weights)
    group_size: int | None = None  # elements per group along the last (input) dim, or a block's side
    clip_ratio: float = 1.0  # shrink the observed range before scaling: <1 clips outliers for resolution
    scale_dtype: str | None = None  # how scales (and zero points) are stored; None: float32 for "block",
    # float16 otherwise (labels.default_scale_dtype); bnb keeps absmax in float32;
    # e8m0 / e8m0_rceil / e4m3: the microscaling scale formats (engine.quant.microscaling)
    double_quant: bool = False  # QLoRA: quantize the scales again to 8 bits in blocks of 256
    zero_kind: str = "int"  # asymmetric only: "int" zero point (torchao, GPTQ: 0 exact) or "float" minimum
    # offset (llama.cpp Q4_1: x ~ q * scale + min, the block's min and max are both exact)

    def __post_init__(self) -> None:
        for name in ("bits", "group_size"):  # numpy / torch integers from widgets become plain ints
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                object.__setattr__(self, name, int(value))
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(
                f"bits must be a whole number from 2 to 8 (got {self.bits!r}); to see the unquantized model, "
                "compare against the original instead"
            )
        fmt = elements.element(self.format)  # "unknown format ...; choose one of ..." otherwise
        fmt.check_bits(self.bits)  # e.g. "nf4 is a 16-value (4-bit) codebook, so it takes 4 bits ..."
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"the range must be symmetric or asymmetric (got {self.symmetric!r})")
        if not fmt.takes_zero_point and not self.symmetric:
            raise ValueError(
                f"{self.format} scales each block by its absmax and has no zero point; pick a symmetric "
                "range, or the int format for an asymmetric range"
            )
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"unknown granularity {self.granularity!r}; choose one of {', '.join(GRANULARITIES)}"
            )
        if self.granularity in ("group", "block"):
            size = "group size" if self.granularity == "group" else "block size"
            if self.group_size is None:
                raise ValueError(
                    "per-group scales need a group size (e.g. 32, 64 or 128)"
                    if self.granularity == "group"
                    else "2-D blocks need a block size (e.g. 128 for tiles of 128 x 128, as DeepSeek-V3)"
                )
            if (
                isinstance(self.group_size, bool)
                or not isinstance(self.group_size, int)
                or self.group_size <= 0
            ):
                raise ValueError(
                    f"the {size} must be a positive whole number (got {self.group_size!r}); "
                    "typical sizes are 32, 64 and 128"
                )
        elif self.group_size is not None:
            raise ValueError(
                f"a group size ({self.group_size}) only applies to per-group scales (or 2-D blocks), and this "
                f"scheme has {self.granularity} granularity; pick group granularity or leave the group size out"
            )
        if isinstance(self.clip_ratio, bool) or not isinstance(self.clip_ratio, (int, float)):
            raise ValueError(
                f"the clip ratio must be a number above 0 and at most 1 (got {self.clip_ratio!r})"
            )
        if not 0.0 < self.clip_ratio <= 1.0:
            raise ValueError(
                f"the clip ratio must be above 0 and at most 1 (got {self.clip_ratio}); it shrinks the "
                "observed range, and 1 means no clipping"
            )
        object.__setattr__(self, "clip_ratio", float(self.clip_ratio))
        scale_dtype = default_scale_dtype(self.granularity) if self.scale_dtype is None else self.scale_dtype
        object.__setattr__(self, "scale_dtype", normalize_scale_dtype(scale_dtype))
        if self.zero_kind not in ("int", "float"):
            raise ValueError(f"the zero point must be an integer or a float minimum (got {self.zero_kind!r})")
        if self.zero_kind == "float" and not (fmt.takes_zero_point and not self.symmetric):
            raise ValueError(
                "a float minimum (llama.cpp's Q4_1 style) only exists for an asymmetric range on the int "
                "format; pick the int format with an asymmetric range, or an integer zero point"
            )
        if not isinstance(self.double_quant, bool):
            raise ValueError(f"double quantization must be on or off (got {self.double_quant!r})")
        if self.granularity == "block":
            self._check_block()
        if self.scale_dtype in MICROSCALING_SCALE_DTYPES:
            self._check_microscaling(fmt)
        if self.double_quant and self.granularity == "tensor":
            raise ValueError(
                "double quantization of scales needs per-group or per-channel scales: it compresses many "
                "scales, and a per-tensor scheme has a single one; pick group or channel granularity, or "
                "turn double quantization off"
            )

    def _check_block(self) -> None:
        if self.scale_dtype in MICROSCALING_SCALE_DTYPES:
            raise ValueError(
                "2-D blocks take a float32, float16 or bfloat16 scale (DeepSeek-V3: float32); the E8M0 and "
                "E4M3 microscaling scales go with blocks along a row (group granularity, as mxfp8_e4m3 or nvfp4)"
            )
        if self.double_quant:
            raise ValueError(
                "double quantization compresses many small-block scales; 2-D blocks have few (one per "
                "tile), so their scales are kept as they are: turn double quantization off"
            )

    def _check_microscaling(self, fmt: ElementFormat) -> None:
        kind = "an E4M3 block scale (NVFP4)" if self.scale_dtype == "e4m3" else "a power-of-two (E8M0) scale"
        if not self.symmetric:
            raise ValueError(
                f"{kind} has no zero point; pick a symmetric range, or a float16 / bfloat16 / float32 scale"
            )
        if fmt.family != "float":
            raise ValueError(
                f"{kind} goes with the small float elements; pick {_FLOAT_ELEMENTS_WORDS}, or a float16 / "
                "bfloat16 / float32 scale for the other formats"
            )
        if self.double_quant:
            raise ValueError(
                f"{kind} is already 8 bits and is not quantized again; turn double quantization off"
            )

    # -- derived facts -------------------------------------------------------------------------
    @property
    def element(self) -> ElementFormat:
        """The registered number format (grid, encode / decode) this scheme's `format` names."""
        return elements.element(self.format)

    @property
    def is_int(self) -> bool:
        """A uniform integer grid (codes = round(x / scale) [+ zero])."""
        return self.element.family == "int"

    @property
    def is_codebook(self) -> bool:
        return self.element.family == "codebook"

    @property
    def is_fp8(self) -> bool:
        return self.element.family == "float"

    @property
    def has_zero_point(self) -> bool:
        return self.element.takes_zero_point and not self.symmetric

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return SCALE_DTYPES[self.scale_dtype]

    @property
    def scale_bits(self) -> int:
        """Bits of one stored scale (or zero point) before any double quantization."""
        return torch.finfo(self.torch_scale_dtype).bits

    @property
    def is_microscaling(self) -> bool:
        """Scales by a microscaling rule (E8M0 power of two, or NVFP4's E4M3 x float32 tensor scale)."""
        return self.scale_dtype in MICROSCALING_SCALE_DTYPES

    @property
    def two_level(self) -> bool:
        """NVFP4-style: one float32 scale per tensor on top of the E4M3 block scales."""
        return self.scale_dtype in TWO_LEVEL_SCALE_DTYPES

    @property
    def preset(self) -> str | None:
        """The preset label this scheme is ("mxfp4", "nvfp4"), ignoring clip and rceil; else None."""
        return preset_of(self)

    @property
    def label(self) -> str:
        return write_label(self)

    def __str__(self) -> str:
        return self.label

    @classmethod
    def from_label(cls, label: str) -> QuantScheme:
        """Parse a label such as "int4 asym g128" or "nf4-g64-scale_fp32-dq" (see module docstring)."""
        return parse_label(label)


def parse_label(label: str) -> QuantScheme:
    """Read a scheme label back into a QuantScheme; the inverse of `QuantScheme.label`."""
    return QuantScheme(**read_label(label))  # type: ignore[arg-type]


# -- storage cost ----------------------------------------------------------------------------------


def storage_bits(scheme: QuantScheme, shape: tuple[int, ...] | torch.Size) -> int:
    """Exact storage in bits of a tensor of `shape` under `scheme` (see the module's convention)."""
    check_shape(scheme, shape)
    numel = math.prod(shape)
    if scheme.granularity == "tensor":
        n_scales = 1
    elif scheme.granularity == "channel":
        n_scales = numel // shape[-1]
    elif scheme.granularity == "block":  # one scale per tile, partial edge tiles included
        n_scales = math.prod(tile_counts(shape, scheme.group_size))
    else:
        n_scales = numel // scheme.group_size
    code_bits = math.ceil(numel * scheme.bits / 8) * 8
    if scheme.double_quant:
        n_blocks = math.ceil(n_scales / DOUBLE_QUANT_BLOCK)
        scale_bits = n_scales * DOUBLE_QUANT_BITS + n_blocks * 32 + 32
    else:
        scale_bits = n_scales * scheme.scale_bits
    zero_bits = n_scales * scheme.scale_bits if scheme.has_zero_point else 0
    tensor_scale_bits = 32 if scheme.two_level else 0  # NVFP4's float32 per-tensor scale
    return code_bits + scale_bits + zero_bits + tensor_scale_bits


def bits_per_weight(
    scheme: QuantScheme, in_features: int | None = None, out_features: int | None = None
) -> float:
    """Effective storage bits per weight, scales and zero points included, without any tensor.

    With both dims the figure is exact for an (out_features, in_features) weight and equals
    `QTensor.bits_per_weight`. Otherwise it is the large-matrix limit: group needs nothing, channel
    needs in_features, and tensor returns `bits` (one scale is negligible). Block scales cost one per
    group_size x group_size tile: with in_features, ceil(in_features / group_size) tiles per band of
    group_size rows (the partial last tile of a row counted whole), else one per group_size ** 2 weights.
    """
    if in_features is not None and out_features is not None:
        return storage_bits(scheme, (out_features, in_features)) / (out_features * in_features)
    if scheme.granularity == "tensor":
        return float(scheme.bits)
    if scheme.granularity == "channel":
        if in_features is None:
            raise ValueError(
                "per-channel scales cost depends on the row length; pass in_features "
                "(e.g. bits_per_weight(scheme, in_features=4096))"
            )
        per_scale = in_features
    elif scheme.granularity == "block":
        tiles = 1 if in_features is None else math.ceil(in_features / scheme.group_size)
        per_scale = scheme.group_size * (scheme.group_size if in_features is None else in_features) / tiles
    else:
        if in_features is not None:
            check_shape(scheme, (in_features,))
        per_scale = scheme.group_size
    scale_cost = DOUBLE_QUANT_BITS + 32 / DOUBLE_QUANT_BLOCK if scheme.double_quant else scheme.scale_bits
    zero_cost = scheme.scale_bits if scheme.has_zero_point else 0
    return scheme.bits + (scale_cost + zero_cost) / per_scale
