"""The common start of every page: the shared sidebar, then the page title.

The sidebar is drawn by each page rather than by app.py so that it is part of the page's own script run
(Streamlit's AppTest drops main-script sidebar elements after a rerun with `st.navigation`).
"""

from __future__ import annotations

import streamlit as st

from ui import sidebar


def start(title: str, caption: str | None = None) -> None:
    sidebar.render()
    st.title(title)
    if caption:
        st.caption(caption)
