"""Memory sizing: not built yet; the page says what it will show."""

import streamlit as st

from ui import page

page.start("Memory sizing")
st.warning("This page is not built yet.", icon=":material/construction:")
st.markdown(
    "Will it fit? Weights under any scheme (scales included), the KV cache with GQA, sliding windows and MLA, activations and overhead for any catalog or uploaded config, GPU by GPU, with the estimate checked against measured memory for the loaded model."
)
