"""Outliers: not built yet; the page says what it will show."""

import streamlit as st

from ui import page

page.start("Outliers")
st.warning("This page is not built yet.", icon=":material/construction:")
st.markdown(
    "Weight, activation and KV-cache outliers measured on real text: layer × statistic heatmaps, per-channel magnitudes (the SmoothQuant picture), keys vs values (the KIVI observation), LLM.int8() outlier features, and a per-layer sensitivity ranking under the chosen scheme."
)
