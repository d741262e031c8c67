"""The quantization core: schemes (what a user picks), formats (the grids codes index into), primitives
(quantize / dequantize / fake_quantize), observers, metrics, the fake-quantized linear and the STE.

Read in order: schemes -> formats -> primitives -> observers / metrics -> linear -> ste.
"""
