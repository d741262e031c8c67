"""Compare generations: not built yet; the page says what it will show."""

import streamlit as st

from ui import page

page.start("Compare generations")
st.warning("This page is not built yet.", icon=":material/construction:")
st.markdown(
    "The reference model and quantized variants side by side on one prompt: tokens streaming into each column, the first divergence highlighted, per-token probabilities and KL, and measured prefill/decode speed and memory."
)
