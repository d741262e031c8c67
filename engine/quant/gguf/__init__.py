"""llama.cpp's GGUF block formats as real block quantizers: bytes identical to ggml's block structs.

Legacy blocks of 32 (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) and k-quants in super-blocks of 256 (Q2_K ... Q6_K),
quantized as ggml-quants.c's reference quantizers do (including the k-quants' scale searches, without an
importance matrix), packed into the real byte layouts and dequantized as llama.cpp reads them.

    t = GGUF_TYPES["Q4_K"]              # or the constant Q4_K
    packed = quantize(w, t)             # uint8 (rows, cols / 256 * 144), the bytes a .gguf file holds
    w_hat = dequantize(packed, t, w.shape)
    w_hat = fake_quantize(w, t)         # the same values in one call, in w's dtype

Rows are quantized along their last axis (a weight's input dimension, as llama.cpp does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from engine.quant.gguf import kquants, legacy

Codec = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class GGUFType:
    """One ggml block type: its name, ggml type id, block size (values) and type size (bytes per block)."""

    name: str
    ggml_id: int
    block_size: int
    type_size: int
    description: str
    encode: Codec = field(
        repr=False, compare=False
    )  # (blocks, block_size) float32 -> (blocks, type_size) uint8
    decode: Codec = field(repr=False, compare=False)  # and back

    @property
    def label(self) -> str:
        """The name a user types and reads ("Q4_K"), as QuantScheme.label is for our own schemes."""
        return self.name

    @property
    def bits_per_weight(self) -> float:
        """Exact bits per weight, scales and mins included."""
        return self.type_size * 8 / self.block_size

    @property
    def is_k_quant(self) -> bool:
        return self.block_size == kquants.QK_K

    def check_row(self, row_length: int) -> None:
        if row_length % self.block_size:
            unit = "super-blocks" if self.is_k_quant else "blocks"
            raise ValueError(
                f"{self.name} packs rows in {unit} of {self.block_size} values; this row has {row_length}."
            )


Q8_0 = GGUFType(
    "Q8_0", 8, 32, 34, "8-bit, an fp16 scale per 32", legacy.quantize_q8_0, legacy.dequantize_q8_0
)
Q4_0 = GGUFType(
    "Q4_0", 2, 32, 18, "4-bit, an fp16 scale per 32", legacy.quantize_q4_0, legacy.dequantize_q4_0
)
Q4_1 = GGUFType(
    "Q4_1", 3, 32, 20, "4-bit, an fp16 scale and minimum per 32", legacy.quantize_q4_1, legacy.dequantize_q4_1
)
Q5_0 = GGUFType(
    "Q5_0", 6, 32, 22, "5-bit, an fp16 scale per 32", legacy.quantize_q5_0, legacy.dequantize_q5_0
)
Q5_1 = GGUFType(
    "Q5_1", 7, 32, 24, "5-bit, an fp16 scale and minimum per 32", legacy.quantize_q5_1, legacy.dequantize_q5_1
)
Q2_K = GGUFType(
    "Q2_K", 10, 256, 84, "2-bit, 4-bit scales and mins per 16, in super-blocks of 256",
    kquants.quantize_q2_k, kquants.dequantize_q2_k,
)  # fmt: skip
Q3_K = GGUFType(
    "Q3_K", 11, 256, 110, "3-bit, 6-bit scales per 16, in super-blocks of 256",
    kquants.quantize_q3_k, kquants.dequantize_q3_k,
)  # fmt: skip
Q4_K = GGUFType(
    "Q4_K", 12, 256, 144, "4-bit, 6-bit scales and mins per 32, in super-blocks of 256",
    kquants.quantize_q4_k, kquants.dequantize_q4_k,
)  # fmt: skip
Q5_K = GGUFType(
    "Q5_K", 13, 256, 176, "5-bit, 6-bit scales and mins per 32, in super-blocks of 256",
    kquants.quantize_q5_k, kquants.dequantize_q5_k,
)  # fmt: skip
Q6_K = GGUFType(
    "Q6_K", 14, 256, 210, "6-bit, 8-bit scales per 16, in super-blocks of 256",
    kquants.quantize_q6_k, kquants.dequantize_q6_k,
)  # fmt: skip

GGUF_TYPES: dict[str, GGUFType] = {
    t.name: t for t in (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
}
K_QUANTS = (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
LEGACY = (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)


def gguf_type(name: str) -> GGUFType:
    """The type for a label such as "Q4_K" or "q4_k" (the edge where text becomes a type)."""
    found = GGUF_TYPES.get(name.strip().upper())
    if found is None:
        raise ValueError(f"{name!r} is not a GGUF block type here; use one of {', '.join(GGUF_TYPES)}.")
    return found


def _blocks(x: Tensor, t: GGUFType) -> Tensor:
    if x.dim() == 0:
        raise ValueError(f"{t.name} quantizes rows of values; got a single number.")
    t.check_row(x.shape[-1])
    return x.detach().to(device="cpu", dtype=torch.float32).reshape(-1, t.block_size).contiguous()


def quantize(x: Tensor, t: GGUFType) -> Tensor:
    """Pack x (..., cols) into t's blocks: uint8 (..., cols / block_size * type_size), ggml's byte layout."""
    packed = t.encode(_blocks(x, t))
    return packed.reshape(*x.shape[:-1], x.shape[-1] // t.block_size * t.type_size)


def dequantize(packed: Tensor, t: GGUFType, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """The float32 values llama.cpp reads back from t's packed bytes, in `shape`."""
    t.check_row(shape[-1])
    expected = shape[-1] // t.block_size * t.type_size
    if packed.dtype != torch.uint8 or packed.shape[-1] != expected:
        raise ValueError(f"{t.name} bytes for rows of {shape[-1]} values take {expected} bytes per row.")
    return t.decode(packed.reshape(-1, t.type_size)).reshape(shape)


def fake_quantize(x: Tensor, t: GGUFType) -> Tensor:
    """x quantized to t and read back, in x's dtype and device."""
    return dequantize(quantize(x, t), t, x.shape).to(device=x.device, dtype=x.dtype)


__all__ = [
    "GGUF_TYPES",
    "K_QUANTS",
    "LEGACY",
    "GGUFType",
    "Q2_K",
    "Q3_K",
    "Q4_0",
    "Q4_1",
    "Q4_K",
    "Q5_0",
    "Q5_1",
    "Q5_K",
    "Q6_K",
    "Q8_0",
    "dequantize",
    "fake_quantize",
    "gguf_type",
    "quantize",
]
