"""The common start of every page: the link's selections (ui.links), the shared sidebar, the page title,
the "Link to this view" control, then presenter mode (ui.presenter).

The sidebar is drawn by each page rather than by app.py so that it is part of the page's own script run
(Streamlit's AppTest drops main-script sidebar elements after a rerun with `st.navigation`).
"""

from __future__ import annotations

import threading

import streamlit as st

from ui import links, presenter, sidebar, state

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


# Streamlit's multiselect (1.67) lays its chips on one line in a box 40 px high that scrolls sideways,
# so the chips past the first one or two are cut or hidden (and a long chip is cut to "…"; older versions:
# Base Web's `[data-baseweb="tag"]`). Here the chips wrap onto as many lines as they need and show their
# whole text; the box grows to hold them.
FULL_CHIPS_CSS = """<style>
[data-testid="stMultiSelectTagsContainer"] {
  flex-wrap: wrap !important; overflow: visible !important; height: auto !important; max-height: none !important;
  mask-image: none !important; -webkit-mask-image: none !important;
}
[data-testid="stMultiSelectTagsContainer"] > span[role="group"] { flex-wrap: wrap !important; }
[data-testid="stMultiSelect"] div[role="group"]:has(> [data-testid="stMultiSelectTagsContainer"]),
[data-testid="stMultiSelect"] .react-aria-ComboBox { height: auto !important; max-height: none !important; }
[data-testid="stMultiSelect"] [data-tag], [data-testid="stMultiSelect"] [data-baseweb="tag"] {
  max-width: 100%; height: auto; min-height: 1.5rem; padding-top: 0.125rem; padding-bottom: 0.125rem;
  white-space: normal;
}
[data-testid="stMultiSelect"] [data-tag] > span:first-child,
[data-testid="stMultiSelect"] [data-baseweb="tag"] span[title] {
  max-width: none; overflow: visible; text-overflow: clip; white-space: normal;
}
</style>"""


def start(title: str, caption: str | None = None, *, scheme_use: str | None = None) -> None:
    """The sidebar, the page's style rules and its title. `scheme_use`: what this page uses the sidebar's
    scheme for (the sidebar shows the scheme picker only then)."""
    _leave_legacy_multipage_mode()
    restored = links.restore(title)  # before any widget: a link's values become the widgets' state
    st.html(FULL_CHIPS_CSS)
    sidebar.render(scheme_use)
    links.write(title, uses_scheme=bool(scheme_use))  # after the sidebar: its scheme is this run's
    st.title(title)
    if caption:
        st.caption(caption)
    links.report(restored)
    links.link_control(title)
    presenter.apply(title)
