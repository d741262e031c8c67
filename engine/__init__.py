"""Quantization Explorer engine: pure PyTorch, no Streamlit, no printing; long work reports progress
through `progress(fraction, message)` callbacks.

Read in order: schemes -> formats -> primitives -> observers / metrics -> grid / priorgrid -> lessons / qat.
Model sources and loading live in `sources` and `models`, generation in `generation`, text in `data`.
The names below are the public API; submodules hold the rest.
"""

from engine.eval_grid import run_grid
from engine.evaluate import evaluate_against_reference, kl_to_reference, perplexity
from engine.kv_cache import KVCacheConfig, make_kv_cache
from engine.memory import MemoryBreakdown, estimate
from engine.methods import RTNConfig, quantize_model
from engine.metrics import (
    error_summary,
    kl_divergence,
    max_abs_err,
    mse,
    relative_error,
    sqnr_db,
    top1_agreement,
)
from engine.models import LoadedModel, describe, load_model
from engine.observers import MinMaxObserver, MovingAverageMinMaxObserver, MSEObserver, PercentileObserver
from engine.primitives import QParams, QTensor, choose_qparams, dequantize, fake_quantize, quantize
from engine.priorgrid import PriorGrid, detect_prior_grid
from engine.schemes import QuantScheme, bits_per_weight
from engine.sources import ModelSource, ModelSourceError

__all__ = [
    "KVCacheConfig",
    "LoadedModel",
    "MemoryBreakdown",
    "MSEObserver",
    "MinMaxObserver",
    "ModelSource",
    "ModelSourceError",
    "MovingAverageMinMaxObserver",
    "PercentileObserver",
    "PriorGrid",
    "QParams",
    "QTensor",
    "QuantScheme",
    "RTNConfig",
    "bits_per_weight",
    "choose_qparams",
    "dequantize",
    "describe",
    "estimate",
    "evaluate_against_reference",
    "kl_to_reference",
    "make_kv_cache",
    "perplexity",
    "quantize_model",
    "run_grid",
    "detect_prior_grid",
    "error_summary",
    "fake_quantize",
    "kl_divergence",
    "load_model",
    "max_abs_err",
    "mse",
    "quantize",
    "relative_error",
    "sqnr_db",
    "top1_agreement",
]
