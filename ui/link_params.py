"""What each page puts in its URL (issue 21): the widget keys, their types and the values they may take.

A URL parameter's name is the widget's session-state key (`?memory_context=32768&memory_engine=vllm`),
except the shared ones in `SHARED`. Each type turns URL text into a widget value (`parse`, raising
ValueError with a short reason a user can read) and back (`encode`). Options that depend on the loaded
model or on a catalog are callables, evaluated only when a link names that parameter. `ui.links` reads,
checks and writes the URL from these declarations; pages never read `st.query_params` themselves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.analysis.outliers import ACTIVATION_STATISTICS
from engine.models.data import CORPORA
from engine.models.sources import ModelSource, allowed_roots
from engine.quant.gguf import GGUF_TYPES, GGUFType
from engine.quant.schemes import QuantScheme, parse_label
from ui.pages.memory_recipes import SAME as SAME_LAYOUT
from ui.tour import STEPS as TOUR_STEPS

MAX_CHARS = 200  # longer values are refused whatever their type (prompts and uploads never go in a URL)
NO_DEFAULT = object()  # a parameter written whatever its value


def _shown(options: Sequence[str], most: int = 6) -> str:
    listed = ", ".join(options[:most])
    return listed + (", …" if len(options) > most else "")


@dataclass(frozen=True)
class Choice:
    """One of `options` (a sequence, or a callable returning one: catalog models, GPUs, the loaded model's
    weights), written as `to_text(option)`, a stable id such as a name or slug."""

    options: Sequence | Callable[[], Sequence]
    to_text: Callable[[Any], str] = str

    def choices(self) -> list:
        return list(self.options() if callable(self.options) else self.options)

    def parse(self, text: str):
        options = self.choices()
        for option in options:
            if self.to_text(option) == text:
                return option
        raise ValueError(f"not one of the choices: {_shown([self.to_text(o) for o in options])}")

    def encode(self, value) -> str:
        return self.to_text(value)


@dataclass(frozen=True)
class Choices(Choice):
    """Several of `options` (a multiselect), comma-separated in the URL."""

    def parse(self, text: str) -> list:
        items = [item for item in text.split(",") if item]
        return list(dict.fromkeys(Choice.parse(self, item) for item in items))

    def encode(self, value) -> str:
        return ",".join(self.to_text(option) for option in value)


@dataclass(frozen=True)
class IntRange:
    """A whole number from `lo` to `hi` (a number box or a slider)."""

    lo: int
    hi: int

    def parse(self, text: str) -> int:
        if not re.fullmatch(r"[+-]?\d{1,12}", text.strip()):
            raise ValueError("not a whole number")
        number = int(text)
        if not self.lo <= number <= self.hi:
            raise ValueError(f"must be from {self.lo:,} to {self.hi:,}")
        return number

    def encode(self, value) -> str:
        return str(int(value))


@dataclass(frozen=True)
class FloatRange:
    """A number from `lo` to `hi`."""

    lo: float
    hi: float

    def parse(self, text: str) -> float:
        try:
            number = float(text)
        except ValueError:
            raise ValueError("not a number") from None
        if not math.isfinite(number) or not self.lo <= number <= self.hi:
            raise ValueError(f"must be from {self.lo:g} to {self.hi:g}")
        return number

    def encode(self, value) -> str:
        return f"{float(value):g}"


@dataclass(frozen=True)
class Flag:
    """On or off: 1 / 0 (true / false are read too)."""

    def parse(self, text: str) -> bool:
        words = {"1": True, "true": True, "0": False, "false": False}
        if text.lower() not in words:
            raise ValueError("must be 1 or 0")
        return words[text.lower()]

    def encode(self, value) -> str:
        return "1" if value else "0"


@dataclass(frozen=True)
class Text:
    """Free text of at most `max_len` characters matching `pattern` (a module name, a page name)."""

    max_len: int = 80
    pattern: str = r"[\w .:+\-/()×]*"

    def parse(self, text: str) -> str:
        if len(text) > self.max_len:
            raise ValueError(f"longer than {self.max_len} characters")
        if not re.fullmatch(self.pattern, text):
            raise ValueError("has characters this parameter does not take")
        return text

    def encode(self, value) -> str:
        return str(value)


@dataclass(frozen=True)
class SchemeLabel:
    """The sidebar's scheme: a label such as "int4 g64" or "nvfp4", or a llama.cpp type ("Q4_K")."""

    def parse(self, text: str) -> QuantScheme | GGUFType:
        if text in GGUF_TYPES:
            return GGUF_TYPES[text]
        try:
            return parse_label(text)
        except ValueError as exc:
            raise ValueError(f"not a scheme ({str(exc).split(';')[0]})") from None

    def encode(self, value) -> str:
        return value.name if isinstance(value, GGUFType) else value.label


@dataclass(frozen=True)
class ModelFolder:
    """The sidebar's model: "default", or a folder (or .gguf file) under the server's QE_MODEL_ROOTS (an
    absolute path, or one relative to the first root). Only fills the sidebar's fields: never loads."""

    def parse(self, text: str) -> ModelSource:
        if text == "default":
            return ModelSource()
        roots = allowed_roots()
        if not roots:
            raise ValueError("this server takes no model paths from links (QE_MODEL_ROOTS is not set)")
        if "\x00" in text or ".." in Path(text).parts or not text.strip():
            raise ValueError("not a plain path under the allowed folders")
        path = Path(text) if Path(text).is_absolute() else roots[0] / text
        resolved = path.resolve()
        if not any(resolved == root or root in resolved.parents for root in roots):
            raise ValueError("outside the folders this server allows models from")
        kind = "gguf" if path.suffix.lower() == ".gguf" else "folder"
        return ModelSource(kind, str(path))

    def encode(self, value: ModelSource) -> str:
        return "default" if value.kind == "default" else value.location


@dataclass(frozen=True)
class Param:
    """One URL parameter: the widget's session-state key, its type, and the page's default for the widget
    (a value, or its URL text for an object option; not written to the URL; `NO_DEFAULT`: always written)."""

    key: str
    kind: Any
    default: Any = field(default=NO_DEFAULT)


# -- options known only at run time (called only when a link names the parameter) --------------------


def _weights():
    from ui import cache

    return cache.weight_list()


def _grid_layers() -> list[str]:
    layers = sorted({w.layer for w in _weights() if w.layer is not None})
    return ["embeddings / head"] + [f"layer {index}" for index in layers]


def _model_layers() -> range:
    from ui import cache

    return range(cache.current_model().model.config.num_hidden_layers)


def _catalog():
    from engine.sizing.catalog import catalog_models

    return catalog_models()


def _slug(model) -> str:
    return model if isinstance(model, str) else model.slug


def _name(gpu) -> str:
    return gpu if isinstance(gpu, str) else gpu.name


def _gpus():
    from engine.sizing.gpus import all_devices

    return all_devices()


def _weight_presets():
    from engine.sizing.presets import PRESETS

    return list(PRESETS)


def _kv_formats():
    from engine.sizing.estimate import KV_FORMATS

    return list(KV_FORMATS)


def _recipe_choices():
    from engine.sizing.checkpoints import CHECKPOINT_RECIPES
    from ui.pages.memory_recipes import CUSTOM, SAME

    return [SAME, *CHECKPOINT_RECIPES, CUSTOM]


def _engines():
    from engine.sizing.engines import ENGINES

    return list(ENGINES)


def _methods():
    from ui.pages.methods import METHODS

    return METHODS


def _compare_variants():
    from ui import cache
    from ui.pages.compare_variants import variant_options

    return list(variant_options(cache.current_model())[0])


def _candidate_sets():
    from ui.pages.planner import CANDIDATE_SETS

    return list(CANDIDATE_SETS)


def _speed_variants():  # the catalog's variants on this device (Methods-lab runs are per session: not linked)
    from engine.speed.variants import available_variants
    from ui import state

    return available_variants(state.selection()[1])


def _evaluate_cells():  # the Evaluate page's pickable cells (pages/evaluate.py's PICKABLE), by name
    from engine import recipes
    from engine.evaluation.study import FORMATS_GRID, FULL_GRID

    cells = (*FULL_GRID, *FORMATS_GRID, *recipes.on_axis("formats", "gguf"))
    return list(dict.fromkeys(cell.name for cell in cells))


def _speed_loops():
    from engine.speed import LOOPS

    return list(LOOPS)


def _speed_formats():
    from engine.speed.variants import available_formats
    from ui import state

    return available_formats(state.selection()[1])


def _weight_statistics():
    from engine.analysis.weight_stats import WEIGHT_STATISTICS

    return WEIGHT_STATISTICS


CORPUS_CHOICES = [*CORPORA, "upload"]
MODULE_NAME = Text(64, r"[A-Za-z0-9_.]+")
LABEL = Text(80)
BATCH_SIZES = (1, 4, 16, 64, 256)  # engine.speed.microbench.BATCH_SIZES

# the shared parameters: the sidebar's scheme and model, and those read by ui.presenter / click-through
SCHEME = "scheme"
MODEL = "model"
SHARED = {
    SCHEME: SchemeLabel(),
    MODEL: ModelFolder(),
    "present": Flag(),
    "tour": IntRange(1, len(TOUR_STEPS)),
    "from": Text(80),
}

PAGE_PARAMS: dict[str, tuple[Param, ...]] = {
    "Overview": (),
    "Quantization grid": (
        Param("grid_source", Choice(("Model weight", "Activation", "Synthetic")), "Model weight"),
        Param("grid_layer", Choice(_grid_layers)),
        Param("grid_weight", Choice(_weights, to_text=lambda w: w.name)),
        Param("grid_row", IntRange(0, 1_000_000), 0),
        Param("grid_block", IntRange(0, 1_000_000), 0),
        Param("grid_act_layer", IntRange(0, 1024)),
        Param("grid_act_site", LABEL),
        Param("grid_syn_kind", LABEL),
        Param("grid_syn_rows", IntRange(1, 1024), 64),
        Param("grid_syn_cols", IntRange(8, 4096), 512),
        Param("grid_syn_outliers", IntRange(0, 64), 1),
        Param("grid_syn_magnitude", FloatRange(2.0, 100.0), 20.0),
        Param("grid_syn_seed", IntRange(0, 10_000), 0),
        Param("grid_scales_of", Choice(("Whole tensor", "This row")), "Whole tensor"),
    ),
    "Outliers": (
        Param("outliers_tab", LABEL, "Weights"),
        Param("outliers_corpus", Choice(CORPUS_CHOICES), CORPUS_CHOICES[0]),
        Param("outliers_windows", IntRange(1, 32), 8),
        Param("outliers_window", Choice((64, 128, 256, 512, 1024)), 256),
        Param("outliers_threshold", FloatRange(0.5, 100_000.0), 6.0),
        Param("outliers_w_stat", Choice(_weight_statistics)),
        Param("outliers_w_layer", Choice(_model_layers)),
        Param("outliers_w_module", MODULE_NAME),
        Param("outliers_a_layer", Choice(_model_layers)),
        Param("outliers_a_site", LABEL),
        Param("outliers_a_stat", Choice(ACTIVATION_STATISTICS), ACTIVATION_STATISTICS[0]),
        Param("outliers_a_view", Choice(("Heatmap", "3-D surface")), "Heatmap"),
        Param("outliers_kv_layer", Choice(_model_layers)),
    ),
    "Methods lab": (
        Param("methods_pick", Choices(_methods)),
        Param("methods_bits", Choice((2, 3, 4, 8)), 4),
        Param("methods_group", Choice((32, 64, 128))),
        Param("methods_calib_windows", IntRange(1, 128), 8),
        Param("methods_calib_tokens", Choice((128, 256, 512)), 256),
    ),
    "Plan a recipe": (
        Param("planner_candidates", Choice(_candidate_sets)),
        Param("planner_windows", Choice((1, 2, 4)), 1),
        Param("planner_tokens", Choice((64, 128, 256)), 128),
        Param("planner_scope", Choice(("every layer", "last 4 (quick look)")), "every layer"),
        Param("planner_budget", FloatRange(0.0, 32.0)),
        Param("planner_eval_windows", Choice((1, 2, 4)), 2),
    ),
    "Compare generations": (
        Param("compare_variants", Choices(_compare_variants)),
        Param("compare_max_new_tokens", IntRange(1, 256), 48),
        Param("compare_temperature", FloatRange(0.0, 2.0), 0.0),
        Param("compare_top_p", FloatRange(0.05, 1.0), 1.0),
        Param("compare_seed", IntRange(0, 2**31 - 1), 0),
        Param("compare_chat", Flag(), True),
    ),
    "Evaluate": (
        Param("evaluate_corpus", Choice(CORPUS_CHOICES)),
        Param("evaluate_grid", LABEL),
        Param("evaluate_windows", IntRange(1, 16)),
        Param("evaluate_cells", Choices(_evaluate_cells)),
        Param("evaluate_window", Choice((128, 256, 512))),
    ),
    "Memory sizing": (
        Param("memory_source", Choice(("Catalog", "Loaded model")), "Catalog"),  # never an upload or Hub id
        Param("memory_catalog", Choice(_catalog, to_text=_slug), "llama-3.1-8b"),
        Param("memory_formats", Choices(_weight_presets), ["bf16", "int8", "int4-g128", "nf4"]),
        Param("memory_add_sidebar", Flag(), False),
        Param("memory_kv", Choice(_kv_formats), "fp16"),
        Param("memory_kv_values", Choice(lambda: [None, *_kv_formats()]), None),
        Param("memory_prefill", Choice((None, 8192, 2048, 512)), None),
        Param("memory_attention", Choice(("sdpa", "eager")), "sdpa"),
        Param("memory_engine", Choice(_engines), "transformers"),
        Param(
            "memory_context", Choice((512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)), 8192
        ),
        Param("memory_batch", IntRange(1, 4096), 1),
        Param("memory_gpu", Choice(_gpus, to_text=_name), "NVIDIA H100 80GB SXM"),
        Param("memory_recipe_choice", Choice(_recipe_choices), SAME_LAYOUT),
        Param("memory_tab", LABEL, "Context sweep"),
    ),
    "Speed": (
        Param("speed_shape_source", Choice(("Loaded model", "Llama-2-7B shapes")), "Loaded model"),
        Param("speed_batches", Choices(BATCH_SIZES), list(BATCH_SIZES)),
        Param("speed_formats", Choices(_speed_formats)),
        Param("speed_repeats", IntRange(3, 200)),
        Param("speed_variants", Choices(_speed_variants)),
        Param("speed_loops", Choices(_speed_loops)),
        Param("speed_prompt_tokens", IntRange(1, 2048)),
        Param("speed_new_tokens", IntRange(2, 1024)),
    ),
    "Learn": (
        Param("learn_tab", LABEL, "Linear vs quantile grids"),
        Param("learn_map_block", Choice((16, 32, 64, 128, 256, 1024)), 64),
        Param("learn_sym_bits", Choice((2, 3, 4, 5, 6, 7, 8)), 4),
        Param("learn_gran_outliers", IntRange(0, 32), 4),
    ),
}

# the path of each page in the app's URL (st.Page's default: the file name; the default page is the root)
PAGE_PATHS = {
    "Overview": "",
    "Quantization grid": "grid",
    "Outliers": "outliers",
    "Methods lab": "methods",
    "Plan a recipe": "planner",
    "Compare generations": "compare",
    "Evaluate": "evaluate",
    "Memory sizing": "memory",
    "Speed": "speed",
    "Learn": "learn",
}
