"""Packed layouts: how a QuantLinear's bits are stored, one small class per layout.

A layout is chosen once, at pack time, for the format and the device the layer lives on (the first
entry of `LAYOUTS` that fits); the kernel that reads it is chosen per call (engine.kernels.dispatch).
Each layout packs the plain codes / scales / zeros of engine.kernels.reference into buffers and unpacks
its buffers back to them, so the reference path multiplies the very bytes the fast kernels read.

    cpu_int4pack  W4A16 on a CPU whose int4 op takes the shape: aten's own packed layout (see
                  engine.kernels.cpu) with (G, N, 2) bfloat16 scale / zero pairs
    nibbles       W4A16 anywhere else: pack_int4 order (element 2j in the high nibble), (N, K / 2) uint8,
                  (N, G) scales and zeros in the scheme's scale dtype (no zeros when symmetric); what
                  our Triton kernels and tinygemm's packer read
    int8_cols     W8A8 on a GPU: codes transposed to (K, N), as cuBLAS' int8 GEMM wants; float32 scales
    int8_rows     W8A16 anywhere, W8A8 on a CPU: codes (N, K) int8 and per-row scales

Adding a layout is adding a class here and listing it in `LAYOUTS` before any layout it should win over.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from engine.kernels import cpu
from engine.quant.primitives import pack_int4, unpack_int4
from engine.quant.schemes import QuantScheme


class PackedLayout:
    """How one packed format's bits sit in a layer's buffers."""

    name: ClassVar[str]

    def fits(
        self, fmt: str, device_type: str, out_features: int, in_features: int, group: int | None
    ) -> bool:
        raise NotImplementedError

    def pack(
        self,
        fmt: str,
        codes: Tensor,  # W4A16: (N, K) uint8 in [0, 15]; int8 formats: (N, K) int8
        scales: Tensor,  # W4A16: (N, K / group) float; int8: (N,)
        zeros: Tensor | None,  # W4A16: (N, K / group) float (reference.py's form); int8: None
        weights: QuantScheme,
        device_type: str,
    ) -> dict[str, Tensor]:
        """Buffers (on the CPU; the caller moves them to the device) holding the codes and qparams."""
        raise NotImplementedError

    def unpack(self, layer) -> dict[str, Tensor]:
        """The layer's stored weight in reference.py's plain form, on the CPU."""
        raise NotImplementedError


class CpuInt4Pack(PackedLayout):
    name = "cpu_int4pack"

    def fits(self, fmt, device_type, out_features, in_features, group) -> bool:
        return (
            fmt == "W4A16"
            and device_type == "cpu"
            and cpu.int4_supported(out_features, in_features, group) is None
        )

    def pack(self, fmt, codes, scales, zeros, weights, device_type):
        packed, scales_and_zeros = cpu.pack_int4(codes, scales, zeros)
        return {"qweight": packed, "scales_and_zeros": scales_and_zeros}

    def unpack(self, layer):
        scales, zeros = cpu.unpack_scales_and_zeros(layer.scales_and_zeros)
        return {"codes": cpu.unpack_int4(layer.qweight), "scales": scales, "zeros": zeros}


class Nibbles(PackedLayout):
    name = "nibbles"

    def fits(self, fmt, device_type, out_features, in_features, group) -> bool:
        return fmt == "W4A16"

    def pack(self, fmt, codes, scales, zeros, weights, device_type):
        out_features, in_features = codes.shape
        stored = weights.torch_scale_dtype
        buffers = {
            "qweight": pack_int4(codes).view(out_features, in_features // 2),
            "scales": scales.to(stored),
            "zeros": zeros.to(stored),
        }
        if weights.symmetric:  # all zeros: do not store them
            del buffers["zeros"]
        return buffers

    def unpack(self, layer):
        shape = (layer.out_features, layer.in_features)
        scales = layer.scales.float().cpu()
        zeros = layer.zeros.float().cpu() if hasattr(layer, "zeros") else torch.zeros_like(scales)
        return {"codes": unpack_int4(layer.qweight.cpu().view(-1), shape), "scales": scales, "zeros": zeros}


class Int8Cols(PackedLayout):
    name = "int8_cols"

    def fits(self, fmt, device_type, out_features, in_features, group) -> bool:
        return fmt == "W8A8" and device_type != "cpu"

    def pack(self, fmt, codes, scales, zeros, weights, device_type):
        return {"qweight": codes.t().contiguous(), "scales": scales}  # the int32 product is scaled in fp32

    def unpack(self, layer):
        return {"codes": layer.qweight.cpu().t(), "scales": layer.scales.float().cpu()}


class Int8Rows(PackedLayout):
    name = "int8_rows"

    def fits(self, fmt, device_type, out_features, in_features, group) -> bool:
        return fmt == "W8A16" or (fmt == "W8A8" and device_type == "cpu")

    def pack(self, fmt, codes, scales, zeros, weights, device_type):
        if fmt == "W8A8":  # the int32 product is scaled in float32
            return {"qweight": codes, "scales": scales}
        # the CPU op runs in its scales' dtype (bfloat16, see engine.kernels.cpu)
        scale_dtype = cpu.COMPUTE_DTYPE if device_type == "cpu" else weights.torch_scale_dtype
        return {"qweight": codes, "scales": scales.to(scale_dtype)}

    def unpack(self, layer):
        return {"codes": layer.qweight.cpu(), "scales": layer.scales.float().cpu()}


LAYOUTS: tuple[PackedLayout, ...] = (CpuInt4Pack(), Nibbles(), Int8Cols(), Int8Rows())
_BY_NAME = {layout.name: layout for layout in LAYOUTS}


def layout_named(name: str) -> PackedLayout:
    if name not in _BY_NAME:
        raise ValueError(f"unknown packed layout {name!r}; known: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def choose_layout(fmt: str, device_type: str, out_features: int, in_features: int, group: int | None):
    """The first layout in `LAYOUTS` that stores `fmt` for `device_type` at this shape."""
    for layout in LAYOUTS:
        if layout.fits(fmt, device_type, out_features, in_features, group):
            return layout
    raise ValueError(f"no packed layout stores {fmt} on {device_type} for ({out_features}, {in_features})")
