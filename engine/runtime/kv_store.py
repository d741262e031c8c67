"""Where a KV cache layer keeps one side (keys or values): quantized codes, or the states as computed.

`CodeStore` holds codes plus scales under a `QuantScheme` and appends along one axis; `PlainStore` holds
16-bit states (a side left unquantized when keys and values are chosen apart). Both count their bytes
the way `engine.runtime.kv_cache` documents.

NVFP4 (two-level scales) in a growing cache: NVIDIA's NVFP4 KV cache (TensorRT-LLM, from a ModelOpt
checkpoint) uses one static float32 scale per layer for K and one for V, calibrated offline, with E4M3
scales per block of 16 along head_dim. We have no calibration pass, so the first update of a layer (the
prompt, or the first block of per-channel keys) sets that side's float32 scale from its own absmax,
exactly as `quantize` would (absmax / (448 * 6)); every later update keeps it and only picks new E4M3 block
scales, which saturate at 448 (values beyond the prompt's range clip, as with a calibrated scale). A
side stores 32 bits for it once per layer. Perplexity runs each window in one forward, so there it is
the window's own amax: the first update of every layer equals `fake_quantize(states, nvfp4)` exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from engine.quant import formats
from engine.quant.microscaling import E4M3_MAX, E4M3_TINY
from engine.quant.primitives import QTensor, dequantize, quantize, scale_shape
from engine.quant.schemes import QuantScheme

BASELINE_BYTES = 2  # an unquantized element is counted at 16 bits, the serving baseline
TENSOR_SCALE_BYTES = 4  # NVFP4's float32 second-level scale


def tensor_bytes(t: Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def numel(t: Tensor | None) -> int:
    return 0 if t is None else t.numel()


class PlainStore:
    """States kept as computed (16-bit in the accounting), appended along the token axis."""

    def __init__(self) -> None:
        self.states: Tensor | None = None

    def append(self, x: Tensor) -> None:
        self.states = x if self.states is None else torch.cat([self.states, x], dim=-2)

    def read(self, device) -> Tensor:
        return self.states

    @property
    def numel(self) -> int:
        return numel(self.states)

    def nbytes(self) -> int:
        return BASELINE_BYTES * self.numel

    def resident_bytes(self) -> int:
        return tensor_bytes(self.states)


class CodeStore:
    """Codes, scales and zero points of quantized blocks, appended along one axis.

    Blocks always run along the last dim, so appending rows (dim=-2, per token) or whole blocks along the
    last dim (per channel) keeps every block contiguous and one `dequantize` reads the lot.
    """

    def __init__(self, scheme: QuantScheme, dim: int) -> None:
        self.scheme = scheme
        self.dim = dim  # -2: per token (rows are tokens); -1: per channel (rows are channels)
        # (batch, heads, tokens, head_dim) per token, (batch, heads, head_dim, tokens) per channel
        self.codes: Tensor | None = None
        self.scale: Tensor | None = None  # like codes, last dim = blocks per row
        self.zero: Tensor | None = None
        self.tensor_scale: Tensor | None = None  # NVFP4: set by the first update, kept (module docstring)
        self.dtype = torch.float32

    def _quantize(self, x: Tensor) -> QTensor:
        if not self.scheme.two_level or self.tensor_scale is None:
            qt = quantize(x, self.scheme)
            self.tensor_scale = qt.tensor_scale
            return qt
        return quantize_two_level(x, self.scheme, self.tensor_scale)

    def append(self, x: Tensor) -> None:
        qt = self._quantize(x.detach().to("cpu"))
        self.dtype = x.dtype
        if self.codes is None:
            self.codes, self.scale, self.zero = qt.codes, qt.scale, qt.zero_point
            return
        self.codes = torch.cat([self.codes, qt.codes], dim=self.dim)
        self.scale = torch.cat([self.scale, qt.scale], dim=self.dim)
        if self.zero is not None:
            self.zero = torch.cat([self.zero, qt.zero_point], dim=self.dim)

    def dequantize(self) -> Tensor:
        qt = QTensor(
            self.codes, self.scale, self.zero, self.scheme, self.codes.shape, self.dtype,
            tensor_scale=self.tensor_scale,
        )  # fmt: skip
        return dequantize(qt)

    def read(self, device) -> Tensor:
        return self.dequantize().to(device)

    @property
    def numel(self) -> int:
        return numel(self.codes)

    def nbytes(self) -> int:
        if self.codes is None:
            return 0
        extra = tensor_bytes(self.scale) + tensor_bytes(self.zero)
        if self.tensor_scale is not None:
            extra += TENSOR_SCALE_BYTES
        return math.ceil(self.codes.numel() * self.scheme.bits / 8) + extra

    def resident_bytes(self) -> int:
        return tensor_bytes(self.codes) + tensor_bytes(self.scale) + tensor_bytes(self.zero)


def make_store(scheme: QuantScheme | None, dim: int = -2) -> CodeStore | PlainStore:
    return PlainStore() if scheme is None else CodeStore(scheme, dim)


@torch.no_grad()
def quantize_two_level(x: Tensor, scheme: QuantScheme, tensor_scale: Tensor) -> QTensor:
    """NVFP4 with a given float32 tensor scale: only the E4M3 block scales come from x.

    The same operations, in the same order, as `engine.quant.microscaling.nvfp4_scales`, so a tensor scale
    equal to x's own gives `quantize(x, scheme)` bit for bit.
    """
    xb = x.float().reshape(-1, scheme.group_size)  # (n_blocks, 16)
    absmax = xb.abs().amax(dim=-1, keepdim=True)
    if scheme.clip_ratio != 1.0:
        absmax = absmax * scheme.clip_ratio
    top = scheme.element.grid_max(None)
    block = (absmax / top / tensor_scale).clamp_(min=E4M3_TINY, max=E4M3_MAX).to(torch.float8_e4m3fn)
    block32 = block.float()
    inv = (1.0 / tensor_scale) / block32
    codes = torch.empty(xb.shape, dtype=formats.code_dtype(scheme))
    formats.encode(xb, tensor_scale * block32, None, scheme, codes, inv)
    shape = scale_shape(scheme, x.shape)
    return QTensor(
        codes.view(x.shape), block.view(shape), None, scheme, x.shape, x.dtype, tensor_scale=tensor_scale
    )
