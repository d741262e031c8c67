"""Quantization Explorer: the router. Pages live in pages/; each draws the shared sidebar (ui/page.py)."""

from __future__ import annotations

import streamlit as st

from ui import page

st.set_page_config(page_title="Quantization Explorer", page_icon="🗜️", layout="wide")

PAGES = {
    "Explore": [
        st.Page("pages/overview.py", title="Overview", icon=":material/info:", default=True),
        st.Page("pages/grid.py", title="Quantization grid", icon=":material/grid_on:"),
        st.Page("pages/outliers.py", title="Outliers", icon=":material/scatter_plot:"),
    ],
    "Quantize & measure": [
        st.Page("pages/methods.py", title="Methods lab", icon=":material/science:"),
        st.Page("pages/planner.py", title="Plan a recipe", icon=":material/tune:"),
        st.Page("pages/compare.py", title="Compare generations", icon=":material/compare:"),
        st.Page("pages/evaluate.py", title="Evaluate", icon=":material/leaderboard:"),
    ],
    "Deploy": [
        st.Page("pages/memory.py", title="Memory sizing", icon=":material/memory:"),
        st.Page("pages/speed.py", title="Speed", icon=":material/speed:"),
    ],
    "Learn": [st.Page("pages/learn.py", title="Learn", icon=":material/school:")],
}

navigation = st.navigation(PAGES)
page.mark_routed()
navigation.run()
