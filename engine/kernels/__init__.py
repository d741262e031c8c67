"""Real low-bit matmuls: packed int4 / int8 weights, the kernels that read them, and a reference for each.

Read in order: reference.py (the formats, and dequantize + matmul for each: what every kernel is held
to), cpu.py (PyTorch's packed CPU ops, bf16 activations), cuda.py (launches our Triton kernels of
triton_kernels.py, tinygemm and `_int_mm`; not yet run on a GPU; triton_aot.py builds the kernels for an
H100 without one), modules.py (QuantLinear, which picks a kernel per device and batch,
and `PackedRTNConfig`, the method that packs a model). Importing this package registers the method.
"""

from engine.kernels.linear import (
    FORMATS,
    PackedRTNConfig,
    QuantLinear,
    pack_quantized_model,
    packed_format,
    to_quant_linears,
)

__all__ = [
    "FORMATS",
    "PackedRTNConfig",
    "QuantLinear",
    "pack_quantized_model",
    "packed_format",
    "to_quant_linears",
]
