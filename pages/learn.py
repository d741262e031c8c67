"""Learn: not built yet; the page says what it will show."""

import streamlit as st

from ui import page

page.start("Learn")
st.warning("This page is not built yet.", icon=":material/construction:")
st.markdown(
    "The concepts behind quantization, each with a small live demo: linear vs quantile grids, symmetric vs asymmetric, granularity and the cost of scales, PTQ calibration, QAT with the straight-through estimator, and why quantized inference is not automatically faster."
)
