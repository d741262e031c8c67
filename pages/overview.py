"""Overview: what model is loaded, its architecture in numbers, and a quick greedy generation.

Read the loaded model and its summary (ui.cache) -> draw the numbers and the parameter chart -> a small
form runs `engine.runtime.generation.generate`, streaming tokens into the page.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.models.sources import provenance
from engine.runtime.generation import MAX_NEW_TOKENS_CAP, GenerationError, GenerationSettings, generate
from ui import cache, charts, page
from ui.errors import show_error
from ui.widgets import prompt_area, prompt_problem


def architecture_metrics(summary) -> None:
    cols = st.columns(6)
    cols[0].metric("Parameters", f"{summary.parameters / 1e6:,.1f} M")
    cols[1].metric("Layers", summary.layers)
    cols[2].metric("Hidden size", summary.hidden_size)
    cols[3].metric("Heads / KV heads", f"{summary.attention_heads} / {summary.kv_heads}")
    cols[4].metric("Head dim", summary.head_dim)
    cols[5].metric("Vocabulary", f"{summary.vocab_size:,}")
    cols = st.columns(6)
    cols[0].metric("MLP size", summary.intermediate_size or "—")
    cols[1].metric("Max context", f"{summary.max_context:,}" if summary.max_context else "—")
    cols[2].metric("Tied embeddings", "yes" if summary.tied_embeddings else "no")
    cols[3].metric("dtype", summary.dtype)
    cols[4].metric("In memory", f"{summary.bytes_in_memory / 1024**2:,.0f} MiB")
    cols[5].metric(
        "On disk",
        f"{summary.bytes_on_disk / 1024**2:,.0f} MiB",
        help="safetensors files of the loaded folder",
    )


def architecture_details(loaded, summary) -> None:
    left, right = st.columns([3, 2])
    left.plotly_chart(
        charts.parameters_by_kind(summary.parameters_by_kind, summary.parameters), width="stretch"
    )
    right.markdown("**Architecture**")
    kv_bytes_per_token = 2 * summary.layers * summary.kv_heads * summary.head_dim * 2  # K and V, fp16
    right.table(  # a static table wraps the long folder path instead of hiding it behind a scroll
        pd.DataFrame(
            {
                "value": [
                    summary.model_type,
                    f"{kv_bytes_per_token:,} bytes",
                    str(loaded.folder),
                    f"{loaded.load_seconds:.2f} s",
                ]
            },
            index=["model_type", "KV cache per token (fp16)", "loaded from", "load time"],
        )
    )


def generation_form() -> tuple[str, GenerationSettings, bool]:
    """(prompt, settings, whether Generate was pressed)."""
    with st.form("quick_generation"):
        prompt = prompt_area("Prompt", "What is the capital of France?")
        left, right = st.columns(2)
        max_new_tokens = left.slider("Max new tokens", 1, min(256, MAX_NEW_TOKENS_CAP), 32)
        chat = right.checkbox("Use the chat template", value=True)
        run = st.form_submit_button("Generate (greedy)", type="primary", key="qe_overview_generate")
    return prompt, GenerationSettings(max_new_tokens=max_new_tokens, chat=chat), run


def quick_generation(loaded, prompt: str, settings: GenerationSettings) -> None:
    output = st.empty()
    try:
        if problem := prompt_problem(prompt):
            raise GenerationError(problem)
        result = generate(
            loaded.model,
            loaded.tokenizer,
            prompt,
            settings,
            on_token=lambda _token, text: output.markdown(text + " ▌"),
        )
    except GenerationError as exc:
        show_error(exc)
        return
    output.markdown(result.text or "_(the model stopped immediately)_")
    st.caption(
        f"{len(result.token_ids)} tokens · prompt {result.prompt_tokens} tokens · "
        f"prefill {result.prefill_tokens_per_s:,.0f} tok/s · decode {result.decode_tokens_per_s:,.1f} tok/s "
        f"on {loaded.device} ({loaded.dtype})"
    )


def main() -> None:
    page.start("Overview")
    loaded = cache.current_model_or_stop()
    summary = cache.summary()
    st.subheader(loaded.source.label)
    st.info(provenance(loaded.source), icon=":material/history_edu:")
    architecture_metrics(summary)
    architecture_details(loaded, summary)
    st.subheader("Quick generation")
    prompt, settings, run = generation_form()
    if run:
        quick_generation(loaded, prompt, settings)


main()
