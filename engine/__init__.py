"""Quantization Explorer engine: pure PyTorch, no Streamlit, no printing; long work reports progress
through `progress(fraction, message)` callbacks (`engine._types.Progress`).

Read the packages in this order, each `__init__` giving its own reading order:
quant (schemes, formats, primitives) -> methods (the registry and one file per method) -> kernels (packed
layouts and the dispatch table) -> models (sources, loading, data) -> runtime (generation, decode, KV cache)
-> analysis (statistics, outliers) -> evaluation (perplexity, the study grid) -> sizing (memory from a
config) -> speed (measured kernels and decode) -> lessons (the Learn page). `recipes` names the configurations
every page offers; `hooks` and `_types` are the shared plumbing.

The names below are the public API; subpackages hold the rest.
"""

from engine.analysis.priorgrid import PriorGrid, detect_prior_grid
from engine.evaluation.perplexity import evaluate_against_reference, kl_to_reference, perplexity
from engine.evaluation.study import run_grid
from engine.methods import RTNConfig, quantize_model
from engine.models.loading import LoadedModel, describe, load_model
from engine.models.sources import ModelSource, ModelSourceError
from engine.quant.metrics import (
    error_summary,
    kl_divergence,
    max_abs_err,
    mse,
    relative_error,
    sqnr_db,
    top1_agreement,
)
from engine.quant.observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
)
from engine.quant.primitives import QParams, QTensor, choose_qparams, dequantize, fake_quantize, quantize
from engine.quant.schemes import QuantScheme, bits_per_weight
from engine.runtime.kv_cache import KVCacheConfig, make_kv_cache
from engine.sizing.estimate import MemoryBreakdown, estimate

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
