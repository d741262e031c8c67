"""Packed layouts: how a QuantLinear's bits are stored, one small class per layout.

A layout is chosen once, at pack time, for the format and the device the layer lives on: the only layout
that fits, or, where several fit, the one whose fastest kernel is fastest at one row, measured on this
device (engine.kernels.choice). The kernel that reads it is chosen per batch size (engine.kernels.dispatch).
Each layout packs the plain codes / scales / zeros of engine.kernels.reference into buffers and unpacks its
buffers back to them, so the reference path multiplies the very bytes the fast kernels read.

Each layout also fixes the layer's compute dtype: the dtype its kernels take activations in and return
results in. Its scales are stored in that dtype at pack time, so no call ever casts them; activations in
another dtype are cast in and out by the layer (two ops), never inside a kernel.

    cpu_int4pack  W4A16 on a CPU whose int4 op takes the shape: aten's own packed layout (see
                  engine.kernels.cpu) with (G, N, 2) bfloat16 scale / zero pairs; computes in bfloat16
    tinygemm      W4A16 on a GPU whose tinygemm op takes the shape: aten's CUDA int4 layout
                  (`_convert_weight_to_int4pack`), (G, N, 2) bfloat16 pairs; computes in bfloat16
    nibbles       W4A16 anywhere: pack_int4 order (element 2j in the high nibble), (N, K / 2) uint8,
                  (N, G) scales and zeros (none when symmetric) in the compute dtype when it is 16-bit,
                  else in the scheme's scale dtype; what our Triton kernels read; computes in the model's
                  dtype
    int8_cols     W8A8 on a GPU: codes transposed to (K, N), as cuBLAS' int8 GEMM wants; float32 scales
    int8_rows     W8A16 anywhere, W8A8 on a CPU: codes (N, K) int8 and per-row scales (float32 for W8A8,
                  else in the compute dtype: bfloat16 on a CPU, where aten's int8 op is only fast in it)

Adding a layout is adding a class here and listing it in `LAYOUTS`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from engine.kernels import cpu
from engine.quant.primitives import pack_int4, unpack_int4
from engine.quant.schemes import QuantScheme

SIXTEEN_BIT = (torch.float16, torch.bfloat16)


class PackedLayout:
    """How one packed format's bits sit in a layer's buffers."""

    name: ClassVar[str]

    def fits(
        self, fmt: str, device_type: str, out_features: int, in_features: int, group: int | None
    ) -> bool:
        raise NotImplementedError

    def compute_dtype(self, fmt: str, device_type: str, io_dtype: torch.dtype) -> torch.dtype:
        """The dtype the kernels reading this layout take and return, for a model running in `io_dtype`."""
        return io_dtype

    def pack(
        self,
        fmt: str,
        codes: Tensor,  # W4A16: (N, K) uint8 in [0, 15]; int8 formats: (N, K) int8
        scales: Tensor,  # W4A16: (N, K / group) float; int8: (N,)
        zeros: Tensor | None,  # W4A16: (N, K / group) float (reference.py's form); int8: None
        weights: QuantScheme,
        device: torch.device,
        compute_dtype: torch.dtype,
    ) -> dict[str, Tensor]:
        """Buffers on `device` holding the codes and qparams."""
        raise NotImplementedError

    def unpack(self, layer) -> dict[str, Tensor]:
        """The layer's stored weight in reference.py's plain form, on the CPU."""
        raise NotImplementedError


def _on(buffers: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {name: tensor.to(device) for name, tensor in buffers.items()}


class CpuInt4Pack(PackedLayout):
    name = "cpu_int4pack"

    def fits(self, fmt, device_type, out_features, in_features, group) -> bool:
        return (
            fmt == "W4A16"
            and device_type == "cpu"
            and cpu.int4_supported(out_features, in_features, group) is None
        )

    def compute_dtype(self, fmt, device_type, io_dtype):
        return cpu.COMPUTE_DTYPE

    def pack(self, fmt, codes, scales, zeros, weights, device, compute_dtype):
        packed, scales_and_zeros = cpu.pack_int4(codes, scales, zeros, compute_dtype)
        return {"qweight": packed, "scales_and_zeros": scales_and_zeros}

    def unpack(self, layer):
        scales, zeros = cpu.unpack_scales_and_zeros(layer.scales_and_zeros)
        return {"codes": cpu.unpack_int4(layer.qweight), "scales": scales, "zeros": zeros}


class Tinygemm(PackedLayout):
    name = "tinygemm"

    def fits(self, fmt, device_type, out_features, in_features, group) -> bool:
        if fmt != "W4A16" or device_type != "cuda" or group is None:
            return False
        from engine.kernels import cuda  # only for a GPU

        return cuda.tinygemm_supported(out_features, in_features, group) is None

    def compute_dtype(self, fmt, device_type, io_dtype):
        return torch.bfloat16  # the only activation dtype tinygemm takes

    def pack(self, fmt, codes, scales, zeros, weights, device, compute_dtype):
        from engine.kernels import cuda

        packed, scales_and_zeros = cuda.tinygemm_pack(codes, scales, zeros, device)
        return {"qweight": packed, "scales_and_zeros": scales_and_zeros}

    def unpack(self, layer):
        from engine.kernels import cuda

        return cuda.tinygemm_unpack(
            layer.qweight, layer.scales_and_zeros, layer.group_size, layer.out_features, layer.in_features
        )


class Nibbles(PackedLayout):
    name = "nibbles"

    def fits(self, fmt, device_type, out_features, in_features, group) -> bool:
        return fmt == "W4A16"

    def pack(self, fmt, codes, scales, zeros, weights, device, compute_dtype):
        out_features, in_features = codes.shape
        stored = compute_dtype if compute_dtype in SIXTEEN_BIT else weights.torch_scale_dtype
        buffers = {
            "qweight": pack_int4(codes).view(out_features, in_features // 2),
            "scales": scales.to(stored),
            "zeros": zeros.to(stored),
        }
        if weights.symmetric:  # all zeros: do not store them
            del buffers["zeros"]
        return _on(buffers, device)

    def unpack(self, layer):
        shape = (layer.out_features, layer.in_features)
        scales = layer.scales.float().cpu()
        zeros = layer.zeros.float().cpu() if hasattr(layer, "zeros") else torch.zeros_like(scales)
        return {"codes": unpack_int4(layer.qweight.cpu().view(-1), shape), "scales": scales, "zeros": zeros}


class Int8Cols(PackedLayout):
    name = "int8_cols"

    def fits(self, fmt, device_type, out_features, in_features, group) -> bool:
        return fmt == "W8A8" and device_type != "cpu"

    def pack(self, fmt, codes, scales, zeros, weights, device, compute_dtype):
        # the int32 product is scaled in float32
        return _on({"qweight": codes.t().contiguous(), "scales": scales.float()}, device)

    def unpack(self, layer):
        return {"codes": layer.qweight.cpu().t(), "scales": layer.scales.float().cpu()}


class Int8Rows(PackedLayout):
    name = "int8_rows"

    def fits(self, fmt, device_type, out_features, in_features, group) -> bool:
        return fmt == "W8A16" or (fmt == "W8A8" and device_type == "cpu")

    def compute_dtype(self, fmt, device_type, io_dtype):
        if fmt == "W8A16" and device_type == "cpu":
            return cpu.COMPUTE_DTYPE  # aten's int8 op is only fast in bfloat16 on a CPU
        return io_dtype

    def pack(self, fmt, codes, scales, zeros, weights, device, compute_dtype):
        scale_dtype = torch.float32 if fmt == "W8A8" else compute_dtype  # W8A8 scales its int32 sums in fp32
        return _on({"qweight": codes, "scales": scales.to(scale_dtype)}, device)

    def unpack(self, layer):
        return {"codes": layer.qweight.cpu(), "scales": layer.scales.float().cpu()}


LAYOUTS: tuple[PackedLayout, ...] = (CpuInt4Pack(), Tinygemm(), Nibbles(), Int8Cols(), Int8Rows())
_BY_NAME = {layout.name: layout for layout in LAYOUTS}


def layout_named(name: str) -> PackedLayout:
    if name not in _BY_NAME:
        raise ValueError(f"unknown packed layout {name!r}; known: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def fitting_layouts(
    fmt: str, device_type: str, out_features: int, in_features: int, group: int | None
) -> list[PackedLayout]:
    """Every layout that stores `fmt` for `device_type` at this shape, in `LAYOUTS` order."""
    fitting = [
        layout for layout in LAYOUTS if layout.fits(fmt, device_type, out_features, in_features, group)
    ]
    if not fitting:
        raise ValueError(
            f"no packed layout stores {fmt} on {device_type} for ({out_features}, {in_features})"
        )
    return fitting
