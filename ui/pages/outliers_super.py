"""The Outliers page's super-weights tab: find the single weights that make the massive activations, zero
them, and keep them in 16-bit under coarse rounding.

After a click, engine.analysis.super_weights scans the page's token windows (ui/cache/outliers_origin.py
keeps the candidates per model and text); the two experiments score copies of the model on held-out windows
of the same text and keep their tables in the session.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.analysis.super_weights import SuperWeightCandidate, VariantTable, WeightCoordinate
from engine.quant.schemes import QuantScheme
from ui.cache import outliers_origin as origin
from ui.cache.models import load
from ui.cache.outliers import StatsKey
from ui.cache.outliers_origin import Protection
from ui.errors import show_error
from ui.pages import origin_charts as charts
from ui.pages.outliers_massive import ERRORS, token_label

PICK = "outliers_super_pick"  # the multiselect of the weights to zero or keep
TOP_K = 7000  # the ablation's "largest other weights" (compare_ablations' default, the paper's scale)
PROTECTIONS = (
    Protection(
        "int4, one scale per tensor, on the tensor holding them",
        QuantScheme(4, "int", granularity="tensor"),
        False,
    ),
    Protection(
        "int3, one scale per tensor, on the tensor holding them",
        QuantScheme(3, "int", granularity="tensor"),
        False,
    ),
    Protection(
        "int4, one scale per row, on every linear", QuantScheme(4, "int", granularity="channel"), True
    ),
)

EXPLAIN = (
    "Yu et al. (2024): a massive activation is written by one MLP's output projection (down_proj) on one "
    "token, and a handful of its weights, the **super weights**, make it. Zeroing them ruins the model; "
    "zeroing thousands of other large weights does not."
)


def makers(candidates: list[SuperWeightCandidate]) -> list[SuperWeightCandidate]:
    """The top candidates: the weights that make the largest spike (the engine ranks the weights that grow
    the residual value first, by their part of the spike), i.e. every candidate writing the top one's
    output channel in its layer and growing it."""
    if not candidates or not candidates[0].creates:
        return []
    top = candidates[0]
    return [
        c for c in candidates if c.creates and (c.layer, c.coordinate.row) == (top.layer, top.coordinate.row)
    ]


def split_name(name: str) -> tuple[str, str]:
    """The layer and the tensor in it: model.layers.11.mlp.down_proj -> ("11", "mlp.down_proj")."""
    _, _, tail = name.partition(".layers.")
    layer, _, rest = tail.partition(".")
    return (layer, rest) if layer.isdigit() and rest else ("", name)


def coordinate_label(c: WeightCoordinate) -> str:
    layer, tensor = split_name(c.name)
    return f"layer {layer} {tensor} ({c.row}, {c.column})" if layer else f"{tensor} ({c.row}, {c.column})"


def candidates_table(
    candidates: list[SuperWeightCandidate], marked: list[SuperWeightCandidate], tokenizer
) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "top": "★" if c in marked else "",
                "layer": c.layer,
                "tensor": split_name(c.coordinate.name)[1],
                "(row, column)": f"({c.coordinate.row}, {c.coordinate.column})",
                "weight": c.weight,
                "rank in tensor": c.rank,
                "× RMS": c.weight_to_rms,
                "its input": c.input_value,
                "spike it makes": c.output_value,
                "residual before → after": f"{c.residual_before:,.0f} → {c.residual_after:,.0f}",
                "token": token_label(tokenizer, c.token_id),
                "position": c.position,
                "tokens with it": c.tokens,
            }
            for c in candidates
        ]
    )


def _perplexity(value: float) -> str:
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def variant_ui(table: VariantTable, count_label: str, prefix: str) -> None:
    """The with/without table, a log-scale perplexity chart and the generations side by side."""
    labels = ["unchanged model", *(row.label for row in table.rows)]
    perplexities = [table.reference_perplexity, *(row.perplexity for row in table.rows)]
    frame = pd.DataFrame(
        {
            "variant": labels,
            count_label: [0, *(row.weights for row in table.rows)],
            "perplexity": perplexities,
            "mean KL": [0.0, *(row.mean_kl for row in table.rows)],
            "same top-1": [1.0, *(row.top1_agreement for row in table.rows)],
        }
    )
    st.dataframe(
        frame.style.format(
            {count_label: "{:,}", "perplexity": _perplexity, "mean KL": "{:.3f}", "same top-1": "{:.1%}"}
        ),
        hide_index=True,
        width="stretch",
    )
    st.caption(f"Mean KL in nats per token against the unchanged model; {table.seconds:.0f} s.")
    st.plotly_chart(charts.perplexity_bars(labels, perplexities), width="stretch", key=f"{prefix}_chart")
    generations = [table.reference_generation, *(row.generation for row in table.rows)]
    if all(text is None for text in generations):
        return
    st.markdown(f"Greedy continuation of “{table.prompt}”:")
    for column, label, text in zip(st.columns(len(labels)), labels, generations, strict=True):
        column.caption(label)
        column.code(text or "", language=None, wrap_lines=True)


def _find_ui(key: StatsKey, text: str | None) -> list[SuperWeightCandidate] | None:
    found = origin.super_weights(key)
    if found is not None:
        return found
    if not st.button("Find super weights", type="primary", key="outliers_super_find"):
        st.info(
            f"Press **Find super weights** to trace the massive values on the page's {key.windows} × "
            f"{key.window} token windows back to the weights that write them: a few seconds on two CPU cores.",
            icon=":material/play_arrow:",
        )
        return None
    try:
        return origin.find_super(key, text)
    except ERRORS as exc:
        show_error(exc, prefix="Could not look for super weights. ")
        return None


def _link_caption(key: StatsKey, marked: list[SuperWeightCandidate]) -> str:
    top = marked[0]
    channel, tensor = top.coordinate.row, split_name(top.coordinate.name)[1]
    massive = origin.massive(key)
    layers = massive.massive_layers(channel) if massive is not None else []
    seen = f" (the Massive activations tab finds it massive from layer {layers[0]} on)" if layers else ""
    return (
        f"★ marks the weights that make the largest spike, in layer {top.layer}'s {tensor}: they write channel "
        f"#{channel}'s spike{seen}. Rank 1 is the largest |weight| of its tensor; × RMS compares it with the "
        "tensor's typical weight; its input is the down_proj input the weight multiplies on that token."
    )


def ablation_ui(key: StatsKey, text: str | None, picked: tuple[WeightCoordinate, ...]) -> None:
    st.subheader("Zero them")
    windows = origin.held_out_count(key)
    st.caption(
        f"Zeroes the picked weights in a copy of the model, then as many random weights of the same size, then "
        f"the {TOP_K:,} largest other weights of the same tensors, and scores each against the unchanged model "
        f"on {windows} × {key.window} held-out tokens of this text, with a short continuation of a prompt. It "
        "takes about a minute on two CPU cores for 4 × 256."
    )
    table = origin.ablation(key, picked)
    if st.button("Zero them and compare", key="outliers_super_ablate"):
        try:
            table = origin.run_ablation(key, text, picked, TOP_K)
        except ERRORS as exc:
            show_error(exc, prefix="Could not run the comparison. ")
    if table is not None:
        variant_ui(table, "weights zeroed", "outliers_ablation")


def protect_ui(key: StatsKey, text: str | None, picked: tuple[WeightCoordinate, ...]) -> None:
    st.subheader("Keep them in 16-bit")
    cols = st.columns([3, 2], vertical_alignment="bottom")
    choice = cols[0].selectbox(
        "Rounding", PROTECTIONS, format_func=lambda p: p.label, key="outliers_super_scheme"
    )
    clicked = cols[1].button("Round with and without them", key="outliers_super_protect", width="stretch")
    st.caption(
        "Round to nearest with the picked weights left out of the scale and kept unrounded, against plain "
        "rounding. A scale per row or per group already rounds its block's largest weight exactly, so keeping "
        "them matters most for coarse scales such as one per tensor."
    )
    table = origin.protection(key, picked, choice)
    if clicked:
        try:
            table = origin.run_protection(key, text, picked, choice)
        except ERRORS as exc:
            show_error(exc, prefix="Could not round the model. ")
    if table is not None:
        variant_ui(table, "weights kept in 16-bit", "outliers_protect")


def _default_pick(options: list[str], marked: list[str]) -> list[str] | None:
    """The marked weights on the first draw; later, the user's pick less what the options no longer hold
    (another text finds other candidates), written to the widget's state (so no default then)."""
    if PICK not in st.session_state:
        return marked
    kept = [label for label in st.session_state[PICK] if label in options]
    if kept != st.session_state[PICK]:
        st.session_state[PICK] = kept
    return None


def super_tab(key: StatsKey, text: str | None) -> None:
    st.markdown(EXPLAIN)
    candidates = _find_ui(key, text)
    if candidates is None:
        return
    if not candidates:
        st.info(
            "No super weights here: no MLP output projection makes a massive value on these windows (|y| > 100 "
            "and 1,000× the median of its output), so there is nothing to trace. A model without massive "
            "activations, such as a small random one, has none.",
            icon=":material/info:",
        )
        return
    marked = makers(candidates)
    tokenizer = load(key.source, key.device, key.dtype).tokenizer
    st.dataframe(
        candidates_table(candidates, marked, tokenizer).style.format(
            {
                "weight": "{:.3f}",
                "rank in tensor": "{:,}",
                "× RMS": "{:,.0f}",
                "its input": "{:,.1f}",
                "spike it makes": "{:,.0f}",
            }
        ),
        hide_index=True,
        width="stretch",
    )
    if marked:
        st.caption(_link_caption(key, marked))
    labels = {coordinate_label(c.coordinate): c.coordinate for c in candidates}
    picked_labels = st.multiselect(
        "Weights to zero or keep",
        list(labels),
        default=_default_pick(
            list(labels), [coordinate_label(c.coordinate) for c in (marked or candidates[:1])]
        ),
        key=PICK,
    )
    if not picked_labels:
        st.info("Pick at least one weight to zero or keep.", icon=":material/touch_app:")
        return
    picked = tuple(labels[label] for label in picked_labels)
    ablation_ui(key, text, picked)
    protect_ui(key, text, picked)
