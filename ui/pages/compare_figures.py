"""The Compare page's figures beside the tokens: memory (what the format takes packed, and what this process
holds), speed and agreement per column, this prompt's teacher-forced scores beside Evaluate's corpus figure
for the same recipe, and the table under the columns.

`column` and `run` arguments are `ui.pages.compare.ColumnRun`s and `CompareRun`s (not imported: that
module imports this one).
"""

from __future__ import annotations

import streamlit as st

from engine.evaluation.evalset import DEFAULT_EVAL_SET
from engine.evaluation.study import FULL_GRID, CellResult
from engine.evaluation.token_compare import TokenComparison, agreement, first_divergence
from engine.runtime.measured import MemoryUse
from ui.cache import variants

EVALUATE_CELLS = frozenset(cell.name for cell in FULL_GRID)  # catalog recipes the Evaluate grid scores
EVALUATE_LINK = "evaluate"  # the Evaluate page's address
NEAR_TIE = 0.10  # the reference's top-1 leads its second by less than this probability: a near-tie
RECONCILE_HELP = (
    "One prompt is one sample. Greedy decoding always takes the likeliest token, so where the reference's "
    "two likeliest tokens are nearly tied, a small change to the logits picks the other one and the texts "
    "part from there, even while the distributions stay close (a low KL). Evaluate's figure averages every "
    "token of its windows, so it says more about a variant than one prompt does."
)
PACKED_HELP = (
    "What the format takes: quantized layers at their exact bits per weight (scales and zero points "
    "included), the rest at the model's dtype, plus the KV cache (packed when quantized)."
)
HELD_HELP = (
    "What this process holds: the real bytes of the weights and the KV cache after generation. "
    "Fake-quantized weights are held dequantized, as large as the reference's."
)


def mib(n: float) -> str:
    return f"{n / 1024**2:,.1f} MiB"


def _size(n: float) -> str:
    return mib(n) if n >= 1024**2 else f"{n / 1024:,.1f} KiB"


def probability(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def memory_help(column) -> str:
    text = f"**Packed** — {PACKED_HELP}  \n**Held** — {HELD_HELP}"
    if column.memory is not None and column.memory.cuda_peak_bytes is not None:
        text += " The CUDA allocator's peak is its highest use during this generation."
    return text


def memory_line(memory: MemoryUse) -> str:
    """'memory **X packed** (weights .. + KV ..); this process holds **Y** (why)'; one figure when equal."""
    kv_packed = memory.kv_packed_bytes if memory.kv_packed_bytes is not None else memory.kv_bytes
    kv = "" if kv_packed is None else f" + KV {_size(kv_packed)}"
    if not memory.held_exceeds_packed:
        return f"memory **{mib(memory.total)}** packed and held = weights {mib(memory.weight_bytes)}{kv}"
    why = []
    if memory.weight_bytes > memory.packed_weights:
        why.append(f"fake-quantized in {memory.weight_dtype or 'float'}")
    if memory.kv_packed_bytes is not None and memory.kv_bytes and memory.kv_bytes > memory.kv_packed_bytes:
        why.append("KV codes a byte each")
    return (
        f"memory **{mib(memory.packed_total)}** packed (weights {mib(memory.packed_weights)}{kv}); "
        f"this process holds **{mib(memory.total)}** ({', '.join(why)})"
    )


# -- one prompt beside Evaluate's corpus ------------------------------------------------------------------


def evaluate_figure(results: dict, model_key: tuple, cell: str) -> CellResult | None:
    """Evaluate's result for catalog recipe `cell` on this model (`ui.cache.variants.grid_results()`:
    (model key, text, windows, group size) -> {cell: CellResult}); the default evaluation set first, then
    the run with the most tokens; None when the Evaluate page has not scored it in this server."""
    default = (DEFAULT_EVAL_SET.windows, DEFAULT_EVAL_SET.window)
    found = [
        (tuple(key[2]) == default, cells[cell].tokens, cells[cell])
        for key, cells in list(results.items())
        if key[0] == model_key and cell in cells
    ]
    return max(found, key=lambda f: f[:2])[2] if found else None


def prompt_vs_corpus(column, reference, corpus: CellResult | None) -> list[str]:
    """This prompt's teacher-forced figures beside Evaluate's corpus figures for the same recipe, and where
    the greedy texts first part, how close the reference's two likeliest tokens were."""
    lines = []
    if column.stats:
        scores = TokenComparison(column.stats)
        lines.append(
            f"**This prompt** ({len(column.stats)} tokens, same prefix): mean KL **{scores.mean_kl:.4f}** "
            f"nats · top-1 agreement **{scores.top1_agreement:.0%}**"
        )
    if column.spec.key not in EVALUATE_CELLS:
        lines.append("Evaluate's corpus figure: Evaluate's grid has no cell for this variant.")
    elif corpus is None:
        lines.append(
            f"Evaluate's corpus figure: not computed yet — run the [Evaluate page]({EVALUATE_LINK})."
        )
    else:
        lines.append(
            f"**Evaluate's corpus figure** ({corpus.cell}, {corpus.tokens:,} tokens): Δ perplexity "
            f"**{corpus.relative_change:+.1%}** · mean KL **{corpus.mean_kl:.4f}** nats · top-1 agreement "
            f"**{corpus.top1_agreement:.0%}**"
        )
    diverge = first_divergence(reference.token_ids, column.token_ids)
    if diverge is not None and column.stats and diverge < len(column.stats):
        first, second = column.stats[diverge].reference_top2_p
        tie = " — a near-tie" if first - second < NEAR_TIE else ""
        lines.append(
            f"At token {diverge}, where the texts part, the reference's top two tokens were "
            f"{first:.0%} vs {second:.0%} likely{tie}."
        )
    averaged = f"{corpus.tokens:,}" if corpus is not None else "thousands of"
    lines.append(
        "One prompt is one sample: a greedy divergence can come from a near-tie, while the corpus figure "
        f"averages {averaged} tokens."
    )
    return lines


def corpus_figure(run, column) -> CellResult | None:
    """Evaluate's result for the column's catalog recipe, if the Evaluate page scored it for this model."""
    if column.spec is None or column.spec.key not in EVALUATE_CELLS:
        return None
    return evaluate_figure(variants.grid_results(), run.model_key, column.spec.key)


# -- one column's figures and the table under the columns ----------------------------------------------


def column_metrics(column, reference, where=st, corpus: CellResult | None = None) -> None:
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


def summary_rows(run) -> list[dict]:
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
