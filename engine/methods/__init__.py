"""Quantization methods behind one registry: `quantize_model(model, config)` dispatches on the config type.

Read in order: registry.py (the dispatcher, each method's `MethodInfo`: display name, what calibration it
needs, the type of its per-layer report detail), calibration.py (the calibration plumbing the calibrated
methods share: batches, layer-input capture, Gram matrices, output errors), rtn.py (round to
nearest: weights, weights + activations), llm_int8.py (vector-wise int8 with 16-bit outlier dims),
smoothquant.py (activation smoothing folded into the norms, then W8A8), gptq.py (column-wise
quantization with inverse-Hessian error compensation), awq.py (activation-aware scale search), bnb.py (bitsandbytes' own
int8 / NF4 / FP4 layers, as transformers builds them), qat.py (quantization-aware training: a few steps of
fine-tuning the linears' latent weights through the straight-through estimator of engine/quant/ste.py),
gguf.py (llama.cpp's GGUF block types, with its per-tensor fallback),
packed.py (round to nearest, then pack onto engine.kernels' real low-bit kernels; packing a method's result).
"""

from engine.methods import awq, bnb, gguf, gptq, llm_int8, packed, qat, rotation, rtn, smoothquant  # noqa: F401  (each registers its config)
from engine.methods.awq import AWQConfig
from engine.methods.bnb import BnbConfig
from engine.methods.gguf import GGUFConfig
from engine.methods.gptq import GPTQConfig
from engine.methods.llm_int8 import LLMInt8Config
from engine.methods.packed import PackedRTNConfig, pack_quantized_model, pack_refusal
from engine.methods.qat import QATConfig
from engine.methods.registry import (
    Calibration,
    LayerReport,
    MethodInfo,
    QuantizedModel,
    method_info,
    methods,
    quantize_model,
    register,
)
from engine.methods.rotation import RotationConfig
from engine.methods.rtn import RTNConfig
from engine.methods.smoothquant import SmoothQuantConfig

__all__ = [
    "AWQConfig",
    "GPTQConfig",
    "BnbConfig",
    "GGUFConfig",
    "Calibration",
    "LLMInt8Config",
    "LayerReport",
    "PackedRTNConfig",
    "MethodInfo",
    "QATConfig",
    "QuantizedModel",
    "RTNConfig",
    "RotationConfig",
    "SmoothQuantConfig",
    "pack_quantized_model",
    "pack_refusal",
    "method_info",
    "methods",
    "quantize_model",
    "register",
]
