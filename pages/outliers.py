"""Outliers: where the large values live in weights, activations and the KV cache, measured on real text."""

from __future__ import annotations

from typing import NamedTuple

import streamlit as st

from engine.analysis.site_stats import Stats
from engine.models.data import CORPORA, MAX_UPLOAD_BYTES, DataError, decode_upload
from ui import cache, page
from ui.cache import outliers as outlier_cache
from ui.errors import show_error
from ui.pages import outliers as tabs
from ui.pages import outliers_imatrix, outliers_massive, outliers_rotation, outliers_super
from ui.pages.outliers import Summary
from ui.widgets import NumberBoxes

CORPUS_CHOICES = [*CORPORA, "upload"]
REQUESTED = "outliers_collect_requested"  # set by the button's callback, so no rerun can lose the click


class Collection(NamedTuple):
    """What the form at the top asks for."""

    corpus: str  # a name from CORPORA, or "upload"
    windows: int
    window: int  # tokens per window
    threshold: float  # |x| at which a feature counts as an outlier (no new collection needed)


def collection_form_ui() -> Collection:
    cols = st.columns([3, 1, 2, 1.4, 1.6], vertical_alignment="bottom")
    corpus = cols[0].selectbox(
        "Text",
        CORPUS_CHOICES,
        format_func=lambda name: CORPORA.get(name, "Upload a text file"),
        key="outliers_corpus",
    )
    number = NumberBoxes()
    windows = number(cols[1], "Windows", 1, 32, 8, key="outliers_windows")
    window = cols[2].select_slider("Tokens per window", [64, 128, 256, 512, 1024], 256, key="outliers_window")
    threshold = number(
        cols[3],
        "Outlier |x| ≥",
        0.5,
        100_000.0,
        6.0,
        step=0.5,
        key="outliers_threshold",
        help="LLM.int8() calls a feature an outlier when |x| ≥ 6.0. Changing it needs no new collection.",
        name="The outlier threshold",
    )
    cols[4].button(
        "Collect statistics",
        type="primary",
        key="outliers_collect",
        width="stretch",
        on_click=lambda: st.session_state.update({REQUESTED: True}),
    )
    if number.show():  # a click on Collect with a number out of range collects nothing, now or later
        st.session_state.pop(REQUESTED, None)
        st.stop()
    return Collection(corpus, windows, window, threshold)


def uploaded_text_ui(corpus: str) -> str | None:
    """The uploaded text when the corpus is "upload" (stops the page until there is one), else None."""
    if corpus != "upload":
        return None
    upload = st.file_uploader(
        "Text file (UTF-8)",
        type=["txt", "md", "csv", "json", "py"],
        key="outliers_file",
        max_upload_size=MAX_UPLOAD_BYTES // 2**20,  # "20MB" shown; the browser counts 10^6 bytes, <= 20 MiB
    )
    if upload is None:
        st.info("Upload a plain-text file to collect statistics on your own text.", icon=":material/upload:")
        st.stop()
    try:
        return decode_upload(upload.getvalue())
    except DataError as exc:
        show_error(exc)
        st.stop()


def statistics_ui(form: Collection, text: str | None, loaded) -> tuple[outlier_cache.StatsKey, Stats]:
    """Statistics for the form from the cache; after a click, collected in the background (other clicks
    leave it running; its progress shows meanwhile). Stops the page until there are some."""
    key = outlier_cache.stats_key(form.corpus, form.windows, form.window, text)
    requested = st.session_state.pop(REQUESTED, False) and outlier_cache.cached(key) is None
    running = tabs.collection_ui(requested, key, loaded, text)
    if (stats := outlier_cache.cached(key)) is not None:
        return key, stats
    if not running:
        st.info(
            f"Press **Collect statistics** to run {int(form.windows)} windows × {form.window} tokens through "
            f"{loaded.source.label}: about 10–20 s on two CPU cores for 8 × 256; results are kept for "
            "every session.",
            icon=":material/play_arrow:",
        )
    st.stop()


def headline_ui(stats: Stats, summary: Summary) -> None:
    top = summary.residual[0]
    metrics = st.columns(5)
    metrics[0].metric("Residual outlier channel", f"#{top['channel']}")
    metrics[1].metric("Its largest |x|", f"{top['max |x|']:,.0f}", help=f"at layer {top['at layer']}")
    metrics[2].metric("× median channel", f"{top['× median']:,.0f}×", help="at that layer")
    metrics[3].metric(
        "Key / value spread",
        f"{summary.key_ratio:.1f} / {summary.value_ratio:.1f}",
        help="Keys' spread, then values': the largest channel's abs-max over the median channel's within a "
        "head, median over layers (×; keys spread more, which is why KIVI quantizes keys per channel).",
    )
    metrics[4].metric("Tokens measured", f"{stats.tokens:,}", help=f"collected in {stats.seconds:.1f} s")
    others = ", ".join(
        f"**#{row['channel']}** ({row['max |x|']:,.0f} at layer {row['at layer']})"
        for row in summary.residual[1:]
    )
    sink = top["peak token position in window"] == 0
    st.markdown(
        f"Residual-stream channel **#{top['channel']}** reaches **{top['max |x|']:,.0f}** at layer "
        f"{top['at layer']}, {top['× median']:,.0f}× the median channel there; it is the largest channel in "
        f"{top['layers as top channel']} of {stats.layers} layers, and the largest value sits at token "
        f"{top['peak token position in window']} of its window"
        + (" (the first token, an attention sink)" if sink else "")
        + "."
        + (f" Next: {others}." if others else "")
    )


def main() -> None:
    page.start(
        "Outliers",
        "Run real text through the model and see which channels carry huge values: in the weights, in the "
        "inputs of every linear layer, in the residual stream and in the KV cache; which features meet the "
        "LLM.int8() outlier criteria; why KIVI quantizes keys per channel; and which tensors suffer most "
        "under the sidebar's scheme.",
        scheme_use="ranking the tensors by how much this scheme hurts them.",
    )
    loaded = cache.current_model_or_stop()
    form = collection_form_ui()
    text = uploaded_text_ui(form.corpus)
    key, stats = statistics_ui(form, text, loaded)
    summary = tabs.summarise(stats)
    headline_ui(stats, summary)

    names = ["Weights", "Activations", "KV cache", "Sensitivity", "Importance"]
    names += [
        "Massive activations",
        "Super weights",
        "Rotation",
    ]  # where outliers come from, how to remove them
    # a tracked tab (key, rerun) stays open when a button inside it reruns the page
    tab = dict(zip(names, st.tabs(names, key="outliers_tab", on_change="rerun"), strict=True))
    with tab["Weights"]:
        weights = outlier_cache.weights()
        tabs.weights_tab(weights)
    token_labels = outlier_cache.sample_tokens(key, stats)
    with tab["Activations"]:
        tabs.activations_tab(stats, summary, weights, token_labels, form.threshold)
    with tab["KV cache"]:
        tabs.kv_tab(stats, summary, token_labels)
    with tab["Sensitivity"]:
        tabs.sensitivity_tab(key, stats)
    with tab["Importance"]:
        outliers_imatrix.importance_tab(stats)
    with tab[
        "Massive activations"
    ]:  # where the outliers come from (issue 19): the spike, its weights, rotation
        outliers_massive.massive_tab(key, text)
    with tab["Super weights"]:
        outliers_super.super_tab(key, text)
    with tab["Rotation"]:
        outliers_rotation.rotation_tab(loaded)


main()
