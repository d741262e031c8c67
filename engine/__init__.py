"""Quantization Explorer engine: pure PyTorch, no Streamlit, no printing; long work reports progress
through `progress(fraction, message)` callbacks (`engine._types.Progress`).

Read the packages in this order, each `__init__` giving its own reading order:
quant (schemes, formats, primitives) -> methods (the registry and one file per method) -> kernels (packed
layouts and the dispatch table) -> models (sources, loading, data) -> runtime (generation, decode, KV cache)
-> analysis (statistics, outliers) -> evaluation (perplexity, the study grid) -> sizing (memory from a
config) -> speed (measured kernels and decode) -> lessons (the Learn page). `recipes` names the configurations
every page offers; `hooks` and `_types` are the shared plumbing.

The names below are the public API; subpackages hold the rest. They load on first use (PEP 562
`__getattr__`): importing `engine`, or any submodule, runs no other module of ours. An eager import of
every submodule here made the package's first import hold its import lock while it loaded the whole
engine, so two threads importing at once (Streamlit runs each session in its own thread) could deadlock
between this package and a submodule, and one of them saw a half-initialized module.
"""

from importlib import import_module

_PUBLIC = {  # public name -> the module that defines it
    "bits_per_weight": "engine.quant.schemes",
    "choose_qparams": "engine.quant.primitives",
    "dequantize": "engine.quant.primitives",
    "describe": "engine.models.loading",
    "detect_prior_grid": "engine.analysis.priorgrid",
    "error_summary": "engine.quant.metrics",
    "estimate": "engine.sizing.estimate",
    "evaluate_against_reference": "engine.evaluation.perplexity",
    "fake_quantize": "engine.quant.primitives",
    "kl_divergence": "engine.quant.metrics",
    "kl_to_reference": "engine.evaluation.perplexity",
    "KVCacheConfig": "engine.runtime.kv_cache",
    "load_model": "engine.models.loading",
    "LoadedModel": "engine.models.loading",
    "make_kv_cache": "engine.runtime.kv_cache",
    "max_abs_err": "engine.quant.metrics",
    "MemoryBreakdown": "engine.sizing.estimate",
    "MinMaxObserver": "engine.quant.observers",
    "ModelSource": "engine.models.sources",
    "ModelSourceError": "engine.models.sources",
    "MovingAverageMinMaxObserver": "engine.quant.observers",
    "mse": "engine.quant.metrics",
    "MSEObserver": "engine.quant.observers",
    "PercentileObserver": "engine.quant.observers",
    "perplexity": "engine.evaluation.perplexity",
    "PriorGrid": "engine.analysis.priorgrid",
    "QParams": "engine.quant.primitives",
    "QTensor": "engine.quant.primitives",
    "quantize": "engine.quant.primitives",
    "quantize_model": "engine.methods",
    "QuantScheme": "engine.quant.schemes",
    "relative_error": "engine.quant.metrics",
    "RTNConfig": "engine.methods",
    "run_grid": "engine.evaluation.study",
    "sqnr_db": "engine.quant.metrics",
    "top1_agreement": "engine.quant.metrics",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    """Import the public name's module on first use and keep the name here."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
