"""Evaluate: not built yet; the page says what it will show."""

import streamlit as st

from ui import page

page.start("Evaluate")
st.warning("This page is not built yet.", icon=":material/construction:")
st.markdown(
    "A Qllm-Eval-style grid over weight bits (W16…W2), weight-activation (W8A8, W4A8, W4A4) and KV-cache bits (KV16…KV2): perplexity, KL to the reference and top-1 agreement, as a heatmap and CSV."
)
