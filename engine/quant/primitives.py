"""Quantize, dequantize and fake-quantize: one blocked primitive for every scheme.

Modelled on torchao's `choose_qparams_affine` / `quantize_affine`, which take one `block_size`: every
granularity is a reshape of x into rows of blocks that share a scale,

    tensor   x.reshape(1, numel)                     one block
    channel  x.reshape(rows, in_features)            one block per row (per token for activations)
    group    x.reshape(rows * in_features / g, g)    g consecutive elements of a row
    block    tiles.to_tiles(x, g, g)                 one g x g tile per row (engine.quant.tiles)

so reductions always run along the last dim of a (n_blocks, block_size) view.

Dynamic quantization computes scales from x (`quantize(x, scheme)`). Static quantization passes
calibrated `scale` (and `zero_point`) broadcastable to x, e.g. from an observer:
`fake_quantize(x, scheme, *observer.qparams(scheme))`, or `scale=torch.tensor(1.0)` for plain FP8 casts.

Where we depart from the libraries:
- Stored scales are rounded *up* to the scale dtype (never down), so a block's absmax cannot overflow
  the grid because of fp16 rounding; codes are always computed with the scale as stored.
- Asymmetric int ranges always include 0 (torchao, GPTQ), so zero is exact; llama.cpp's Q4_1 does not:
  `zero_kind="float"` reproduces it (offset = block minimum, scale stored to nearest, not rounded up).
- Double quantization follows QLoRA's layout (scales minus their mean, 8-bit codes in blocks of 256,
  one fp32 scale per block) but uses a linear symmetric int8 grid where bitsandbytes uses its 8-bit
  dynamic-tree code, and our codes use the reconstructed scales (bitsandbytes codes with the exact
  absmax and compresses it afterwards). Storage cost is identical.
- The microscaling scale formats (E8M0 power of two, NVFP4's E4M3 x float32) follow torchao's rules to the
  bit (engine.quant.microscaling): the rule gives the multiplier before rounding apart from the scale, and
  QTensor keeps the 8-bit block scales in `scale` and NVFP4's float32 tensor scale in `tensor_scale`.
- `QTensor.nbytes` counts codes densely packed at `bits` bits; `pack_int4` packs two codes per byte
  (bitsandbytes' nibble order: first element in the high nibble), which is exact for bits <= 4.

Speed: scales come from `amin` / `amax` passes over the block view; the elementwise work then runs over
chunks of ~1 MB written into one preallocated output, because on CPU every whole-tensor temporary costs
fresh pages (a fault per 4 KB) while chunk temporaries are reused from malloc's heap and stay in cache
(timings in docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from engine.quant import formats, microscaling, tiles
from engine.quant.schemes import DOUBLE_QUANT_BLOCK, QuantScheme, storage_bits
from engine.quant.tiles import block_size as block_size  # re-exported: how each granularity
from engine.quant.tiles import scale_shape  # blocks x (engine.quant.tiles)


class QParams(NamedTuple):
    """Scale and zero point for static quantization; unpacks into fake_quantize(x, scheme, *qparams)."""

    scale: Tensor
    zero_point: Tensor | None = None


@dataclass(frozen=True, eq=False)
class ScaleQuant:
    """Double-quantized scales: scale ~ codes * block_scale / 127 + offset."""

    codes: Tensor  # (n_scales,) int8
    block_scale: Tensor  # (ceil(n_scales / 256),) float32, absmax of each block of 256 scales
    offset: Tensor  # () float32, the mean scale

    def dequantize(self) -> Tensor:
        n = self.codes.numel()
        padded = torch.nn.functional.pad(self.codes.float(), (0, (-n) % DOUBLE_QUANT_BLOCK))
        steps = (self.block_scale / 127).unsqueeze(1)  # (blocks, 1)
        return (padded.view(-1, DOUBLE_QUANT_BLOCK) * steps).reshape(-1)[:n] + self.offset

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + 4 * self.block_scale.numel() + 4


@dataclass(frozen=True, eq=False)
class QTensor:
    """A quantized tensor: codes plus what it takes to turn them back into values."""

    codes: Tensor  # same shape as the input; int8 / uint8 codes, or float8 values for fp8 formats
    scale: Tensor  # blocked: (*shape[:-1], blocks per row), (1,)*ndim for tensor, (tile rows, tile
    # columns) for block; static: as given
    zero_point: Tensor | None  # like scale, integer-valued; None for symmetric, codebook and fp8 formats
    scheme: QuantScheme
    shape: torch.Size  # of the original tensor
    dtype: torch.dtype = torch.float32  # of the original tensor; dequantize() returns it
    scale_quant: ScaleQuant | None = None  # set when scheme.double_quant; `scale` holds its reconstruction
    static: bool = False  # scale / zero_point broadcast against x instead of one per block
    tensor_scale: Tensor | None = None  # NVFP4's float32 second-level scale; values = codes * scale * this

    @property
    def block_scale(self) -> Tensor:
        """The float32 scale each block's codes are multiplied by (both levels for NVFP4), shaped as scale."""
        scale = self.scale.float()
        return scale if self.tensor_scale is None else self.tensor_scale * scale

    def dequantize(self) -> Tensor:
        return dequantize(self)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Honest storage: codes at `bits` bits, scales and zero points at their stored width."""
        code_bytes = math.ceil(self.numel * self.scheme.bits / 8)
        if self.scale_quant is not None:
            scale_bytes = self.scale_quant.nbytes
        else:
            scale_bytes = self.scale.numel() * self.scale.element_size()
        zero_bytes = (
            0 if self.zero_point is None else self.zero_point.numel() * self.zero_point.element_size()
        )
        tensor_bytes = 0 if self.tensor_scale is None else 4
        return code_bytes + scale_bytes + zero_bytes + tensor_bytes

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.numel

    def packed(self) -> Tensor:
        """Codes packed two per byte (bits <= 4 only)."""
        if self.scheme.bits > 4:
            raise ValueError(f"pack_int4 packs codes of at most 4 bits; this scheme has {self.scheme.bits}")
        return pack_int4(self.codes)


# -- choosing scales ---------------------------------------------------------------------------------


def _store(scale: Tensor, dtype: torch.dtype, round_up: bool = True) -> Tensor:
    """float32 values representable in `dtype`, rounded up (or to nearest); empty blocks get scale 1."""
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    stored = scale.to(dtype)
    tiny = torch.finfo(dtype).tiny * torch.finfo(dtype).eps  # smallest subnormal
    if round_up:
        stored = torch.where(
            stored.float() < scale, torch.nextafter(stored, torch.full_like(stored, math.inf)), stored
        )
    if torch.isinf(stored).any():
        raise ValueError(
            f"a scale of {scale.max().item():.3g} overflows {dtype}; use scale_dtype='float32' "
            "or clip the range (clip_ratio)"
        )
    return stored.clamp_(min=tiny).float()


def _raw_scale(lo: Tensor, hi: Tensor, scheme: QuantScheme) -> tuple[Tensor, Tensor]:
    """(float32 scale before storage rounding, the range's low end) from a value range."""
    lo, hi = lo.float(), hi.float()
    if scheme.has_zero_point:
        if scheme.zero_kind == "int":  # the integer grid must contain 0
            lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
        lo, hi = lo * scheme.clip_ratio, hi * scheme.clip_ratio
        qmin, qmax = formats.int_range(scheme.bits, symmetric=False)
        return (hi - lo) / (qmax - qmin), lo
    absmax = torch.maximum(lo.abs(), hi.abs()) * scheme.clip_ratio
    return absmax / formats.grid_max(scheme), lo


def _zero_point(lo: Tensor, scale: Tensor, scheme: QuantScheme) -> Tensor | None:
    if not scheme.has_zero_point:
        return None
    if scheme.zero_kind == "float":  # the block minimum itself, as stored (nearest value of the dtype)
        return lo.to(scheme.torch_scale_dtype).float()
    qmin, qmax = formats.int_range(scheme.bits, symmetric=False)
    return (qmin - torch.round(lo / scale)).clamp_(qmin, qmax)


def qparams_from_range(lo: Tensor, hi: Tensor, scheme: QuantScheme) -> QParams:
    """Scale (stored precision, as float32) and zero point for values in [lo, hi]; any matching shapes."""
    raw, low = _raw_scale(lo, hi, scheme)
    scale = _store(raw, scheme.torch_scale_dtype, round_up=scheme.zero_kind == "int")
    return QParams(scale, _zero_point(low, scale, scheme))


def double_quantize_scales(scale: Tensor) -> ScaleQuant:
    """QLoRA-style second quantization of a flat float32 scale vector (see module docstring)."""
    flat = scale.float().reshape(-1)
    offset = flat.mean()
    centred = flat - offset
    n = centred.numel()
    blocks = torch.nn.functional.pad(centred, (0, (-n) % DOUBLE_QUANT_BLOCK)).view(-1, DOUBLE_QUANT_BLOCK)
    block_scale = blocks.abs().amax(dim=1)  # (blocks,)
    block_scale = torch.where(block_scale > 0, block_scale, torch.ones_like(block_scale))
    codes = torch.round(blocks * (127 / block_scale).unsqueeze(1)).clamp_(-127, 127)
    return ScaleQuant(codes.reshape(-1)[:n].to(torch.int8), block_scale, offset)


def _microscaling_qparams(xb: Tensor, scheme: QuantScheme) -> microscaling.BlockScales:
    """Block scales of a microscaling scheme for a (n_blocks, block_size) float32 view."""
    absmax = xb.abs().amax(dim=-1, keepdim=True)  # (n_blocks, 1)
    if scheme.clip_ratio != 1.0:
        absmax = absmax * scheme.clip_ratio
    return microscaling.block_scales(absmax, scheme.element, scheme.scale_dtype)


def _block_qparams(xb: Tensor, scheme: QuantScheme) -> tuple[Tensor, Tensor | None, ScaleQuant | None]:
    """Per-block (scale, zero, double-quant state) for a (n_blocks, block_size) float32 view."""
    if scheme.is_microscaling:
        return _microscaling_qparams(xb, scheme).scale, None, None
    # amin + amax: much faster than torch.aminmax along a dim on the CPU build (docs/benchmarks.md)
    lo, hi = xb.amin(dim=-1, keepdim=True), xb.amax(dim=-1, keepdim=True)  # (n_blocks, 1) each
    raw, low = _raw_scale(lo, hi, scheme)
    scale_quant = None
    if scheme.double_quant:
        scale_quant = double_quantize_scales(raw)
        smallest = torch.finfo(torch.float32).tiny
        scale = scale_quant.dequantize().clamp_(min=smallest).view_as(raw)
    else:
        scale = _store(raw, scheme.torch_scale_dtype, round_up=scheme.zero_kind == "int")
    return scale, _zero_point(low, scale, scheme), scale_quant


@torch.no_grad()
def choose_qparams(x: Tensor, scheme: QuantScheme) -> QParams:
    """Dynamic per-block scale (and zero point) of x, shaped like QTensor.scale."""
    scale, zero, _ = _block_qparams(tiles.blocks(x, scheme), scheme)
    shape = scale_shape(scheme, x.shape)
    return QParams(scale.view(shape), None if zero is None else zero.view(shape))


def _check_static(x: Tensor, scheme: QuantScheme, scale: Tensor, zero_point: Tensor | None) -> None:
    if scheme.double_quant:
        raise ValueError("double_quant compresses computed per-block scales; drop it for static scales")
    if scheme.is_microscaling:
        raise ValueError(
            f"{scheme.label} computes its scales from each block's values (E8M0 / E4M3 microscaling "
            "scales); it takes no given scale"
        )
    if scheme.has_zero_point and zero_point is None:
        raise ValueError(f"scheme {scheme.label} is asymmetric: pass zero_point together with scale")
    if not scheme.has_zero_point and zero_point is not None:
        raise ValueError(f"scheme {scheme.label} has no zero point; pass scale only")
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        if t is None:
            continue
        try:
            fits = torch.broadcast_shapes(t.shape, x.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"{name} of shape {tuple(t.shape)} does not broadcast to x of shape {tuple(x.shape)}; "
                "use a scalar, one value per feature of the last dim, or a full-size tensor"
            )


# -- the primitives ----------------------------------------------------------------------------------

CHUNK_ELEMENTS = 1 << 18  # ~1 MB of float32 per step: temporaries stay in cache and in malloc's heap


def _in_chunks(
    kernel,
    xb: Tensor,
    scale: Tensor,
    zero: Tensor | None,
    scheme: QuantScheme,
    out: Tensor,
    inv: Tensor | None = None,
) -> None:
    """Run formats.encode / formats.fake over row chunks of the (n_blocks, block_size) view into `out`.

    Whole-tensor temporaries cost a page fault per 4 KB on every call; chunks reuse the same memory.
    """
    if xb.shape[0] == 1:  # one block (tensor granularity): split the row, the scale is a scalar
        flat_x, flat_out = xb.view(-1), out.view(-1)
        one_scale = scale.view(())
        one_zero = None if zero is None else zero.view(())
        one_inv = None if inv is None else inv.view(())
        for start in range(0, flat_x.numel(), CHUNK_ELEMENTS):
            part = slice(start, start + CHUNK_ELEMENTS)
            kernel(flat_x[part], one_scale, one_zero, scheme, out=flat_out[part], inv=one_inv)
        return
    rows = max(1, CHUNK_ELEMENTS // xb.shape[1])
    for start in range(0, xb.shape[0], rows):
        part = slice(start, start + rows)
        chunk_zero = None if zero is None else zero[part]
        chunk_inv = None if inv is None else inv[part]
        kernel(xb[part], scale[part], chunk_zero, scheme, out=out[part], inv=chunk_inv)


def _static_qparams(
    x: Tensor, scheme: QuantScheme, scale: Tensor, zero_point: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """Validated static (scale as stored, zero point) as float32, broadcastable to x."""
    _check_static(x, scheme, scale, zero_point)
    stored = _store(scale.float(), scheme.torch_scale_dtype, round_up=scheme.zero_kind == "int")
    return stored, None if zero_point is None else zero_point.float()


@torch.no_grad()
def quantize(
    x: Tensor, scheme: QuantScheme, scale: Tensor | None = None, zero_point: Tensor | None = None
) -> QTensor:
    """Quantize x under `scheme`; dynamic by default, static when `scale` (and `zero_point`) are given."""
    if scale is not None:
        stored, zero = _static_qparams(x, scheme, scale, zero_point)
        codes = formats.encode(x.float(), stored, zero, scheme)
        return QTensor(
            codes,
            stored.to(scheme.torch_scale_dtype),
            None if zero is None else zero.to(scheme.torch_scale_dtype),
            scheme,
            x.shape,
            x.dtype,
            static=True,
        )
    xb = tiles.blocks(x, scheme)  # (n_blocks, block_size)
    if scheme.is_microscaling:
        return _quantize_microscaling(x, xb, scheme)
    block_scale, block_zero, scale_quant = _block_qparams(xb, scheme)  # (n_blocks, 1) each
    codes = torch.empty(xb.shape, dtype=formats.code_dtype(scheme))
    _in_chunks(tiles.runner(formats.encode, scheme), xb, block_scale, block_zero, scheme, codes)
    codes = tiles.unblocks(codes, x, scheme)
    shape = scale_shape(scheme, x.shape)
    store_dtype = torch.float32 if scale_quant is not None else scheme.torch_scale_dtype
    return QTensor(
        codes,
        block_scale.view(shape).to(store_dtype),
        None if block_zero is None else block_zero.view(shape).to(scheme.torch_scale_dtype),
        scheme,
        x.shape,
        x.dtype,
        scale_quant=scale_quant,
    )


def _quantize_microscaling(x: Tensor, xb: Tensor, scheme: QuantScheme) -> QTensor:
    scales = _microscaling_qparams(xb, scheme)
    codes = torch.empty(xb.shape, dtype=formats.code_dtype(scheme))
    _in_chunks(formats.encode, xb, scales.scale, None, scheme, codes, scales.inv)
    shape = scale_shape(scheme, x.shape)
    return QTensor(
        codes.view(x.shape),
        scales.stored.view(shape),
        None,
        scheme,
        x.shape,
        x.dtype,
        tensor_scale=scales.tensor_scale,
    )


@torch.no_grad()
def dequantize(qt: QTensor) -> Tensor:
    """Values of a QTensor, in its original dtype and shape."""
    scale = qt.block_scale
    zero = None if qt.zero_point is None else qt.zero_point.float()
    if qt.static:
        return formats.decode(qt.codes, scale, zero, qt.scheme).to(qt.dtype)
    if qt.scheme.granularity == "block":
        return tiles.decode(qt.codes, scale, zero, qt.scheme).to(qt.dtype)
    n_blocks = scale.numel()
    codes = qt.codes.reshape(n_blocks, -1)  # (n_blocks, block_size)
    scale = scale.reshape(n_blocks, 1)
    zero = None if zero is None else zero.reshape(n_blocks, 1)
    return formats.decode(codes, scale, zero, qt.scheme).view(qt.shape).to(qt.dtype)


@torch.no_grad()
def fake_quantize(
    x: Tensor, scheme: QuantScheme, scale: Tensor | None = None, zero_point: Tensor | None = None
) -> Tensor:
    """quantize(x).dequantize() without storing codes; same dtype and shape as x."""
    if scale is not None:
        stored, zero = _static_qparams(x, scheme, scale, zero_point)
        return formats.fake(x.float(), stored, zero, scheme).to(x.dtype)
    return _fake_dynamic(x, scheme)


@torch.no_grad()
def fake_quantize_tokens(x: Tensor, scheme: QuantScheme) -> Tensor:
    """`fake_quantize` of (tokens, features) activation rows, where a block scheme runs in 1 x g groups of
    each token (DeepSeek-V3; its g x g tiles are for weights), the last one partial if g does not divide."""
    return _fake_dynamic(x, scheme, tokens=True)


def _fake_dynamic(x: Tensor, scheme: QuantScheme, tokens: bool = False) -> Tensor:
    xb = tiles.blocks(x, scheme, tokens)  # (n_blocks, block_size)
    out = torch.empty(xb.shape, dtype=torch.float32)
    if scheme.is_microscaling:
        scales = _microscaling_qparams(xb, scheme)
        _in_chunks(formats.fake, xb, scales.scale, None, scheme, out, scales.inv)
        return out.view(x.shape).to(x.dtype)
    block_scale, block_zero, _ = _block_qparams(xb, scheme)  # (n_blocks, 1)
    _in_chunks(tiles.runner(formats.fake, scheme), xb, block_scale, block_zero, scheme, out)
    return tiles.unblocks(out, x, scheme, tokens).to(x.dtype)


def expected_nbytes(scheme: QuantScheme, shape: tuple[int, ...] | torch.Size) -> int:
    """What QTensor.nbytes will be for a dynamically quantized tensor of `shape`, without quantizing."""
    return math.ceil(storage_bits(scheme, shape) / 8)


# -- packing -----------------------------------------------------------------------------------------


def pack_int4(codes: Tensor) -> Tensor:
    """Pack codes of at most 4 bits two per byte: (ceil(numel / 2),) uint8, first code in the high nibble.

    Accepts unsigned codes in [0, 15] or signed codes in [-8, 7] (stored as two's-complement nibbles).
    """
    if codes.dtype not in (torch.uint8, torch.int8):
        raise ValueError(f"pack_int4 takes uint8 or int8 codes, got {codes.dtype}")
    flat = codes.reshape(-1)
    if codes.dtype == torch.int8:
        if flat.numel() and (flat.min() < -8 or flat.max() > 7):
            raise ValueError("signed codes must lie in [-8, 7] to fit a nibble")
        flat = flat.view(torch.uint8) & 0xF
    elif flat.numel() and flat.max() > 15:
        raise ValueError("unsigned codes must lie in [0, 15] to fit a nibble")
    if flat.numel() % 2:
        flat = torch.nn.functional.pad(flat, (0, 1))
    return (flat[0::2] << 4) | flat[1::2]


def unpack_int4(packed: Tensor, shape: tuple[int, ...] | torch.Size, signed: bool = False) -> Tensor:
    """Inverse of pack_int4: codes of `shape`, int8 (sign-extended) if `signed` else uint8."""
    numel = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.numel() != (numel + 1) // 2:
        raise ValueError(
            f"expected {(numel + 1) // 2} packed uint8 bytes for shape {tuple(shape)}, "
            f"got {packed.numel()} of {packed.dtype}"
        )
    flat = torch.stack([packed >> 4, packed & 0xF], dim=-1).reshape(-1)[:numel]  # (numel,)
    if signed:
        return ((flat ^ 8).to(torch.int8) - 8).reshape(shape)
    return flat.reshape(shape)
