"""Helpers for the Compare page: quick variants (catalog recipes), one comparison in session state, drawing.

A comparison is a `CompareRun` kept in `st.session_state`: one `ColumnRun` per model (the reference
first), filled in place while tokens stream, so a rerun (a checkbox, or the Stop button interrupting the
run) redraws the same results without generating again. Tokens are drawn as HTML spans: from the first
token where a column departs from the reference on they are highlighted, and each span's `title=` tooltip
holds the token's probability under both models and the per-token KL (`engine.evaluation.token_compare`).

Generation, its memory measurement (what the format takes packed beside what this process holds, since
variants are fake-quantized; the CUDA allocator's peak) and the scoring run in the engine
(`engine.runtime.measured.generate_measured`, `engine.evaluation.token_compare.score_continuation`); this
module only keeps the run in session state and draws it. Each variant's figures on this one prompt are
drawn beside the Evaluate page's corpus figures for the same catalog recipe, when that page has scored it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import streamlit as st

from engine import recipes
from engine.evaluation.study import MODEL_GRID, CellResult
from engine.evaluation.token_compare import (
    TokenComparison,
    TokenStat,
    agreement,
    first_divergence,
    score_continuation,
    token_pieces,
)
from engine.methods import QuantizedModel, RTNConfig
from engine.methods.gguf import GGUFConfig
from engine.quant.gguf import GGUFType
from engine.quant.schemes import QuantScheme
from engine.recipes import Recipe
from engine.runtime.generation import GenerationResult, GenerationSettings, encode_prompt, max_context
from engine.runtime.kv_cache import KVCacheConfig
from engine.runtime.measured import MemoryUse, generate_measured
from ui.pages import evaluate as evaluate_view
from ui.pages.compare_figures import (
    RECONCILE_HELP,
    corpus_figure,
    memory_help,
    memory_line,
    mib,
    probability,
    prompt_vs_corpus,
)

KL_FULL_SHADE = 1.0  # nats: a token's KL at which its underline is fully opaque
DIVERGED_BG = "rgba(255, 164, 33, 0.28)"  # tokens after the first divergence
FIRST_DIVERGED_BG = "rgba(255, 75, 75, 0.40)"  # the first token that differs from the reference
SPAN_STYLE = "border-radius:3px;padding:1px 0;cursor:help;"
BOX_STYLE = (
    "white-space:pre-wrap;word-break:break-word;line-height:1.7;font-size:0.95rem;"
    "padding:0.5rem 0.6rem;border-radius:0.5rem;background:rgba(128,128,128,0.06);min-height:3rem;"
)


# -- variants ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantSpec:
    key: (
        str  # a catalog name ("W8", "KV4"), "sidebar" or "lab:...": survives a model change, unlike the label
    )
    label: str  # the column header
    method: (
        object | None
    )  # a method config (a recipe's, the sidebar's RTN, a lab's); None: the reference's weights
    kv: KVCacheConfig | None = None  # None: the model's usual 16-bit cache


QUICK_RECIPES = (  # catalog names
    *("W8", "W4", MODEL_GRID, "Q4_K", "W4 MXFP4", "W4 NVFP4", "W3", "W2"),
    *("W8A8", "W4A4", "W4A4 NVFP4", "KV8", "KV4", "KV2"),
)


def _weights_label(recipe: Recipe) -> str:
    """int8 per-channel, int4 g64, ... (the recipe already sized for the model)."""
    weights = recipe.weights
    grain = f"g{weights.group_size}" if weights.granularity == "group" else "per-channel"
    return f"int{weights.bits} {grain}"


def _label(recipe: Recipe) -> str:
    """The column header of a catalog recipe fitted to the model."""
    if recipe.kv is not None:
        scheme = recipe.kv.scheme  # None when keys and values differ
        if scheme is not None and scheme.format == "int" and scheme.granularity == "channel":
            return f"{recipe.name} cache (int{scheme.bits} per token and head)"
        return f"{recipe.name} cache ({recipe.kv.label})"  # "K fp8_e4m3 channel / V mxfp4"
    if recipe.axis == "gguf":  # W4 Q4_1: name the layout, whose asymmetry and float minimum matter
        return f"{recipe.name} ({recipe.weights.label})" if recipe.weights else f"{recipe.name} (llama.cpp)"
    if recipe.axis == "formats":  # W4 MXFP4 (mxfp4), W4A4 NVFP4 (nvfp4 weights and activations)
        both = " weights and activations" if recipe.method.activations is not None else ""
        return f"{recipe.name} ({recipe.weights.label}{both})"
    if recipe.axis == "weight-activation":
        weights = "int8" if recipe.weights.bits == 8 else _weights_label(recipe)
        activations = recipe.method.activations
        return f"{recipe.name} ({weights} weights, int{activations.bits} per-token activations)"
    return f"{_weights_label(recipe)} ({recipe.name})"


def _method(scheme: QuantScheme | GGUFType):
    """The sidebar's scheme as a method: round to nearest for our schemes, llama.cpp's quantizer (with its
    per-tensor fallback) for a GGUF type."""
    return GGUFConfig(scheme) if isinstance(scheme, GGUFType) else RTNConfig(scheme)


def quick_variants(model, sidebar_scheme: QuantScheme | GGUFType | None) -> dict[str, VariantSpec]:
    """The page's quick recipes from `engine.recipes`, with group sizes that divide every layer of `model`
    (576 wide -> 64; odd widths fall back to one scale per output channel)."""
    specs = []
    for name in QUICK_RECIPES:
        recipe = recipes.get(name).for_module(model)
        specs.append(VariantSpec(name, _label(recipe), recipe.method, recipe.kv))
    if sidebar_scheme is not None:
        specs.append(
            VariantSpec("sidebar", f"sidebar scheme ({sidebar_scheme.label})", _method(sidebar_scheme))
        )
    return {spec.key: spec for spec in specs}


def origin_note(loaded) -> None:
    """The default model's Q4_1 origin in one line (ui.pages.evaluate.origin_note), said for this page."""
    evaluate_view.origin_note(
        loaded,
        f"{MODEL_GRID} reproduces its weights, so that column matches the reference.",
    )


# -- one comparison ------------------------------------------------------------------------------------


@dataclass
class ColumnRun:
    label: str  # header of the column
    spec: VariantSpec | None  # None: the reference
    token_ids: list[int] = field(default_factory=list)  # generated so far (streamed in place)
    text: str = ""
    status: str = "waiting"  # waiting | running | done | stopped | failed
    result: GenerationResult | None = None
    memory: MemoryUse | None = None
    bits_per_weight: float | None = None  # of a weight-quantized variant (its layers' mean)
    pieces: list[str] = field(default_factory=list)  # the text each token adds
    stats: list[TokenStat] | None = None  # teacher-forced scores (variants; None when not scored)
    top1_text: list[str] = field(default_factory=list)  # the reference's top-1 token text per position
    error: BaseException | None = None


@dataclass
class CompareRun:
    model_label: str  # which reference the columns belong to
    prompt: str
    settings: GenerationSettings
    columns: list[ColumnRun]
    finished: bool = False  # False while generating; a rerun finding False means it was interrupted
    interrupted: bool = False
    model_key: tuple = ()  # the reference's cache key (ui.cache.variants.model_key): finds Evaluate's cells

    @property
    def reference(self) -> ColumnRun:
        return self.columns[0]


def check_prompt(tokenizer, model, prompt: str, chat: bool) -> None:
    """Raise GenerationError (empty, too long) before any model runs."""
    encode_prompt(tokenizer, prompt, chat, max_context(model))


def score_column(reference_model, model, tokenizer, prompt: str, chat: bool, column: ColumnRun) -> None:
    """Fill `column.pieces` and, for a variant, its teacher-forced scores against the reference."""
    prompt_ids = encode_prompt(tokenizer, prompt, chat, max_context(reference_model))
    kv = column.spec.kv if column.spec is not None else None
    scored = score_continuation(
        reference_model, model, tokenizer, prompt_ids, column.token_ids, kv, is_reference=column.spec is None
    )
    column.pieces = scored.pieces
    if scored.comparison is not None:
        column.stats, column.top1_text = scored.comparison.tokens, scored.reference_top1_text


# -- drawing -------------------------------------------------------------------------------------------


def _shown(piece: str) -> str:
    """Token text for HTML: escaped, newlines visible, `$` kept away from Markdown's maths."""
    return html.escape(piece).replace("$", "&#36;").replace("\n", "↵<br>")


def _quoted(piece: str) -> str:
    return '"' + piece.replace("\n", "\\n") + '"'


def stream_html(text: str) -> str:
    """What a column shows while its tokens arrive: the text so far and a cursor."""
    return f'<div style="{BOX_STYLE}">{_shown(text)}▌</div>'


def _tooltip(column: ColumnRun, index: int, reference_logprobs: list[float] | None) -> str:
    piece = column.pieces[index] if index < len(column.pieces) else ""
    lines = [f"token {index}: {_quoted(piece)}"]
    if column.stats is not None and index < len(column.stats):
        stat = column.stats[index]
        lines.append(f"p reference {probability(stat.p_reference)} · p variant {probability(stat.p_variant)}")
        lines.append(f"KL(reference ‖ variant) {stat.kl:.4f} nats")
        if stat.reference_top1 != stat.token_id and index < len(column.top1_text):
            lines.append(f"the reference's top-1 here: {_quoted(column.top1_text[index])}")
    elif reference_logprobs is not None and index < len(reference_logprobs):
        lines.append(f"p reference {probability(math.exp(reference_logprobs[index]))}")
    return "\n".join(lines)


def tokens_html(column: ColumnRun, reference_tokens: list[int], shade_kl: bool = False) -> str:
    """The column's tokens as spans: highlighted from the first divergence on, tooltips on hover."""
    diverge = None if column.spec is None else first_divergence(reference_tokens, column.token_ids)
    logprobs = column.result.token_logprobs if column.spec is None and column.result else None
    pieces = column.pieces or [column.text]
    spans = []
    for index, piece in enumerate(pieces):
        if not piece:
            continue  # a token that only starts a multi-byte character
        style = SPAN_STYLE
        if diverge is not None and index >= diverge:
            style += f"background:{FIRST_DIVERGED_BG if index == diverge else DIVERGED_BG};"
            if index == diverge:
                style += "box-shadow:0 0 0 1px rgba(255,75,75,0.9);"
        if shade_kl and column.stats is not None and index < len(column.stats):
            alpha = min(column.stats[index].kl / KL_FULL_SHADE, 1.0)
            style += f"border-bottom:3px solid rgba(220,38,38,{alpha:.2f});"
        tip = html.escape(_tooltip(column, index, logprobs), quote=True).replace("\n", "&#10;")
        spans.append(f'<span title="{tip}" style="{style}">{_shown(piece)}</span>')
    body = "".join(spans) or "<em>(the model stopped immediately)</em>"
    return f'<div style="{BOX_STYLE}">{body}</div>'


def column_metrics(
    column: ColumnRun, reference: ColumnRun, where=st, corpus: CellResult | None = None
) -> None:
    """Agreement, first divergence, speed and memory of one finished (or stopped) column; for a variant,
    this prompt's teacher-forced figures beside Evaluate's corpus figures (`corpus`) for its recipe."""
    is_reference = column.spec is None
    # one line, not two st.metric boxes: four columns at 1280 px cut a metric's label and value to "…"
    if is_reference:
        where.markdown(
            "Agreement **—** · first divergence **—**",
            help="This is the reference: the other columns are compared with it.",
        )
    else:
        share = agreement(reference.token_ids, column.token_ids)
        diverge = first_divergence(reference.token_ids, column.token_ids)
        where.markdown(
            f"Agreement **{share:.0%}** · first divergence **{'none' if diverge is None else f'token {diverge}'}**",
            help="Agreement: the share of the reference's tokens this column reproduced at the same position. "
            "First divergence: the index (from 0) of the first generated token that differs from the reference.",
        )
    lines = []
    result = column.result
    if result is not None:
        lines.append(
            f"**{len(result.token_ids)}** tokens · prefill **{result.prefill_tokens_per_s:,.0f}** tok/s · "
            f"decode **{result.decode_tokens_per_s:,.1f}** tok/s · first token **{result.prefill_seconds * 1000:,.0f}** ms"
        )
    elif column.token_ids:
        lines.append(f"**{len(column.token_ids)}** tokens (stopped before timings were recorded)")
    memory = column.memory
    if memory is not None:
        lines.append(memory_line(memory))
        if memory.cuda_peak_bytes is not None:
            lines.append(f"CUDA allocator peak **{mib(memory.cuda_peak_bytes)}**")
    if column.bits_per_weight is not None:
        lines.append(f"{column.bits_per_weight:.2f} bits per quantized weight")
    if lines:
        where.caption("  \n".join(lines), help=memory_help(column) if memory is not None else None)
    if not is_reference:
        where.caption("  \n".join(prompt_vs_corpus(column, reference, corpus)), help=RECONCILE_HELP)


def prepare_models(run: CompareRun, loaded, build: Callable) -> dict[int, object]:
    """Column index -> the model it runs (a QuantizedModel for a weight variant, so its packed size is
    known); `build(config)` returns a cached QuantizedModel (ui.cache.variants).

    A variant that cannot be built (a group size that does not divide) fails its column, not the page.
    """
    models = {}
    for index, column in enumerate(run.columns):
        spec = column.spec
        if spec is None or spec.method is None:
            models[index] = loaded.model
            continue
        try:
            quantized = build(spec.method)
        except Exception as exc:  # noqa: BLE001  (fails this column only; rerun/stop signals are BaseException)
            column.error, column.status = exc, "failed"
        else:
            models[index], column.bits_per_weight = quantized, quantized.bits_per_weight
    return models


def stream_run(run: CompareRun, models: dict[int, object], loaded, bodies: list, shade_kl: bool) -> None:
    """Generate every column in turn into its `st.empty()` body, then score and draw it."""
    for index, (column, body) in enumerate(zip(run.columns, bodies, strict=True)):
        if column.error is None:
            column.status = "running"
            body.markdown(stream_html(""), unsafe_allow_html=True)

            def on_token(token: int, text: str, column=column, body=body) -> None:
                column.token_ids.append(token)
                column.text = text
                body.markdown(stream_html(text), unsafe_allow_html=True)

            kv = column.spec.kv if column.spec is not None else None
            try:
                column.result, column.memory = generate_measured(
                    models[index], loaded.tokenizer, run.prompt, run.settings, kv, on_token
                )
                column.text, column.status = column.result.text, "done"
                model = models[index]
                model = model.model if isinstance(model, QuantizedModel) else model
                score_column(loaded.model, model, loaded.tokenizer, run.prompt, run.settings.chat, column)
            except Exception as exc:  # noqa: BLE001  (any failure fails this column only; Streamlit's
                column.error, column.status = exc, "failed"  # rerun/stop signals are BaseException)
        with body.container():
            draw_column(column, run, shade_kl)
    run.finished = True


def mark_interrupted(run: CompareRun, tokenizer) -> None:
    """A rerun found `run` unfinished: Stop (or another click) cut it short; keep what it produced."""
    run.finished = run.interrupted = True
    for column in run.columns:
        if column.status == "running":
            column.status = "stopped"
        if column.token_ids and not column.pieces:  # cut off before (or while) it was scored
            column.pieces = token_pieces(tokenizer, column.token_ids)


def draw_column(column: ColumnRun, run: CompareRun, shade_kl: bool, where=st) -> None:
    """A finished, stopped or failed column (the header is drawn by the caller)."""
    from ui.errors import show_error

    if column.error is not None:
        show_error(column.error, where=where)
        return
    if column.status == "waiting":
        where.info("Not generated: the run was stopped first.", icon=":material/stop_circle:")
        return
    reference = run.reference
    where.markdown(tokens_html(column, reference.token_ids, shade_kl), unsafe_allow_html=True)
    if column.status == "stopped":
        where.caption("Stopped: the tokens generated so far.")
    column_metrics(column, reference, where, corpus_figure(run, column))


def summary_rows(run: CompareRun) -> list[dict]:
    """One row per column for the table under the columns."""
    reference = run.reference
    rows = []
    for column in run.columns:
        if column.error is not None or column.status == "waiting":
            continue
        result, memory, stats = column.result, column.memory, column.stats
        diverge = None if column.spec is None else first_divergence(reference.token_ids, column.token_ids)
        rows.append(
            {
                "model": column.label,
                "tokens": len(column.token_ids),
                "prefill tok/s": result.prefill_tokens_per_s if result else None,
                "decode tok/s": result.decode_tokens_per_s if result else None,
                "first token ms": result.prefill_seconds * 1000 if result else None,
                "packed MiB": memory.packed_total / 1024**2 if memory else None,
                "held MiB": memory.total / 1024**2 if memory else None,
                "agreement": agreement(reference.token_ids, column.token_ids),
                "first divergence": "—"
                if column.spec is None
                else ("none" if diverge is None else str(diverge)),
                "mean KL (nats)": 0.0
                if column.spec is None
                else (TokenComparison(stats).mean_kl if stats else None),
            }
        )
    return rows
