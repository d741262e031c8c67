"""Measured speed on this device: linear-layer microbenchmarks and end-to-end decode beside its roofline.

Read in order:
- timing.py: kernel time (a CUDA-graph replay on a GPU) and call time (what a forward pays) of an
  operation, and the older median wall time of a call;
- variants.py: what is timed, as recipes (engine.recipes), and the tables that build one layer or a
  whole model for each (float recasts, packed QuantLinear, bitsandbytes layers, Methods-lab copies);
- microbench.py: one linear layer per format at several batch sizes (KernelTiming);
- bandwidth.py: a measured copy bandwidth and the bytes a model stores and a decode step reads;
- decode_bench.py: prefill and decode through several decode loops, beside the roofline (DecodeTiming);
- sweep.py: rounds over context lengths x new tokens, as AutoAWQ's benchmark reports a model: prefill and
  decode times and tokens/s, and the weights and KV cache measured beside our memory estimate;
- synthetic.py: any catalog config with random weights, and a one-character-per-token tokenizer;
- roofline.py: the Learn page's idealised roofline (a model, not a measurement).

The names below are re-exported so callers write `from engine import speed; speed.microbenchmark(...)`.
Tests that patch a function patch it in the module that looks it up (free memory: engine._types).
"""

from engine.speed.bandwidth import (
    _bnb_side_bytes,
    float_dtype,
    measure_bandwidth,
    model_weight_bytes,
    weight_read_bytes,
)
from engine.speed.decode_bench import (
    COMPILED_LOOP,
    DYNAMIC_LOOP,
    HF_LOOP,
    LOOPS,
    STATIC_LOOP,
    DecodeTiming,
    decode_benchmark,
    decode_comparison,
    prompt_of_length,
)
from engine.speed.microbench import (
    BATCH_SIZES,
    LLAMA_2_7B_SHAPES,
    KernelTiming,
    LinearShape,
    microbenchmark,
    model_linear_shapes,
    output_head_shape,
)
from engine.speed.synthetic import DTYPE_NAMES, SyntheticTokenizer, synthetic_model
from engine.speed.timing import KernelAndCall, median_seconds, two_figures
from engine.speed.variants import (
    BNB_FORMATS,
    DTYPES,
    FORMATS,
    VARIANTS,
    _is_bnb,
    _nbytes,
    available_formats,
    available_variants,
    baseline_format,
    bnb_installed,
    build_variant,
    format_recipe,
    int4_scheme,
    layer_for,
    pack_output_head,
    runnable_copy,
    runnable_refusal,
    variant_recipe,
)

__all__ = [
    "BATCH_SIZES",
    "BNB_FORMATS",
    "COMPILED_LOOP",
    "DTYPES",
    "DTYPE_NAMES",
    "DYNAMIC_LOOP",
    "FORMATS",
    "HF_LOOP",
    "LLAMA_2_7B_SHAPES",
    "LOOPS",
    "STATIC_LOOP",
    "VARIANTS",
    "DecodeTiming",
    "KernelAndCall",
    "KernelTiming",
    "LinearShape",
    "SyntheticTokenizer",
    "_bnb_side_bytes",
    "_is_bnb",
    "_nbytes",
    "available_formats",
    "available_variants",
    "baseline_format",
    "bnb_installed",
    "build_variant",
    "decode_benchmark",
    "decode_comparison",
    "float_dtype",
    "format_recipe",
    "int4_scheme",
    "layer_for",
    "measure_bandwidth",
    "median_seconds",
    "microbenchmark",
    "model_linear_shapes",
    "model_weight_bytes",
    "output_head_shape",
    "pack_output_head",
    "prompt_of_length",
    "runnable_copy",
    "runnable_refusal",
    "synthetic_model",
    "two_figures",
    "variant_recipe",
    "weight_read_bytes",
]
