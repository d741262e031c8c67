"""The OCP microscaling (MX) elements and scale formats, and NVIDIA's NVFP4 two-level scale.

Elements (`MiniFloat`, registered in `elements.ELEMENTS` on import): the OCP MX v1.0 small floats
`fp4_e2m1` (+-{0, 0.5, 1, 1.5, 2, 3, 4, 6}), `fp6_e2m3` (largest 7.5) and `fp6_e3m2` (largest 28). They
have no infinities or NaNs; every bit pattern is a number. A code is the element's bit pattern (sign bit on
top, then exponent, then mantissa), as torchao's `f32_to_f4_unpacked` / `f32_to_f6_*_unpacked` return it,
so fp4 codes pack two per byte. Values round to nearest, ties to even, and saturate at the largest value.

Scale formats (a QuantScheme's `scale_dtype`, one scale per block of the scheme's granularity):

- `e8m0`: a power of two, 2**(floor(log2(block absmax)) - emax), emax the element's largest exponent
  (2 for E2M1 and E2M3, 4 for E3M2, 8 for E4M3, 15 for E5M2); values above the top element saturate.
  Exactly torchao's `to_mx` with ScaleCalculationMode.FLOOR (the OCP spec's rule), including its two
  quirks: the exponent is read from the float32 bits of the absmax, and a block whose scale would be
  2**-127 is divided by 2**-126 (float32's smallest normal) while its stored scale stays 2**-127.
- `e8m0_rceil`: the round-up variant, 2**ceil(log2(absmax / element max)), so no element saturates;
  torchao's ScaleCalculationMode.RCEIL fallback (a stored 2**-127 divides by 1, as torchao does).
- `e4m3`: NVFP4's two levels. One float32 per tensor, s_t = tensor absmax / (448 * element max), and one
  float8 E4M3 per block, fp8(clamp(block absmax / element max / s_t, 2**-6, 448)); elements are
  x * ((1 / s_t) / block scale), and values are codes * (s_t * block scale): torchao's `nvfp4_quantize`
  with a per-tensor scale, in its order of operations. An all-zero tensor uses s_t = 1 (torchao divides
  by zero there).

Each rule returns the stored scales, the float32 scale a code is multiplied by, and the float32 reciprocal
an element is multiplied by before rounding (kept separate, since torchao computes them separately).
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import NamedTuple

import torch
from torch import Tensor

from engine.quant.elements import ELEMENTS, ElementFormat, register

MX_SCALE_DTYPES = ("e8m0", "e8m0_rceil")
TWO_LEVEL_SCALE_DTYPES = ("e4m3",)
E4M3_MAX = 448.0
E4M3_TINY = 2.0**-6  # torch.finfo(torch.float8_e4m3fn).tiny: the smallest block scale NVFP4 stores
E8M0_BIAS = 127
F32_MIN_NORMAL = 2.0**-126


class MiniFloat(ElementFormat):
    """An OCP small float with `ebits` exponent and `mbits` mantissa bits, no inf / NaN; codes are bits."""

    family = "float"
    takes_zero_point = False

    def __init__(self, name: str, ebits: int, mbits: int) -> None:
        self.name, self.ebits, self.mbits = name, ebits, mbits
        self.bits = (1 + ebits + mbits,)
        self.bias = 2 ** (ebits - 1) - 1

    def check_bits(self, bits: int) -> None:
        if bits != self.bits[0]:
            raise ValueError(
                f"{self.name} is a {self.bits[0]}-bit float, so it takes {self.bits[0]} bits (got {bits}); "
                f"pick the int format for {bits} bits"
            )

    @cached_property
    def positive(self) -> Tensor:
        """The non-negative values in code order (ascending), float32 (shared: do not modify)."""
        values = []
        for code in range(2 ** (self.ebits + self.mbits)):
            exponent, mantissa = code >> self.mbits, code & ((1 << self.mbits) - 1)
            if exponent == 0:  # subnormal
                values.append(mantissa * 2.0 ** (1 - self.bias - self.mbits))
            else:
                values.append((1 + mantissa / 2**self.mbits) * 2.0 ** (exponent - self.bias))
        return torch.tensor(values, dtype=torch.float32)

    @cached_property
    def table(self) -> Tensor:
        """Value of every code (index = bit pattern, sign on top), float32."""
        return torch.cat([self.positive, -self.positive])

    def grid_max(self, scheme) -> float:
        return float(self.positive[-1])

    def code_dtype(self, scheme) -> torch.dtype:
        return torch.uint8

    def grid_values(self, scheme) -> Tensor:
        return torch.unique(self.table)

    def all_codes(self, scheme) -> Tensor:
        return torch.arange(2 ** self.bits[0], dtype=torch.uint8)

    def _round(self, x: Tensor, inv: Tensor) -> Tensor:
        """x * inv saturated and rounded to the nearest element (ties to even), as float32."""
        top = self.grid_max(None)
        v = torch.mul(x, inv).clamp_(-top, top)
        _, exponent = torch.frexp(v)  # v = m * 2**exponent, 0.5 <= |m| < 1
        # spacing of the grid around v: 2**(floor(log2|v|) - mbits), at least the subnormal spacing
        step = exponent.sub_(1).clamp_(min=1 - self.bias).sub_(self.mbits)
        return torch.ldexp(torch.ldexp(v, -step).round_(), step)

    @cached_property
    def _code_of_multiple(self) -> Tensor:
        """Code of each magnitude k * (smallest subnormal), k = 0 .. largest / smallest: every grid value is
        such a multiple, so a rounded value's code is a table lookup (twice as fast as a bucketize)."""
        unit = 2.0 ** (self.bias - 1 + self.mbits)
        multiples = torch.arange(int(self.positive[-1] * unit) + 1, dtype=torch.float32)
        return torch.bucketize(multiples, self.positive * unit).to(torch.uint8)

    def _encode(self, x, inv, zero, scheme, out):
        rounded = self._round(x, inv)
        index = torch.ldexp(rounded.abs(), torch.tensor(self.bias - 1 + self.mbits)).to(torch.int64)
        magnitude = self._code_of_multiple[index]  # exact: rounded is on the grid
        sign = torch.signbit(rounded).to(torch.uint8) << (self.bits[0] - 1)
        return out.copy_(magnitude | sign)

    def decode(self, codes, scale, zero, scheme):
        values = torch.index_select(self.table, 0, codes.reshape(-1).int())
        return values.view(codes.shape).mul_(scale)

    def _fake(self, x, inv, scale, zero, scheme, out):
        return out.copy_(self._round(x, inv)).mul_(scale)


for _element in (MiniFloat("fp4_e2m1", 2, 1), MiniFloat("fp6_e2m3", 2, 3), MiniFloat("fp6_e3m2", 3, 2)):
    if _element.name not in ELEMENTS:  # a module reload must not register twice
        register(_element)


class BlockScales(NamedTuple):
    """What a scale rule gives per block: stored form, the scale codes decode with, the reciprocal."""

    stored: Tensor  # (n_blocks, 1) in the storage dtype (float8_e8m0fnu / float8_e4m3fn)
    scale: Tensor  # (n_blocks, 1) float32: value = code value * scale
    inv: Tensor  # (n_blocks, 1) float32: code = round(x * inv)
    tensor_scale: Tensor | None  # () float32 second level (NVFP4), else None


def element_emax(fmt: ElementFormat) -> int:
    """The largest exponent of a float element: 2 for E2M1 / E2M3, 4 for E3M2, 8 for E4M3, 15 for E5M2."""
    return math.floor(math.log2(fmt.grid_max(None)))


def e8m0_scales(absmax: Tensor, fmt: ElementFormat, round_up: bool = False) -> BlockScales:
    """Power-of-two block scales from the (n_blocks, 1) float32 absmax: torchao's FLOOR or RCEIL rule."""
    absmax = absmax.float()
    if round_up:  # RCEIL: 2**ceil(log2(absmax / element max))
        descale = absmax / fmt.grid_max(None)
        exponent = (
            torch.ceil(torch.log2(descale)).clamp_(-E8M0_BIAS, E8M0_BIAS).add_(E8M0_BIAS).to(torch.int32)
        )
        inv = torch.where(exponent == 0, 1.0, torch.exp2(E8M0_BIAS - exponent.float()))
    else:  # FLOOR: the exponent bits of the absmax minus the element's largest exponent
        pow2 = absmax.view(torch.int32).bitwise_right_shift(23).bitwise_and_(0xFF) - E8M0_BIAS
        exponent = (pow2 - element_emax(fmt)).clamp_(-E8M0_BIAS, E8M0_BIAS + 1).add_(E8M0_BIAS)
        exponent = exponent.clamp_(max=254)  # 255 is E8M0's NaN; only an absmax near float32's max gets here
        inv = 1.0 / torch.exp2(exponent.float() - E8M0_BIAS).clamp_(min=F32_MIN_NORMAL)
    stored = exponent.to(torch.uint8).view(torch.float8_e8m0fnu)
    return BlockScales(stored, stored.float(), inv, None)


def nvfp4_scales(absmax: Tensor, fmt: ElementFormat) -> BlockScales:
    """Two-level scales from the (n_blocks, 1) float32 absmax: E4M3 per block times one float32 per tensor."""
    absmax = absmax.float()
    top = fmt.grid_max(None)
    tensor_amax = absmax.max()
    tensor_scale = tensor_amax / (E4M3_MAX * top) if tensor_amax > 0 else torch.tensor(1.0)
    block = (absmax / top / tensor_scale).clamp_(min=E4M3_TINY, max=E4M3_MAX).to(torch.float8_e4m3fn)
    return two_level_scales(block, tensor_scale)


def two_level_scales(block: Tensor, tensor_scale: Tensor) -> BlockScales:
    """NVFP4's scales from given (n_blocks, 1) float8_e4m3fn block scales and the float32 tensor scale, in
    torchao's order of operations (`nvfp4_scales` picks the block scales; a search may pick others)."""
    block32 = block.float()
    inv = (1.0 / tensor_scale) / block32
    return BlockScales(block, tensor_scale * block32, inv, tensor_scale)


def block_scales(absmax: Tensor, fmt: ElementFormat, scale_dtype: str) -> BlockScales:
    """The block scales of one of the scale formats above (`scale_dtype` in MX_SCALE_DTYPES or e4m3)."""
    if scale_dtype in MX_SCALE_DTYPES:
        return e8m0_scales(absmax, fmt, round_up=scale_dtype == "e8m0_rceil")
    if scale_dtype in TWO_LEVEL_SCALE_DTYPES:
        return nvfp4_scales(absmax, fmt)
    raise ValueError(f"{scale_dtype} is not a microscaling scale format")
