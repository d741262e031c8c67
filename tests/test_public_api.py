"""Every name importable from `engine` before the architecture change still is (and means a real object)."""

import engine

PUBLIC = [
    "KVCacheConfig",
    "LoadedModel",
    "MSEObserver",
    "MemoryBreakdown",
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
    "detect_prior_grid",
    "error_summary",
    "estimate",
    "evaluate_against_reference",
    "fake_quantize",
    "kl_divergence",
    "kl_to_reference",
    "load_model",
    "make_kv_cache",
    "max_abs_err",
    "mse",
    "perplexity",
    "quantize",
    "quantize_model",
    "relative_error",
    "run_grid",
    "sqnr_db",
    "top1_agreement",
]


def test_every_public_name_is_still_exported():
    missing = [name for name in PUBLIC if not hasattr(engine, name)]
    assert missing == []
    assert set(PUBLIC) <= set(engine.__all__)
