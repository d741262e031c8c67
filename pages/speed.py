"""Speed: not built yet; the page says what it will show."""

import streamlit as st

from ui import page

page.start("Speed")
st.warning("This page is not built yet.", icon=":material/construction:")
st.markdown(
    "Measured kernel and end-to-end speed on the current device: fp16/bf16 vs int8 and int4 kernels at several batch sizes, prefill vs decode tokens/s, and the memory-bandwidth roofline beside each bar."
)
