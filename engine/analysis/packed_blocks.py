"""The bytes of one packed block, field by field: what the grid page shows as "the bits of one block".

`gguf_block(values, t)` packs one llama.cpp block (32 values, or a k-quant's super-block of 256) with
engine.quant.gguf and reads its bytes back into named byte ranges plus, for every sub-block, the scale and
minimum its codes are read with: value = scale * code - minimum, in the same float32 operations as
engine.quant.gguf.dequantize, so the levels drawn from a `DecodedBlock` are exactly the values llama.cpp
reads. The byte layouts are ggml's `block_qX_Y` structs (engine/quant/gguf/legacy.py and kquants.py).

`mx_block(qt, index)` lays one block of a microscaling QTensor out the way llama.cpp's GGUF blocks hold
it: the 8-bit block scale first, then the element codes. E2M1 codes go two per byte with value j in the
low nibble and value j + n/2 in the high one (ggml's block_mxfp4 for MXFP4; block_nvfp4's 16-value
sub-block for NVFP4, whose float32 tensor scale is stored once per tensor, outside the blocks); 8-bit
codes take a byte each; 6-bit codes are packed four to three bytes, first code in the lowest bits (the OCP
spec leaves FP6 packing to the implementation). The values are then read back from those bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from engine.quant.gguf import GGUF_TYPES, GGUFType
from engine.quant.gguf._common import F32, fp16_from_bytes
from engine.quant.gguf.kquants import (
    _unpack_bitplanes,
    _unpack_crumbs,
    _unpack_nibble_pairs,
    _unpack_scales_k4,
)
from engine.quant.gguf.legacy import unpack_bits, unpack_nibbles
from engine.quant.primitives import QTensor


@dataclass(frozen=True)
class ByteField:
    """One byte range of a packed block and what it holds."""

    start: int | None  # first byte in the block; None: stored once per tensor, outside the blocks
    stop: int | None  # one past the last byte
    holds: str  # plain words: "super-block scale d (fp16)"
    value: str  # what those bytes decode to, short: "0.00123", "8 six-bit scales: 12 40 ..."
    raw: Tensor  # (stop - start,) uint8: the bytes themselves


@dataclass(frozen=True)
class DecodedBlock:
    """One packed block and its values read back from the bytes: value = scale * code value - minimum."""

    name: str  # "Q4_K", "mxfp4"
    raw: Tensor  # (bytes,) uint8: the block as stored
    fields: tuple[ByteField, ...]
    codes: (
        Tensor  # (values,) int32: each value's code as stored (a signed integer, or a float element's bits)
    )
    code_values: Tensor  # (values,) float32: the number each code stands for before scaling
    grid: Tensor  # (levels,) float32, ascending: every number a code can stand for
    scale: Tensor  # (sub-blocks,) float32
    minimum: Tensor  # (sub-blocks,) float32 (0 where a format has none)

    @property
    def sub_size(self) -> int:
        return self.codes.numel() // self.scale.numel()

    def values(self) -> Tensor:
        """(values,) float32 as the format's reader computes them."""
        scale = self.scale.repeat_interleave(self.sub_size)
        return scale * self.code_values - self.minimum.repeat_interleave(self.sub_size)

    def levels(self, sub: int = 0) -> Tensor:
        """Every value sub-block `sub`'s codes can represent, ascending (+0 and -0 collapse)."""
        return torch.unique(self.scale[sub] * self.grid - self.minimum[sub])


def _field(raw: Tensor, start: int, stop: int, holds: str, value: str) -> ByteField:
    return ByteField(start, stop, holds, value, raw[start:stop].clone())


def _fp16(raw: Tensor, start: int) -> Tensor:
    """(1,) float32 from the little-endian fp16 at `start`."""
    return fp16_from_bytes(raw[start : start + 2].reshape(1, 2))


def _hex(t: Tensor, limit: int = 8) -> str:
    items = [f"{v:X}" for v in t.reshape(-1).tolist()[:limit]]
    return " ".join(items) + (" …" if t.numel() > limit else "")


def _list(t: Tensor, limit: int = 8) -> str:
    items = [f"{v:g}" if isinstance(v, float) else str(v) for v in t.reshape(-1).tolist()[:limit]]
    return " ".join(items) + (" …" if t.numel() > limit else "")


def _gguf(
    name: str, raw: Tensor, fields: list[ByteField], codes: Tensor, lo: int, hi: int, scale, minimum=None
) -> DecodedBlock:
    scale = scale.reshape(-1).to(F32)
    minimum = torch.zeros_like(scale) if minimum is None else minimum.reshape(-1).to(F32)
    codes = codes.reshape(-1).to(torch.int32)
    grid = torch.arange(lo, hi + 1, dtype=F32)
    return DecodedBlock(name, raw, tuple(fields), codes, codes.to(F32), grid, scale, minimum)


NIBBLES_32 = "32 4-bit codes: byte j holds value j (low nibble) and value j + 16 (high nibble)"
K_NIBBLES = "256 4-bit codes: byte 32k + j holds value 64k + j (low nibble) and 64k + 32 + j (high)"


def _q8_0(raw: Tensor) -> DecodedBlock:
    d, codes = _fp16(raw, 0), raw[2:34].view(torch.int8)
    fields = [_field(raw, 0, 2, "scale d (fp16)", f"{float(d):.4g}")]
    fields.append(_field(raw, 2, 34, "32 codes, one signed byte each; value = d × code", _list(codes)))
    return _gguf("Q8_0", raw, fields, codes, -128, 127, d)


def _q4_0(raw: Tensor) -> DecodedBlock:
    d, codes = _fp16(raw, 0), unpack_nibbles(raw[2:18].reshape(1, 16)) - 8
    fields = [_field(raw, 0, 2, "scale d (fp16)", f"{float(d):.4g}")]
    fields.append(_field(raw, 2, 18, NIBBLES_32 + "; value = d × (code − 8)", _list(codes[0] + 8)))
    return _gguf("Q4_0", raw, fields, codes, -8, 7, d)


def _q4_1(raw: Tensor) -> DecodedBlock:
    d, m, codes = _fp16(raw, 0), _fp16(raw, 2), unpack_nibbles(raw[4:20].reshape(1, 16))
    fields = [_field(raw, 0, 2, "scale d (fp16)", f"{float(d):.4g}")]
    fields.append(_field(raw, 2, 4, "minimum m (fp16)", f"{float(m):.4g}"))
    fields.append(_field(raw, 4, 20, NIBBLES_32 + "; value = d × code + m", _list(codes[0])))
    return _gguf("Q4_1", raw, fields, codes, 0, 15, d, -m)


def _five_bit(raw: Tensor, at: int) -> tuple[Tensor, list[ByteField]]:
    """Codes 0..31 from qh (4 bytes at `at`) and the 16 nibble bytes after it."""
    high = unpack_bits(raw[at : at + 4].reshape(1, 4))
    codes = unpack_nibbles(raw[at + 4 : at + 20].reshape(1, 16)) | (high << 4)
    fields = [_field(raw, at, at + 4, "fifth bit of each code (bit j for value j)", _list(high[0], 12))]
    fields.append(_field(raw, at + 4, at + 20, NIBBLES_32.replace("4-bit codes", "low 4 bits"), ""))
    return codes, fields


def _q5_0(raw: Tensor) -> DecodedBlock:
    d = _fp16(raw, 0)
    codes, code_fields = _five_bit(raw, 2)
    fields = [_field(raw, 0, 2, "scale d (fp16); value = d × (code − 16)", f"{float(d):.4g}"), *code_fields]
    return _gguf("Q5_0", raw, fields, codes - 16, -16, 15, d)


def _q5_1(raw: Tensor) -> DecodedBlock:
    d, m = _fp16(raw, 0), _fp16(raw, 2)
    codes, code_fields = _five_bit(raw, 4)
    fields = [_field(raw, 0, 2, "scale d (fp16); value = d × code + m", f"{float(d):.4g}")]
    fields += [_field(raw, 2, 4, "minimum m (fp16)", f"{float(m):.4g}"), *code_fields]
    return _gguf("Q5_1", raw, fields, codes, 0, 31, d, -m)


def _q2_k(raw: Tensor) -> DecodedBlock:
    sc = raw[0:16].to(torch.int32)
    d, dmin = _fp16(raw, 80), _fp16(raw, 82)
    codes = _unpack_crumbs(raw[16:80].reshape(1, 64))
    fields = [
        _field(raw, 0, 16, "16 sub-block scales (low nibble) and mins (high nibble), per 16 values",
               f"scales {_list(sc & 15, 6)}; mins {_list(sc >> 4, 6)}"),
        _field(raw, 16, 80, "256 2-bit codes: byte 32h + j holds values 128h + 32k + j at bits 2k", ""),
        _field(raw, 80, 82, "super-block scale d (fp16)", f"{float(d):.4g}"),
        _field(raw, 82, 84, "super-block min scale dmin (fp16)", f"{float(dmin):.4g}"),
    ]  # fmt: skip
    return _gguf("Q2_K", raw, fields, codes, 0, 3, d * (sc & 15), dmin * (sc >> 4))


def _q3_k(raw: Tensor) -> DecodedBlock:
    q = raw[96:108].to(torch.int32).reshape(1, 12)
    low = torch.cat([q[:, :8] & 15, q[:, :8] >> 4], dim=-1)
    high = (q[:, 8:12].unsqueeze(1) >> (2 * torch.arange(4, dtype=torch.int32)).reshape(1, 4, 1)) & 3
    sc = (low | (high.reshape(-1, 16) << 4)) - 32
    d = _fp16(raw, 108)
    hbit = _unpack_bitplanes(raw[0:32].reshape(1, 32)).reshape(-1)
    codes = _unpack_crumbs(raw[32:96].reshape(1, 64)).reshape(-1) - 4 * (1 - hbit)
    fields = [
        _field(raw, 0, 32, "third bit of each code (bit b of byte j: value 32b + j); 0 means −4", ""),
        _field(raw, 32, 96, "low 2 bits of each code, four per byte", ""),
        _field(raw, 96, 108, "16 six-bit sub-block scales (offset 32), per 16 values", _list(sc[0], 6)),
        _field(raw, 108, 110, "super-block scale d (fp16)", f"{float(d):.4g}"),
    ]
    return _gguf("Q3_K", raw, fields, codes, -4, 3, d * sc)


def _q45_k(name: str, raw: Tensor, codes: Tensor, qs_at: int, top: int, extra: list[ByteField]):
    d, dmin = _fp16(raw, 0), _fp16(raw, 2)
    ls, lm = _unpack_scales_k4(raw[4:16].reshape(1, 12))
    fields = [
        _field(raw, 0, 2, "super-block scale d (fp16)", f"{float(d):.4g}"),
        _field(raw, 2, 4, "super-block min scale dmin (fp16)", f"{float(dmin):.4g}"),
        _field(raw, 4, 16, "8 six-bit scales and 8 six-bit mins, one pair per 32 values",
               f"scales {_list(ls[0], 4)}; mins {_list(lm[0], 4)}"),
        *extra,
        _field(raw, qs_at, qs_at + 128, K_NIBBLES if top == 15 else K_NIBBLES.replace("4-bit", "low 4 bits of"),
               ""),
    ]  # fmt: skip
    return _gguf(name, raw, fields, codes, 0, top, d * ls, dmin * lm)


def _q4_k(raw: Tensor) -> DecodedBlock:
    return _q45_k("Q4_K", raw, _unpack_nibble_pairs(raw[16:144].reshape(1, 128)), 16, 15, [])


def _q5_k(raw: Tensor) -> DecodedBlock:
    high = _unpack_bitplanes(raw[16:48].reshape(1, 32)).reshape(1, -1)
    codes = _unpack_nibble_pairs(raw[48:176].reshape(1, 128)) | (high << 4)
    extra = [_field(raw, 16, 48, "fifth bit of each code (bit b of byte j: value 32b + j)", "")]
    return _q45_k("Q5_K", raw, codes, 48, 31, extra)


def _q6_k(raw: Tensor) -> DecodedBlock:
    ql = raw[0:128].to(torch.int32).reshape(1, 2, 1, 64)
    low = torch.cat([ql & 15, ql >> 4], dim=2).reshape(1, 2, 4, 32)
    shifts = (2 * torch.arange(4, dtype=torch.int32)).reshape(1, 1, 4, 1)
    high = (raw[128:192].to(torch.int32).reshape(1, 2, 1, 32) >> shifts) & 3
    codes = (low | (high << 4)) - 32
    sc = raw[192:208].view(torch.int8).to(F32)
    d = _fp16(raw, 208)
    fields = [
        _field(raw, 0, 128, "low 4 bits of each code, two per byte", ""),
        _field(raw, 128, 192, "high 2 bits of each code, four per byte", ""),
        _field(raw, 192, 208, "16 sub-block scales (int8), per 16 values", _list(sc.int(), 6)),
        _field(raw, 208, 210, "super-block scale d (fp16); value = d × scale × (code − 32)", f"{float(d):.4g}"),
    ]  # fmt: skip
    return _gguf("Q6_K", raw, fields, codes, -32, 31, d * sc)


class Layout(NamedTuple):
    sub_blocks: int  # scales per block (a k-quant's sub-blocks; 1 for the legacy types)
    read: Callable[[Tensor], DecodedBlock]  # (type_size,) uint8 -> the decoded block


LAYOUTS: dict[GGUFType, Layout] = {
    GGUF_TYPES["Q8_0"]: Layout(1, _q8_0),
    GGUF_TYPES["Q4_0"]: Layout(1, _q4_0),
    GGUF_TYPES["Q4_1"]: Layout(1, _q4_1),
    GGUF_TYPES["Q5_0"]: Layout(1, _q5_0),
    GGUF_TYPES["Q5_1"]: Layout(1, _q5_1),
    GGUF_TYPES["Q2_K"]: Layout(16, _q2_k),
    GGUF_TYPES["Q3_K"]: Layout(16, _q3_k),
    GGUF_TYPES["Q4_K"]: Layout(8, _q4_k),
    GGUF_TYPES["Q5_K"]: Layout(8, _q5_k),
    GGUF_TYPES["Q6_K"]: Layout(16, _q6_k),
}


def _layout(t: GGUFType) -> Layout:
    if t not in LAYOUTS:
        raise ValueError(f"no byte layout is known here for {t.name}; use one of {', '.join(GGUF_TYPES)}.")
    return LAYOUTS[t]


def sub_block_size(t: GGUFType) -> int:
    """Values that share one scale: 32 for the legacy types, Q4_K and Q5_K; 16 for Q2_K, Q3_K and Q6_K."""
    return t.block_size // _layout(t).sub_blocks


def read_gguf_block(raw: Tensor, t: GGUFType) -> DecodedBlock:
    """Decode the `t.type_size` bytes of one block of type t."""
    if raw.dtype != torch.uint8 or raw.numel() != t.type_size:
        raise ValueError(f"a {t.name} block is {t.type_size} bytes (got {raw.numel()} of {raw.dtype}).")
    return _layout(t).read(raw.reshape(-1).contiguous())


def gguf_block(values: Tensor, t: GGUFType) -> DecodedBlock:
    """Pack the t.block_size values of one block as llama.cpp does, then read the bytes back."""
    if values.numel() != t.block_size:
        raise ValueError(f"one {t.name} block holds {t.block_size} values (got {values.numel()}).")
    raw = t.encode(values.detach().float().reshape(1, -1).contiguous())[0]
    return read_gguf_block(raw, t)


# -- microscaling ------------------------------------------------------------------------------------


def _pack_codes(codes: Tensor, bits: int) -> Tensor:
    """(n,) element codes -> bytes, as the module docstring lays them out."""
    codes = codes.to(torch.int32)
    if bits == 4:
        half = codes.numel() // 2
        return (codes[:half] | (codes[half:] << 4)).to(torch.uint8)
    if bits == 6:
        groups = codes.reshape(-1, 4)  # four 6-bit codes = one little-endian 24-bit word = 3 bytes
        word = groups[:, 0] | (groups[:, 1] << 6) | (groups[:, 2] << 12) | (groups[:, 3] << 18)
        return torch.stack([word & 0xFF, (word >> 8) & 0xFF, word >> 16], dim=-1).reshape(-1).to(torch.uint8)
    return codes.to(torch.uint8)


def _unpack_codes(data: Tensor, bits: int, n: int) -> Tensor:
    data = data.to(torch.int32)
    if bits == 4:
        return torch.cat([data & 15, data >> 4])
    if bits == 6:
        b = data.reshape(-1, 3)
        word = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        return torch.stack([(word >> shift) & 63 for shift in (0, 6, 12, 18)], dim=-1).reshape(n)
    return data


def _code_words(bits: int, n: int, name: str) -> str:
    if bits == 4:
        return (
            f"{n} {name} codes, two per byte: byte j holds value j (low nibble) and value j + {n // 2} (high)"
        )
    if bits == 6:
        return f"{n} {name} codes of 6 bits, four in every 3 bytes, first code in the lowest bits"
    return f"{n} {name} codes, one byte each"


def mx_block(qt: QTensor, index: int) -> DecodedBlock:
    """Block `index` (row-major over the tensor's blocks) of a microscaling QTensor, as bytes and back."""
    scheme = qt.scheme
    if not scheme.is_microscaling or qt.static:
        raise ValueError(f"{scheme.label} has no microscaling block scale to lay out.")
    n_blocks = qt.scale.numel()
    if not 0 <= index < n_blocks:
        raise ValueError(f"block {index} is outside this tensor's {n_blocks} blocks.")
    codes = qt.codes.reshape(n_blocks, -1)[index].view(torch.uint8)
    stored = qt.scale.reshape(-1)[index : index + 1]  # (1,) float8: the scale's own byte
    raw = torch.cat([stored.view(torch.uint8), _pack_codes(codes, scheme.bits)])
    # read back from the bytes
    byte_scale = raw[0:1].view(scheme.torch_scale_dtype).float()
    scale = byte_scale if qt.tensor_scale is None else qt.tensor_scale * byte_scale
    read = _unpack_codes(raw[1:], scheme.bits, codes.numel())
    element = scheme.element
    n, name = codes.numel(), scheme.format.split("_")[-1].upper()
    what = "E4M3, times the tensor scale" if qt.tensor_scale is not None else "E8M0: 2^(byte − 127)"
    fields = [
        _field(raw, 0, 1, f"block scale ({what})", f"{float(byte_scale):g}"),
        _field(raw, 1, raw.numel(), _code_words(scheme.bits, n, name), "codes " + _hex(read, 8)),
    ]
    if qt.tensor_scale is not None:
        ts = qt.tensor_scale.reshape(1).float()
        fields.append(
            ByteField(
                None,
                None,
                "tensor scale (float32), once per tensor",
                f"{float(ts):.4g}",
                ts.view(torch.uint8),
            )
        )
    as_codes = read.to(torch.uint8).view(element.code_dtype(scheme))  # the element's own code tensor
    code_values = element.decode(as_codes, torch.ones(()), None, scheme).float()
    return DecodedBlock(
        scheme.label,
        raw,
        tuple(fields),
        read,
        code_values,
        element.grid_values(scheme),
        scale,
        torch.zeros(1),
    )
