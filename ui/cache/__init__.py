"""Every cached engine call lives in this package (DESIGN rule 3); pages reach them as `cache.<name>`.

- registry.py: `LruRegistry`, the thread-safe LRU (with `get`) behind every process-wide cache;
- models.py: the reference models, loaded once with a progress bar and shared by every session;
- tensors.py: the Quantization grid page's tensors and scheme table; grid_formats.py its block view for
  any format (our schemes and GGUF block types), a GGUF block's bytes and a microscaling scheme's scales;
- outliers.py, lessons.py, variants.py: the Outliers page's statistics, the Learn page's experiments,
  and quantized variants of the loaded model (Compare, Evaluate, Methods lab, Speed);
- session_models.py: `BudgetedStore`, the Methods lab's per-session quantized models within one
  server-wide memory budget (least recently used freed first, across sessions).

Cached objects are shared by every browser session (session_models' belong to one) and never mutated;
work that reports progress runs outside `st.cache_*` functions so it can drive a live progress bar.
"""

from ui.cache.models import (
    MAX_MODELS,
    current_model,
    current_model_or_stop,
    load,
    models,
    summary,
)
from ui.cache.registry import LruRegistry
from ui.cache.tensors import (
    ActivationKey,
    SyntheticKey,
    WeightKey,
    prior_grid,
    scheme_table,
    tensor,
    tensor_shape,
    weight_list,
)

__all__ = [
    "MAX_MODELS",
    "ActivationKey",
    "LruRegistry",
    "SyntheticKey",
    "WeightKey",
    "current_model",
    "current_model_or_stop",
    "load",
    "models",
    "prior_grid",
    "scheme_table",
    "summary",
    "tensor",
    "tensor_shape",
    "weight_list",
]
