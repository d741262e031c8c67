"""Real low-bit matmuls: packed int4 / int8 weights, the kernels that read them, and a reference for each.

Read in order: reference.py (the formats' plain forms, and dequantize + matmul for each: what every
kernel is held to), formats.py (which schemes each packed format runs), layouts.py (how each layout
stores the bits), cpu.py (PyTorch's packed CPU ops, bf16 activations), cuda.py (launches our Triton
kernels of triton_kernels.py, tinygemm and `_int_mm`; triton_aot.py builds the kernels for an H100
without one), dispatch.py (the table of kernels that can run, the bound call a layer keeps, the fallback
to the reference), choice.py (which candidate and which layout run: timed once per device and batch
bucket, kept in a file), linear.py (QuantLinear, whose forward runs its bound call, and
`to_quant_linears`). The method that packs a model
(`PackedRTNConfig`, `pack_quantized_model`) is engine.methods.packed: this package never imports
engine.methods.
"""

from engine.kernels.dispatch import failures
from engine.kernels.linear import FORMATS, QuantLinear, layer_refusal, packed_format, to_quant_linears

__all__ = [
    "FORMATS",
    "QuantLinear",
    "failures",
    "layer_refusal",
    "packed_format",
    "to_quant_linears",
]
