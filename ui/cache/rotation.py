"""Cached engine calls for the Outliers page's "Rotation" tab (QuaRot): rotate a float copy of the model,
measure its outliers before and after, and score quantized copies with and without the rotation.

The rotated float copy is a variant (ui/cache/variants.py: built once with a progress bar, shared by every
session, a few kept at once); what was measured on it, and the comparison rows, belong to one session in
`RotationSession`, for the model selected now (another model starts empty), so reruns are instant. Each
quantized copy of the comparison is scored and dropped (the pattern of ui/cache/planner.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import streamlit as st
import torch

from engine.analysis.rotation_stats import RotationStats, rotation_stats
from engine.evaluation.evalset import DEFAULT_EVAL_SET
from engine.evaluation.perplexity import ReferenceCache, evaluate_against_reference
from engine.methods import GPTQConfig, RotationConfig, quantize_model
from engine.methods.calibration import scaled
from engine.methods.rotation import check_rotatable
from engine.methods.rtn import RTNConfig
from engine.methods.smoothquant import SmoothQuantConfig, fold_tolerance
from engine.models.data import WindowSpec, load_text, token_windows
from engine.quant.linear import FakeQuantLinear
from engine.quant.metrics import relative_error
from engine.quant.schemes import QuantScheme
from engine.recipes import get
from ui import state
from ui.cache.variants import variant

KEY = "outliers_rotation_session"  # session key: RotationSession
STATS_WINDOWS = WindowSpec(window=128, count=2)  # calibration windows the before / after statistics run on
SETTINGS = ("W4A4", "W4A8", "W8A8", "KV4")  # catalog recipes (engine.recipes) the comparison quantizes with
SMOOTHQUANT_ALPHA = 0.5


@dataclass(frozen=True)
class RotationRun:
    """What rotating the float model did: its cost, that it computes the same function, its outliers."""

    seconds: float  # fold + rotate (the method's own time, its logits check included)
    total_seconds: float  # with the copy of the model
    note: str | None  # why a matrix is not the kind asked for (no Hadamard of that order), or None
    logit_change: float  # ‖logits(rotated) - logits(original)‖ / ‖logits(original)‖ on the first window
    tolerance: float  # what rounding alone may cause in the model's dtype
    probe_tokens: int  # tokens the logits were compared on
    stats: RotationStats  # per-layer outliers before / after on STATS_WINDOWS


@dataclass(frozen=True)
class Candidate:
    """One row of the comparison: which model to start from, how to quantize it, which KV cache."""

    setting: str  # a name of SETTINGS
    method: str  # in the UI's words; the same four names in every setting, so the chart groups them
    rotated: bool  # start from the rotated float copy (else the model as loaded)
    config: object | None  # the method config applied to that model (None: its weights stay float)
    calibrated: bool  # whether the config needs calibration windows
    activations: QuantScheme | None = None  # per-token activations set after quantizing (GPTQ has none)
    kv: object | None = None  # KV-cache config for the evaluation (the KV settings)


@dataclass(frozen=True)
class Row:
    setting: str
    method: str
    perplexity: float
    mean_kl: float
    reference_perplexity: float
    seconds: float  # to quantize (0 where nothing was quantized)


@dataclass
class RotationSession:
    model: tuple  # the model selection these results belong to
    runs: dict[RotationConfig, RotationRun] = field(default_factory=dict)
    references: dict[tuple[int, int], ReferenceCache] = field(default_factory=dict)  # (windows, tokens)
    rows: dict[tuple, dict[tuple[str, str], Row]] = field(default_factory=dict)  # comparison_key -> rows


def session() -> RotationSession:
    model = state.selection()
    current = st.session_state.get(KEY)
    if current is None or current.model != model:
        current = st.session_state[KEY] = RotationSession(model)
    return current


def check(loaded) -> None:
    """ValueError with the engine's reason when this model cannot be folded and rotated (cheap)."""
    check_rotatable(loaded.model)


def _text() -> str:
    return load_text(DEFAULT_EVAL_SET.corpus)


def stats_windows(loaded) -> torch.Tensor:
    return token_windows(loaded.tokenizer, _text(), STATS_WINDOWS)


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids.to(next(model.parameters()).device), use_cache=False).logits.float()


def run(config: RotationConfig) -> RotationRun | None:
    return session().runs.get(config)


def rotate(loaded, config: RotationConfig, where=st) -> RotationRun:
    """Rotate a copy of the model (a progress bar), check its logits and measure its outliers, once per
    session and config. ValueError with the reason when the model cannot be rotated."""
    held = session()
    if config in held.runs:
        return held.runs[config]
    rotated = variant(loaded, config, where)
    windows = stats_windows(loaded)
    with where.spinner("Comparing the logits and measuring the outliers before and after"):
        change = relative_error(_logits(loaded.model, windows[:1]), _logits(rotated.model, windows[:1]))
        stats = rotation_stats(loaded.model, rotated.model, windows)
    notes = [r.detail.note for r in rotated.layers if getattr(r.detail, "note", None)]
    result = RotationRun(
        seconds=sum(r.seconds for r in rotated.layers),
        total_seconds=rotated.seconds,
        note=notes[0] if notes else None,
        logit_change=change,
        tolerance=fold_tolerance(next(loaded.model.parameters()).dtype),
        probe_tokens=int(windows.shape[1]),
        stats=stats,
    )
    held.runs[config] = result
    return result


# -- the comparison ----------------------------------------------------------------------------------------


def candidates(loaded, settings: list[str], gptq: bool) -> list[Candidate]:
    """The rows for `settings`: plain RTN, SmoothQuant and rotation + RTN (and rotation + GPTQ) for the
    W<b>A<a> recipes; the float model and its rotated copy with the KV cache quantized for the KV ones."""
    rows = []
    for name in settings:
        recipe = get(name).for_module(loaded.model)
        method = recipe.method
        if isinstance(method, RTNConfig) and method.activations is not None:
            bits = (method.weights.bits, method.activations.bits)
            rows += [
                Candidate(name, "plain rounding (RTN)", False, method, False),
                Candidate(name, "SmoothQuant", False, SmoothQuantConfig(SMOOTHQUANT_ALPHA, *bits), True),
                Candidate(name, "rotation + RTN", True, method, False),
            ]
            if gptq:
                rows.append(
                    Candidate(
                        name, "rotation + GPTQ", True, GPTQConfig(method.weights), True, method.activations
                    )
                )
        elif recipe.kv is not None:
            rows += [
                Candidate(name, "plain rounding (RTN)", False, None, False, kv=recipe.kv),
                Candidate(name, "rotation + RTN", True, None, False, kv=recipe.kv),
            ]
        else:
            raise ValueError(f"{name} quantizes neither activations nor the KV cache: nothing to compare")
    return rows


def comparison_key(config: RotationConfig, windows: int, tokens: int) -> tuple:
    return (config, windows, tokens)


def rows(key: tuple) -> dict[tuple[str, str], Row]:
    """The rows scored so far for `key` (kept in the session; the caller may add to them)."""
    return session().rows.setdefault(key, {})


def _reference(held: RotationSession, model, windows: int, tokens: int) -> ReferenceCache:
    """The session's reference cache for these windows, new when the model was loaded again."""
    cache = held.references.get((windows, tokens))
    if cache is None or cache.reference_id not in (None, id(model)):
        cache = held.references[(windows, tokens)] = ReferenceCache()
    return cache


def _with_activations(model, scheme: QuantScheme):
    """Per-token activation rounding on every quantized linear (GPTQ rounds the weights only)."""
    for module in model.modules():
        if isinstance(module, FakeQuantLinear):
            module.act_scheme = scheme
    return model


def score(loaded, config: RotationConfig, candidate: Candidate, windows: int, tokens: int, progress=None) -> Row:  # fmt: skip
    """Quantize a copy for `candidate` and score it against the float model on `windows` x `tokens` of
    the held-out text (DataError, ValueError with the reason); the copy is dropped, the row kept."""
    held = session()
    text = _text()
    evaluation = token_windows(loaded.tokenizer, text, WindowSpec(tokens, windows, split="evaluation"))
    model = variant(loaded, config).model if candidate.rotated else loaded.model
    start = time.perf_counter()
    if candidate.config is not None:
        calib = token_windows(loaded.tokenizer, text, WindowSpec(tokens, windows)) if candidate.calibrated else None  # fmt: skip
        model = quantize_model(model, candidate.config, calib=calib, progress=scaled(progress, 0, 0.7)).model
        if candidate.activations is not None:
            _with_activations(model, candidate.activations)
    seconds = time.perf_counter() - start if candidate.config is not None else 0.0
    result = evaluate_against_reference(
        loaded.model,
        model,
        evaluation,
        _reference(held, loaded.model, windows, tokens),
        kv_scheme=candidate.kv,
        progress=scaled(progress, 0.7, 1.0),
    )
    row = Row(
        candidate.setting,
        candidate.method,
        result.candidate.perplexity,
        result.agreement.mean_kl,
        result.reference.perplexity,
        seconds,
    )
    rows(comparison_key(config, windows, tokens))[(candidate.setting, candidate.method)] = row
    return row
