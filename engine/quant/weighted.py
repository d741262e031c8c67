"""Importance-weighted rounding for our schemes: each block's scale searched for the least weighted error.

Plain rounding (engine.quant.primitives) takes every block's scale from its range (absmax, or min and max,
times `clip_ratio`). Given llama.cpp's importance matrix row of a weight (engine.methods.imatrix: the
(in_features,) mean x_j^2 of its inputs), `weighted_fake_quantize(w, scheme, importance)` instead picks,
block by block, the scale that minimises sum_j imp_j (w_j - q_j)^2 over the block: an input channel that
meets large activations costs more output error per unit of weight error, so its weights are rounded more
carefully. The search is llama.cpp's (`make_qx_quants`, `make_qkx2_quants` in ggml-quants.c) and AWQ's clip
search in one: candidate scales from the block's range shrunk by a grid of ratios, plain rounding's own scale
(ratio 1) always among them, so the weighted error is never above plain rounding's.

Per scheme family (all vectorised over blocks; the loop runs over the few candidates only):

- int groups / channels (symmetric, integer zero point, float minimum), the nf4 / bnb_fp4 codebooks, fp8
  elements with float scales (fp8_e4m3 block128 tiles included): ratios `RATIOS` of the range; for each,
  the codes are also kept and the scale refitted by weighted least squares (sum w x q / sum w q^2; with a
  float minimum, scale and minimum together, as `make_qkx2_quants`), then stored to nearest in the scale
  dtype, so every value is still stored scale x code (+ minimum).
- MX (E8M0 power-of-two scales): the rule's exponent, one step down and one step up (`MX_RATIOS`): a
  smaller range can only move a power of two by whole steps, and a step up can beat saturating at the top.
- NVFP4: the float32 tensor scale stays the one plain rounding takes from the whole tensor; each block's
  E4M3 scale is searched over the rule's value and its E4M3 neighbours (`NVFP4_STEPS`).
- Double quantization re-quantizes the scales together, so no block can pick its own: refused (ValueError).
  Tensor granularity is one block: its one scale is searched like any other.

Departures: llama.cpp's weighted quantizers weigh each weight by imp_j * sqrt(sigma^2 + w_j^2); we weigh by
imp_j alone, the output error the importance matrix measures. The candidate errors come from per-block sums
(sum w x^2 - 2 s sum w x q + s^2 sum w q^2); the chosen block is then checked against plain rounding on the
rounded values themselves and falls back to it where float rounding made the sums pick a worse one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from engine.quant import formats, microscaling, tiles
from engine.quant.primitives import QTensor, qparams_from_range, scale_shape
from engine.quant.schemes import QuantScheme

RATIOS = tuple(round(1.0 - 0.03 * i, 2) for i in range(11))  # 1.0, 0.97, ..., 0.7 of the block's range
MX_RATIOS = (1.0, 0.5, 2.0)  # the E8M0 exponent, one step down, one step up
NVFP4_STEPS = (0, -1, -2, -3, 1)  # E4M3 block-scale codes around the rule's (codes are ordered by value)
E4M3_SMALLEST, E4M3_LARGEST = 0x08, 0x7E  # codes of 2**-6 (the rule's floor) and 448
_ONE = torch.ones(())
CHUNK = 1 << 18  # elements searched at a time: a chunk's temporaries stay in cache
SCALE, OFFSET = 0, 4  # columns of a packed candidate (`_pack`)


class _Choice(NamedTuple):
    """One candidate (or the chosen one) per block, each field (n_blocks, 1)."""

    scale: Tensor  # float32, what codes decode with (value = unit x scale [+ offset])
    inv: Tensor  # float32, what x is multiplied by before rounding (tiles: x / enc_scale instead)
    enc_scale: Tensor  # float32, the scale the codes were rounded at (differs from scale after a refit)
    zero: Tensor | None  # integer zero point, or the float minimum codes were rounded from
    offset: Tensor | None  # what values add after scaling: the float minimum (refitted), else None
    stored: Tensor | None  # microscaling: the 8-bit block scale's bits (uint8), else None


def _pack(c: _Choice) -> Tensor:
    """The candidate's fields side by side, (n_blocks, 6) float32 (absent ones 0), so that keeping the
    better of two is one `torch.where`."""
    zeros = torch.zeros_like(c.scale)
    return torch.cat([zeros if t is None else t.float() for t in c], dim=1)


def _unpack(packed: Tensor, like: _Choice) -> _Choice:
    """Inverse of `_pack`, with the fields `like` (any candidate of the same search) leaves out left out."""
    columns = packed.split(1, dim=1)
    return _Choice(*(None if t is None else col.to(t.dtype) for col, t in zip(columns, like, strict=True)))


# -- candidates per family ---------------------------------------------------------------------------------


class _RangeSearch:
    """int / codebook / fp8 elements with float scales: the range shrunk by `RATIOS`, each refitted."""

    refit = True

    def __init__(self, xb: Tensor, scheme: QuantScheme) -> None:
        self.scheme = scheme
        self.lo, self.hi = xb.amin(dim=-1, keepdim=True), xb.amax(dim=-1, keepdim=True)  # (n_blocks, 1)

    def candidates(self, rows: slice) -> Iterator[_Choice]:
        lo, hi = self.lo[rows], self.hi[rows]
        float_min = self.scheme.zero_kind == "float"
        for ratio in RATIOS:
            scale, zero = qparams_from_range(lo * ratio, hi * ratio, self.scheme)
            yield _Choice(scale, 1.0 / scale, scale, zero, zero if float_min else None, None)


class _MXSearch:
    """E8M0 power-of-two scales: the rule's exponent and its neighbours (`MX_RATIOS` of the absmax)."""

    refit = False

    def __init__(self, xb: Tensor, scheme: QuantScheme) -> None:
        self.scheme = scheme
        self.absmax = _absmax(xb, scheme)

    def candidates(self, rows: slice) -> Iterator[_Choice]:
        absmax = self.absmax[rows]
        for ratio in MX_RATIOS:  # x 2**k moves the exponent by exactly k under FLOOR and RCEIL alike
            s = microscaling.block_scales(absmax * ratio, self.scheme.element, self.scheme.scale_dtype)
            yield _Choice(s.scale, s.inv, s.scale, None, None, s.stored.view(torch.uint8))


class _NVFP4Search:
    """NVFP4: the plain tensor scale kept, each block's E4M3 scale searched over neighbouring codes."""

    refit = False

    def __init__(self, xb: Tensor, scheme: QuantScheme) -> None:
        plain = microscaling.block_scales(_absmax(xb, scheme), scheme.element, scheme.scale_dtype)
        self.codes, self.tensor_scale = plain.stored.view(torch.uint8), plain.tensor_scale

    def candidates(self, rows: slice) -> Iterator[_Choice]:
        codes = self.codes[rows]
        for step in NVFP4_STEPS:
            shifted = codes if step == 0 else (codes.int() + step).clamp_(E4M3_SMALLEST, E4M3_LARGEST)
            block = shifted.to(torch.uint8).view(torch.float8_e4m3fn)
            s = microscaling.two_level_scales(block, self.tensor_scale)
            yield _Choice(s.scale, s.inv, s.scale, None, None, block.view(torch.uint8))


def _absmax(xb: Tensor, scheme: QuantScheme) -> Tensor:
    """The (n_blocks, 1) absmax plain rounding's microscaling rule sees (clip included)."""
    absmax = xb.abs().amax(dim=-1, keepdim=True)
    return absmax * scheme.clip_ratio if scheme.clip_ratio != 1.0 else absmax


def _search_for(xb: Tensor, scheme: QuantScheme):
    if scheme.two_level:
        return _NVFP4Search(xb, scheme)
    if scheme.is_microscaling:
        return _MXSearch(xb, scheme)
    return _RangeSearch(xb, scheme)


# -- the search ---------------------------------------------------------------------------------------------


def _units(xb: Tensor, c: _Choice, scheme: QuantScheme, out: Tensor) -> Tensor:
    """Each element's grid value before scaling (q, q - zero, a codebook or float element), float32, computed
    exactly as plain rounding computes it before its final multiply by the scale."""
    if scheme.zero_kind == "float":  # q = round((x - min) / scale); values are q * scale + min
        return formats.encode(xb, c.enc_scale, c.zero, scheme, out=out, inv=c.inv)
    if scheme.granularity == "block":  # tiles divide by their scale first (engine.quant.tiles.divided)
        return formats.fake(xb / c.enc_scale, _ONE, c.zero, scheme, out=out, inv=_ONE)
    return formats.fake(xb, _ONE, c.zero, scheme, out=out, inv=c.inv)


def _values(units: Tensor, c: _Choice) -> Tensor:
    values = units * c.scale
    return values if c.offset is None else values.add_(c.offset)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot products of two (n, k) tensors, an (n, 1) column."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1, 1)


def _store(scale: Tensor, scheme: QuantScheme) -> Tensor:
    """float32 values of the scale dtype, to nearest (a refitted scale keeps its codes, so nothing clips)."""
    return scale.float().to(scheme.torch_scale_dtype).float()


class _Sums(NamedTuple):
    """Per-block sums, float64: of the weights w, w x and w x^2 (n, 1), and per candidate (n, K) of w q,
    w q^2 and w x q, q the candidate's unscaled codes (`_units`); w q only with a float minimum."""

    w: Tensor
    wx: Tensor
    wxx: Tensor
    wq: Tensor | None
    wqq: Tensor
    wxq: Tensor

    def error(self, packed: Tensor) -> Tensor:
        """sum w (x - s q - m)^2 of every candidate in `packed` (n, K, 6), expanded over the sums: (n, K)."""
        s = packed[..., SCALE].double()
        e = self.wxx - 2 * s * self.wxq + s * s * self.wqq
        if self.wq is None:
            return e
        m = packed[..., OFFSET].double()
        return e - 2 * m * self.wx + 2 * s * m * self.wq + m * m * self.w

    def refit(self, packed: Tensor, scheme: QuantScheme) -> tuple[Tensor, Tensor]:
        """The candidates with the same codes and the scale (with a float minimum: scale and minimum) refitted
        by weighted least squares, stored in the scale dtype; and where a refit applies."""
        fitted = packed.clone()
        if self.wq is None:  # s = sum w x q / sum w q^2
            ok = self.wqq > 0
            new_s = _store(torch.where(ok, self.wxq / self.wqq, 0.0), scheme)
        else:
            det = self.w * self.wqq - self.wq * self.wq
            ok = det > 1e-9 * self.w * self.wqq
            new_s = _store(torch.where(ok, (self.w * self.wxq - self.wq * self.wx) / det, 0.0), scheme)
            new_m = _store(torch.where(ok, (self.wqq * self.wx - self.wq * self.wxq) / det, 0.0), scheme)
            ok &= torch.isfinite(new_m)
            fitted[..., OFFSET] = torch.where(ok, new_m, packed[..., OFFSET])
        ok &= torch.isfinite(new_s) & (new_s > 0)
        fitted[..., SCALE] = torch.where(ok, new_s, packed[..., SCALE])
        return fitted, ok


def _direct_error(xb: Tensor, values: Tensor, wb: Tensor) -> Tensor:
    return (xb - values).square_().mul_(wb).sum(dim=-1, keepdim=True)


def _search_chunk(
    xb: Tensor, wb: Tensor, search, rows: slice, scheme: QuantScheme
) -> tuple[Tensor, Tensor, _Choice]:
    """The chosen candidate of each block of the chunk (packed), its values (n, block_size) float32, and the
    chunk's first candidate (which fields the search fills)."""
    wxb = wb * xb
    units, wq = torch.empty_like(xb), torch.empty_like(xb)
    plain = plain_values = None
    packs, wqs, wqqs, wxqs = [], [], [], []
    for c in search.candidates(rows):  # the codes' sums of each candidate; the choice comes after
        _units(xb, c, scheme, units)
        torch.mul(wb, units, out=wq)
        wqqs.append(_dot(wq, units))
        wxqs.append(_dot(wxb, units))
        if c.offset is not None:
            wqs.append(wq.sum(dim=-1, keepdim=True))
        packs.append(_pack(c))
        if plain is None:  # the first candidate is plain rounding's own scale
            plain, plain_values = c, _values(units, c)
    packed = torch.stack(packs, dim=1)  # (n, K, 6)
    sums = _Sums(
        wb.sum(-1, keepdim=True).double(),
        wxb.sum(-1, keepdim=True).double(),
        _dot(wxb, xb).double(),
        torch.cat(wqs, dim=1).double() if wqs else None,
        torch.cat(wqqs, dim=1).double(),
        torch.cat(wxqs, dim=1).double(),
    )
    error = sums.error(packed)  # (n, K)
    if search.refit:
        fitted, ok = sums.refit(packed, scheme)
        packed = torch.cat([packed, fitted], dim=1)
        error = torch.cat([error, torch.where(ok, sums.error(fitted), torch.inf)], dim=1)
    pick = error.argmin(dim=1)  # the first of equals: plain rounding where nothing beats it
    best = packed[torch.arange(packed.shape[0], device=packed.device), pick]  # (n, 6)
    chosen = _unpack(best, plain)
    values = _values(_units(xb, chosen, scheme, units), chosen)
    worse = _direct_error(xb, values, wb) > _direct_error(xb, plain_values, wb)  # the sums' rounding
    if worse.any():
        best = torch.where(worse, _pack(plain), best)
        values = torch.where(worse, plain_values, values)
    return best, values, plain


def _check(x: Tensor, scheme: QuantScheme, importance) -> Tensor:
    if not isinstance(scheme, QuantScheme):
        raise TypeError(f"not a quantization scheme: {scheme!r}")
    if scheme.double_quant:
        raise ValueError(
            "importance-weighted rounding picks each block's scale on its own, and double quantization "
            "re-quantizes the scales together; turn double quantization off or leave the importance out"
        )
    imp = torch.as_tensor(importance).detach().to(device=x.device, dtype=torch.float32)
    if imp.dim() != 1 or x.dim() == 0 or imp.numel() != x.shape[-1]:
        cols = x.shape[-1] if x.dim() else 1
        raise ValueError(
            f"the importance must hold one value per input column ({cols}); it has shape {tuple(imp.shape)}"
        )
    if not bool(torch.isfinite(imp).all()) or bool((imp < 0).any()):
        raise ValueError("importance values must be finite and not negative")
    return imp


def _weight_blocks(x: Tensor, imp: Tensor, scheme: QuantScheme) -> Tensor:
    """The importance of every element, blocked as x is; tiles' padding weighs nothing."""
    mean = imp.mean()
    weights = (imp / mean if mean > 0 else imp).expand(x.shape)
    if scheme.granularity != "block":
        return weights.reshape(-1, tiles.block_size(scheme, x.shape))
    height, width = tiles.tile_shape(scheme)
    rows, cols = weights.reshape(-1, x.shape[-1]).shape
    padded = torch.zeros(-(-rows // height) * height, -(-cols // width) * width, device=x.device)
    padded[:rows, :cols] = weights.reshape(rows, cols)
    return tiles.to_tiles(padded, height, width)  # no padding left to add: the same tile order as x's


def _search(x: Tensor, scheme: QuantScheme, importance) -> tuple[Tensor, _Choice, Tensor]:
    """(x's blocks, the chosen candidate of every block, the blocks' values)."""
    imp = _check(x, scheme, importance)
    xb = tiles.blocks(x, scheme)  # (n_blocks, block_size) float32
    wb = _weight_blocks(x, imp, scheme)
    search = _search_for(xb, scheme)
    values = torch.empty_like(xb)
    packed = torch.empty(xb.shape[0], len(_Choice._fields), device=xb.device)
    step = max(1, CHUNK // xb.shape[1])
    for start in range(0, xb.shape[0], step):
        rows = slice(start, start + step)
        packed[rows], values[rows], like = _search_chunk(xb[rows], wb[rows], search, rows, scheme)
    return xb, _unpack(packed, like), values


@torch.no_grad()
def weighted_fake_quantize(x: Tensor, scheme: QuantScheme, importance: Tensor) -> Tensor:
    """x (a weight (out, in)) rounded to `scheme` with each block's scale chosen for the least
    importance-weighted squared error (importance: (in,), not negative); same shape and dtype as x."""
    _, _, values = _search(x, scheme, importance)
    return tiles.unblocks(values, x, scheme).to(x.dtype)


@torch.no_grad()
def weighted_quantize(x: Tensor, scheme: QuantScheme, importance: Tensor) -> QTensor:
    """The codes and scales `weighted_fake_quantize` reads back from: `.dequantize()` gives its values."""
    xb, c, _ = _search(x, scheme, importance)
    codes = torch.empty(xb.shape, dtype=formats.code_dtype(scheme), device=xb.device)
    if scheme.granularity == "block" and scheme.zero_kind != "float":
        formats.encode(xb / c.enc_scale, _ONE, c.zero, scheme, out=codes, inv=_ONE)
    else:
        formats.encode(xb, c.enc_scale, c.zero, scheme, out=codes, inv=c.inv)
    shape = scale_shape(scheme, x.shape)
    if scheme.is_microscaling:
        dtype = torch.float8_e4m3fn if scheme.two_level else torch.float8_e8m0fnu
        scale = c.stored.view(dtype).view(shape)
    else:
        scale = c.scale.view(shape).to(scheme.torch_scale_dtype)
    zero = c.offset if c.offset is not None else c.zero
    zero = None if zero is None else zero.view(shape).to(scheme.torch_scale_dtype)
    tensor_scale = _tensor_scale(xb, scheme)
    return QTensor(
        tiles.unblocks(codes, x, scheme), scale, zero, scheme, x.shape, x.dtype, tensor_scale=tensor_scale
    )


def _tensor_scale(xb: Tensor, scheme: QuantScheme) -> Tensor | None:
    """NVFP4's float32 tensor scale (the plain rule's, kept by the search); None for the other schemes."""
    if not scheme.two_level:
        return None
    return microscaling.block_scales(_absmax(xb, scheme), scheme.element, scheme.scale_dtype).tensor_scale


__all__ = ["MX_RATIOS", "NVFP4_STEPS", "RATIOS", "weighted_fake_quantize", "weighted_quantize"]
