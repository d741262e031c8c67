"""The quantization core: elements (the registry of number formats and their grids), schemes (what a user
picks), shapes (which shapes a scheme fits, group sizes to suggest), formats (scheme-level encode / decode over that registry), primitives (quantize / dequantize /
fake_quantize), observers, metrics, the fake-quantized linear and the STE.

Read in order: elements -> shapes -> schemes -> formats -> primitives -> observers / metrics -> linear -> ste.
"""
