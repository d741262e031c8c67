"""Presenter mode and the guided tour (issue 21).

Presenter mode is for teaching on a projector: the sidebar goes, text and charts grow, and the controls a
class does not need to follow (window counts, seeds, uploads, downloads) are hidden, so the view keeps its
charts, metrics, tables, the buttons that start a run and the tour banner. It is on when the URL says
`present=1` or the sidebar's "Presenter mode" toggle is on; the link sets the toggle once, and the toggle
(or the "Exit presenter mode" button, since the sidebar is hidden) wins afterwards.

The tour (`ui.tour`) is a saved sequence of views: with `tour=N` in the URL the step's page shows a banner
with its narration and Previous / Next / End tour buttons, which open the neighbouring step's page with its
selections in the URL (presenter mode kept). A link never runs anything: a step only preselects widgets.

Streamlit gives each keyed widget's container the CSS class `st-key-<key>`, so hiding a control is one CSS
rule per key (HIDDEN_KEYS, per page title).
"""

from __future__ import annotations

import streamlit as st

from ui import state, tour
from ui.link_params import Flag

PRESENT = "qe_present"  # the sidebar toggle's key
_PRESENT_SEEN = "qe_present_seen"  # the URL's `present` value this session last applied to the toggle
TOUR_STEP = "qe_tour_step"  # the tour step this session is on (survives reruns that rewrite the URL)
START_LINK = "/?tour=1&present=1"

# Per page title: the widgets presenter mode hides (settings nobody needs to read to follow the view).
HIDDEN_KEYS: dict[str, tuple[str, ...]] = {
    "Quantization grid": ("grid_source", "grid_syn_kind", "grid_syn_rows", "grid_syn_cols", "grid_syn_seed"),
    "Outliers": (
        "outliers_corpus",
        "outliers_windows",
        "outliers_window",
        "outliers_threshold",
        "outliers_file",
        "outliers_download",
        "outliers_rotation_windows",
        "outliers_rotation_tokens",
    ),
    "Methods lab": ("methods_calib_windows", "methods_calib_tokens", "methods_eval_windows", "methods_clear"),
    "Compare generations": (
        "compare_max_new_tokens",
        "compare_temperature",
        "compare_top_p",
        "compare_seed",
        "compare_chat",
    ),
    "Evaluate": ("evaluate_corpus", "evaluate_windows", "evaluate_window", "evaluate_file"),
    "Memory sizing": ("memory_source", "memory_upload", "memory_hub", "memory_add_sidebar", "memory_prefill"),
    "Speed": ("speed_shape_source", "speed_repeats", "speed_prompt_tokens", "speed_new_tokens"),
}

# No sidebar or header, so the charts (drawn to the column's width) get the whole screen; every rem-sized
# text and control grows with the root font size, more on a wide screen; headings and metrics a step more.
# (CSS `zoom` would grow the charts too, but Plotly then crops and misplaces them.)
PRESENTER_CSS = """
section[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"],
[data-testid="stExpandSidebarButton"], header[data-testid="stHeader"] { display: none !important; }
html { font-size: 18px !important; }
@media (min-width: 1600px) { html { font-size: 21px !important; } }
[data-testid="stMainBlockContainer"] { max-width: none; padding: 1.5rem 2rem 4rem; }
[data-testid="stMain"] h1 { font-size: 2.6rem; }
[data-testid="stMain"] h2, [data-testid="stMain"] h3 { font-size: 1.7rem; }
[data-testid="stMarkdownContainer"] p, [data-testid="stMarkdownContainer"] li { font-size: 1.05rem; }
[data-testid="stCaptionContainer"], [data-testid="stCaptionContainer"] p { font-size: 0.95rem; }
[data-testid="stMetricValue"], [data-testid="stMetricValue"] * { font-size: 2.3rem !important; }
[data-testid="stMetricLabel"] p { font-size: 1.05rem; }
[data-testid="stTable"] td, [data-testid="stTable"] th { font-size: 1rem; }
"""


def presenter_css(title: str) -> str:
    """The style rules for presenter mode on the page `title`: the layout, then one rule hiding its controls."""
    hidden = ", ".join(f".st-key-{key}" for key in HIDDEN_KEYS.get(title, ()))
    rules = PRESENTER_CSS + (f"{hidden} {{ display: none !important; }}\n" if hidden else "")
    return f"<style>{rules}</style>"


def _ignored(name: str, value: str, why: str) -> None:
    st.warning(f"Ignored from the link: {name}={value!r} ({why}).", icon=":material/link_off:")
    del st.query_params[name]


def _exit_presenting() -> None:
    st.session_state[PRESENT] = False


def presenting() -> bool:
    """Whether presenter mode is on: the URL's `present` sets the sidebar toggle when the link changes it,
    then the toggle decides; the URL follows the toggle so a copied link keeps the mode."""
    raw = st.query_params.get(tour.PRESENT_PARAM)
    if raw is not None and raw not in ("0", "1"):
        try:
            raw = "1" if Flag().parse(raw) else "0"
        except ValueError as exc:
            _ignored(tour.PRESENT_PARAM, raw, str(exc))
            raw = None
    state.seed(PRESENT, False)  # a widget's value does not outlive a page change by itself
    if raw is not None and raw != st.session_state.get(_PRESENT_SEEN):
        st.session_state[PRESENT] = raw == "1"
    on = st.sidebar.toggle(
        "Presenter mode",
        key=PRESENT,
        help="For teaching: hides the sidebar and the settings a class does not need, and enlarges text and "
        f"charts. The guided tour through the default model starts at {START_LINK}.",
    )
    if on:
        st.query_params[tour.PRESENT_PARAM] = "1"
    elif tour.PRESENT_PARAM in st.query_params:
        del st.query_params[tour.PRESENT_PARAM]
    state.keep(PRESENT)
    st.session_state[_PRESENT_SEEN] = "1" if on else None
    return on


def _go(number: int, present: bool) -> None:
    st.session_state[TOUR_STEP] = number
    st.switch_page(tour.step(number).page, query_params=tour.step_params(number, present))


def _end_tour() -> None:
    st.session_state.pop(TOUR_STEP, None)
    st.query_params.pop(tour.TOUR_PARAM, None)


def tour_step(title: str, present: bool) -> int | None:
    """The tour step to show on the page `title`, from the URL (a fresh link: opens the step's own page if
    this is another) or from this session (reruns); None outside the tour. An invalid step is ignored."""
    raw = st.query_params.get(tour.TOUR_PARAM)
    if raw is not None:
        number = int(raw) if raw.isdecimal() and len(raw) <= 3 else 0
        if not 1 <= number <= len(tour.STEPS):
            _ignored(tour.TOUR_PARAM, raw, f"the tour has steps 1 to {len(tour.STEPS)}")
            st.session_state.pop(TOUR_STEP, None)
            return None
        if tour.PAGE_TITLES.get(tour.step(number).page) != title:
            _go(number, present)
        st.session_state[TOUR_STEP] = number
    number = st.session_state.get(TOUR_STEP)
    if number is None or tour.PAGE_TITLES.get(tour.step(number).page) != title:
        return None
    st.query_params[tour.TOUR_PARAM] = str(number)
    return number


def banner(number: int, present: bool) -> None:
    """The step's narration with Previous / Next / End tour (and Exit presenter mode while presenting)."""
    step, last = tour.step(number), len(tour.STEPS)
    with st.container(border=True, key="qe_tour_banner"):
        text, *buttons = st.columns([6, 1.2, 1.2, 1.2], vertical_alignment="center")
        text.markdown(f"**Step {number} of {last} — {step.title}**  \n{step.narration}")
        previous = buttons[0].button(
            "Previous",
            key="qe_tour_previous",
            icon=":material/arrow_back:",
            disabled=number == 1,
            width="stretch",
        )
        following = buttons[1].button(
            "Next", key="qe_tour_next", type="primary", icon=":material/arrow_forward:", disabled=number == last,
            width="stretch",
        )  # fmt: skip
        buttons[2].button("End tour", key="qe_tour_end", on_click=_end_tour, width="stretch")
        if present:
            st.button(
                "Exit presenter mode", key="qe_present_exit", type="tertiary", on_click=_exit_presenting
            )
    if previous:
        _go(number - 1, present)
    if following:
        _go(number + 1, present)


def apply(title: str) -> None:
    """Called by `ui.page.start` after the title: presenter styling and the tour banner for this page."""
    present = presenting()
    number = tour_step(title, present)
    if present:
        st.html(presenter_css(title))
    if number is not None:
        banner(number, present)
    elif present:
        st.button(
            "Exit presenter mode",
            key="qe_present_exit",
            type="tertiary",
            icon=":material/close_fullscreen:",
            on_click=_exit_presenting,
        )
