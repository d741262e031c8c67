"""Methods lab: not built yet; the page says what it will show."""

import streamlit as st

from ui import page

page.start("Methods lab")
st.warning("This page is not built yet.", icon=":material/construction:")
st.markdown(
    "RTN, LLM.int8(), SmoothQuant, GPTQ, AWQ and bitsandbytes run on the loaded model with a progress bar: per-layer error for each method, method diagnostics (kept outlier dimensions, smoothing scales, GPTQ losses, AWQ search curves) and a summary table of size, perplexity and time."
)
