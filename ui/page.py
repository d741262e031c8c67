"""The common start of every page: the shared sidebar, then the page title.

The sidebar is drawn by each page rather than by app.py so that it is part of the page's own script run
(Streamlit's AppTest drops main-script sidebar elements after a rerun with `st.navigation`).
"""

from __future__ import annotations

import threading

import streamlit as st

from ui import sidebar, state

_run = threading.local()  # one script run at a time per ScriptRunner thread


def mark_routed() -> None:
    """Called by app.py right before `navigation.run()`: this run came through the router."""
    _run.routed = True


def _leave_legacy_multipage_mode() -> None:
    """Streamlit runs `pages/*.py` directly (its v1 multipage mode, without app.py) when a server's very
    first request is a page URL such as /grid, before any session has called `st.navigation`. Then the
    router did not run: switch the process to st.navigation and, on a session's first run (nothing to
    lose yet), rerun so the navigation, page config and titles apply from the first view. AppTest runs every
    script in that mode; its later runs carry widget events that a rerun would drop, so they go on as is."""
    routed, _run.routed = getattr(_run, "routed", False), False
    if routed:
        return
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a future Streamlit without the v1 mode
        return
    PagesManager.uses_pages_directory = False
    if state.MODEL_SOURCE not in st.session_state:
        st.rerun()


def start(title: str, caption: str | None = None) -> None:
    _leave_legacy_multipage_mode()
    sidebar.render()
    st.title(title)
    if caption:
        st.caption(caption)
