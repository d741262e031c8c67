"""The Methods lab's round-to-nearest form: any weight format the sidebar knows by name (int groups, NF4,
MX, NVFP4, FP8 blocks), with the activations quantized dynamically in the same format if asked (W4A4 ...),
and the weights' rounding weighted by llama.cpp's importance matrix if asked."""

from __future__ import annotations

from engine.methods import RTNConfig
from engine.quant.schemes import QuantScheme, parse_label

INT = "int"
FORMATS = {  # choice -> how the form names it; "int" takes the lab's bits and group size
    INT: "int (the bits and group size above)",
    "nf4": "NF4 (the group size above)",
    "mxfp4": "MXFP4 (blocks of 32, E8M0 scales)",
    "nvfp4": "NVFP4 (blocks of 16, E4M3 × FP32 scales)",
    "mxfp6_e2m3": "MXFP6 E2M3",
    "mxfp8_e4m3": "MXFP8 E4M3",
    "fp8_e4m3 block128": "FP8 in 128×128 blocks (DeepSeek-V3)",
}


def weights_scheme(choice: str, bits: int, group_size: int) -> QuantScheme:
    if choice == INT:
        return QuantScheme(bits, "int", True, "group", group_size)
    if choice == "nf4":
        return QuantScheme(4, "nf4", True, "group", group_size)
    return parse_label(choice)


def rtn_form(bits: int, group_size: int, key: str, where) -> RTNConfig:
    choice = where.selectbox(
        "Format",
        list(FORMATS),
        format_func=FORMATS.get,
        key=f"{key}_format",
        help="Every weight rounded to the nearest value of this format; MX, NVFP4 and FP8 blocks fix their "
        "own block size.",
    )
    weights = weights_scheme(choice, bits, group_size)
    activations = where.checkbox(
        "Activations too",
        key=f"{key}_acts",
        help="Each linear's input quantized on every call, per token, in the same format and blocks (W4A4 "
        "with MXFP4 or NVFP4 is what Blackwell GPUs run; FP8 blocks take 1×128 groups per token).",
    )
    imatrix = where.checkbox(
        "Importance matrix",
        False,
        key=f"{key}_imatrix",
        help="llama.cpp's --imatrix for these formats: measured on the calibration text first, it picks each "
        "block's scale to round the weights that meet large activations more carefully",
    )
    return RTNConfig(weights, weights if activations else None, imatrix=imatrix)
