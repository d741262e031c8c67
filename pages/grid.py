"""Quantization grid: not built yet; the page says what it will show."""

import streamlit as st

from ui import page

page.start("Quantization grid")
st.warning("This page is not built yet.", icon=":material/construction:")
st.markdown(
    "Pick a layer and tensor of the loaded model and see its values on a number line with the levels of the chosen scheme drawn over them; the real → code → real mapping, clipped values, the error distribution, and a table ranking int8/4/3/2, NF4, FP4 and FP8 schemes on that tensor by MSE, SQNR and bits per weight."
)
