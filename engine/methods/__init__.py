"""Quantization methods behind one registry: `quantize_model(model, config)` dispatches on the config type.

Read in order: registry.py (the dispatcher and the report every method returns), rtn.py (round to
nearest: weights, weights + activations).
"""

from engine.methods import rtn  # noqa: F401  (registers its config)
from engine.methods.registry import LayerReport, QuantizedModel, quantize_model, register
from engine.methods.rtn import RTNConfig

__all__ = ["LayerReport", "QuantizedModel", "RTNConfig", "quantize_model", "register"]
