"""llama.cpp's GGUF block formats as real block quantizers: bytes identical to ggml's block structs.

Legacy blocks of 32 (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) and k-quants in super-blocks of 256 (Q2_K ... Q6_K),
quantized as ggml-quants.c's reference quantizers do (including the k-quants' scale searches; with an
importance matrix, as its `_impl` quantizers do), packed into the real byte layouts and dequantized as llama.cpp reads them.

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


# llama.cpp's quantizers given an importance matrix (ggml-quants.c's `quantize_row_*_impl`): rows (R, cols)
# and importance (cols,) -> (R * cols / block_size, type_size). Q8_0 ignores it, as llama.cpp does.
def _per_super_block(encode: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """A k-quant's weighted encoder (super-blocks (S, 256), their importance (S, 256)) on rows (R, cols)."""

    def on_rows(rows: Tensor, importance: Tensor) -> Tensor:
        qw = importance.repeat(rows.shape[0]).reshape(-1, kquants.QK_K)
        return encode(rows.reshape(-1, kquants.QK_K), qw)

    return on_rows


WEIGHTED: dict[GGUFType, Callable[[Tensor, Tensor], Tensor]] = {
    Q2_K: _per_super_block(kquants.quantize_q2_k_weighted),
    Q3_K: _per_super_block(kquants.quantize_q3_k_weighted),
    Q4_K: _per_super_block(kquants.quantize_q4_k_weighted),
    Q5_K: _per_super_block(kquants.quantize_q5_k_weighted),
    Q6_K: _per_super_block(kquants.quantize_q6_k_weighted),
    Q4_0: legacy.quantize_q4_0_weighted,
    Q4_1: legacy.quantize_q4_1_weighted,
    Q5_0: legacy.quantize_q5_0_weighted,
    Q5_1: legacy.quantize_q5_1_weighted,
}


def _importance(importance: Tensor, x: Tensor) -> Tensor:
    imp = torch.as_tensor(importance).detach().to(device="cpu", dtype=torch.float32).reshape(-1)
    if imp.numel() != x.shape[-1]:
        raise ValueError(
            f"the importance must hold one value per column ({x.shape[-1]}); it has {imp.numel()}."
        )
    if not bool(torch.isfinite(imp).all()) or bool((imp < 0).any()):
        raise ValueError("importance values must be finite and not negative.")
    return imp.contiguous()


# rows are encoded in chunks of about this many values: the searches' many whole-array temporaries then stay
# in cache (Q4_0 with an importance matrix 3.6x faster, Q4_K 2.2x, Q3_K 2.5x on one thread; docs/benchmarks.md)
CHUNK_ELEMENTS = 1 << 18


def quantize(x: Tensor, t: GGUFType, importance: Tensor | None = None) -> Tensor:
    """Pack x (..., cols) into t's blocks: uint8 (..., cols / block_size * type_size), ggml's byte layout.

    `importance` (cols,): llama.cpp's importance matrix for this tensor (the mean squared activation of
    each input channel, engine.methods.imatrix), weighting the scale searches as `llama-quantize --imatrix`
    does. None: the reference quantizers, byte for byte.
    """
    blocks = _blocks(x, t)
    if importance is None or t not in WEIGHTED:
        encode = t.encode
    else:
        imp = _importance(importance, x)
        weighted = WEIGHTED[t]

        def encode(part: Tensor) -> Tensor:
            return weighted(part.reshape(-1, x.shape[-1]), imp)

    per_row = x.shape[-1] // t.block_size  # blocks per row: chunks hold whole rows (the searches use rows)
    step = per_row * max(1, CHUNK_ELEMENTS // x.shape[-1])
    parts = [encode(blocks[start : start + step]) for start in range(0, blocks.shape[0], step)]
    packed = torch.cat(parts) if len(parts) > 1 else encode(blocks)
    return packed.reshape(*x.shape[:-1], x.shape[-1] // t.block_size * t.type_size)


def dequantize(packed: Tensor, t: GGUFType, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """The float32 values llama.cpp reads back from t's packed bytes, in `shape`."""
    t.check_row(shape[-1])
    expected = shape[-1] // t.block_size * t.type_size
    if packed.dtype != torch.uint8 or packed.shape[-1] != expected:
        raise ValueError(f"{t.name} bytes for rows of {shape[-1]} values take {expected} bytes per row.")
    return t.decode(packed.reshape(-1, t.type_size)).reshape(shape)


def fake_quantize(x: Tensor, t: GGUFType, importance: Tensor | None = None) -> Tensor:
    """x quantized to t (weighted by `importance`, see `quantize`) and read back, in x's dtype and device."""
    return dequantize(quantize(x, t, importance), t, x.shape).to(device=x.device, dtype=x.dtype)


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
