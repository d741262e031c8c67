"""Links that reopen a view (issue 21): the page's selections in the URL's query parameters, both ways.

`ui.page.start` calls `restore` before any widget is drawn (a link's values become the widgets' session
state), `write` once the sidebar is drawn (the current selections go back into the URL) and `link_control`
(a "Link to this view" popover). What each page puts in its URL is declared in `ui.link_params`.

Only widget values are set: a link never loads a model (a `model` parameter fills the sidebar's fields for
the user to press Load model), never presses a button, and never starts a run. A parameter is restored
only when the URL's value is not one this session wrote itself, so a user's latest change to a widget is
never overwritten by an older URL (quick clicks can rerun the page before the browser's address caught
up), and other modules may add their own parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlencode

import streamlit as st

from engine.models.sources import ModelSource
from ui import state
from ui.link_params import MAX_CHARS, MODEL, NO_DEFAULT, PAGE_PARAMS, PAGE_PATHS, SCHEME, SHARED
from ui.widgets import DEFAULT_SCHEME, picker_values

WRITTEN = "qe_links_written"  # {name: text}: the query parameters this session last wrote
HISTORY = "qe_links_history"  # {name: [text, ...]}: every value this session wrote, newest last (bounded)
HISTORY_LENGTH = 64
SCHEME_PREFIX = "qe_scheme"  # the sidebar scheme picker's widget keys (ui.sidebar)
PICK_KIND, PICK_LOCATION = "qe_pick_kind", "qe_pick_location"  # the sidebar's model fields
SHOWN_CHARS = 40  # how much of an ignored name or value a message repeats
# read, checked and kept in the URL by their own modules (ui.presenter, ui.tour, ui.clickthrough): passed on
PASSED_ON = ("present", "tour", "from")


@dataclass
class Restored:
    """What a link changed: the parameters it ignored (with why) and notes for the user."""

    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def url_params() -> dict[str, str]:
    """The URL's query parameters (the last value of a repeated one)."""
    return {name: st.query_params[name] for name in st.query_params}


def restore(title: str) -> Restored:
    """Set the widgets named by the URL's new parameters (values this session has not written itself); the
    ignored ones come back with why, for `report`."""
    declared = {param.key: param.kind for param in PAGE_PARAMS.get(title, ())}
    history = st.session_state.get(HISTORY, {})
    restored = Restored()
    for name, text in url_params().items():
        # a value this session wrote itself, for a widget that still holds a value, is not a link's: quick
        # clicks can rerun the page with a URL one or two changes old, which must not undo newer values.
        # A widget whose state is gone (its page was left) takes it: going back to a view restores it.
        mine = text in history.get(name, ()) and (name in SHARED or name in st.session_state)
        if mine or name in PASSED_ON:
            continue
        kind = declared.get(name) or SHARED.get(name)
        if kind is None:
            restored.ignored.append(f"{_cut(name)} (not a setting of this page)")
            continue
        if len(text) > MAX_CHARS:
            restored.ignored.append(f"{name} (longer than {MAX_CHARS} characters)")
            continue
        try:
            _apply(name, kind.parse(text), restored)
        except ValueError as exc:
            restored.ignored.append(f"{name}={_cut(text)!r} ({exc})")
        except Exception:  # noqa: BLE001 (options that could not be read, e.g. no model): never take the page down
            restored.ignored.append(f"{name}={_cut(text)!r} (could not be checked now)")
    return restored


def _apply(name: str, value, restored: Restored) -> None:
    if name == SCHEME:
        values = picker_values(value, SCHEME_PREFIX)
        st.session_state.update(values)
        st.session_state.setdefault(state.KEPT, {}).update(values)  # pages without the picker keep it too
    elif name == MODEL:
        _fill_model_fields(value, restored)
    else:
        st.session_state[name] = value


def _fill_model_fields(source: ModelSource, restored: Restored) -> None:
    """Put the link's model in the sidebar's fields without loading it."""
    current = state.selection()[0]
    if source == current:
        return
    st.session_state[PICK_KIND] = source.kind
    st.session_state[PICK_LOCATION] = source.location
    restored.notes.append(
        f"This link was made with the model **{source.label}**; it is filled in the sidebar but not "
        "loaded: press **Load model** there to load it."
    )


def report(restored: Restored) -> None:
    """One warning naming every ignored parameter; one note per model to load."""
    if restored.ignored:
        st.warning(
            "Ignored from the link: " + "; ".join(restored.ignored) + ". Those settings keep their defaults.",
            icon=":material/link_off:",
        )
    for note in restored.notes:
        st.info(note, icon=":material/link:")


def wanted_params(title: str, uses_scheme: bool) -> dict[str, str]:
    """The query parameters for the current selections: the page's widgets away from their defaults, the
    sidebar's scheme (pages that use it) and model (a folder the server allows), and the parameters other
    modules own (`PASSED_ON`) as they are."""
    url = url_params()
    wanted: dict[str, str] = {name: url[name] for name in PASSED_ON if name in url}
    scheme = state.scheme()
    if uses_scheme and scheme is not None and scheme != DEFAULT_SCHEME:
        wanted[SCHEME] = SHARED[SCHEME].encode(scheme)
    source = state.selection()[0]
    if source.kind in ("folder", "gguf") and _valid(SHARED[MODEL], source.location):
        wanted[MODEL] = source.location
    for param in PAGE_PARAMS.get(title, ()):
        if param.key not in st.session_state:
            continue
        value = st.session_state[param.key]
        if value is None:
            continue
        try:
            text = param.kind.encode(value)
        except (TypeError, ValueError, AttributeError):  # a value of another type: not worth a link
            continue
        if param.default is not NO_DEFAULT and text == param.kind.encode(param.default):
            continue
        if len(text) <= MAX_CHARS:
            wanted[param.key] = text
    return wanted


def _valid(kind, text: str) -> bool:
    try:
        kind.parse(text)
    except ValueError:
        return False
    return True


def write(title: str, uses_scheme: bool = False) -> None:
    """Make the URL hold the current selections (and nothing a link had that was ignored)."""
    wanted = wanted_params(title, uses_scheme)
    if wanted != url_params():
        st.query_params.from_dict(wanted)
    st.session_state[WRITTEN] = wanted
    history = st.session_state.setdefault(HISTORY, {})
    for name, text in wanted.items():
        texts = history.setdefault(name, [])
        if text not in texts:
            texts.append(text)
            del texts[:-HISTORY_LENGTH]


def view_url(title: str) -> str:
    """The full link to this view (the relative one when the browser's address is unknown)."""
    query = urlencode(st.session_state.get(WRITTEN, {}))
    path = PAGE_PATHS.get(title, "")
    try:
        base = st.context.url
    except Exception:  # noqa: BLE001 (no browser context: AppTest, bare mode)
        base = None
    link = f"{base.rstrip('/')}/{path}" if base else path or "./"
    return f"{link}?{query}" if query else link


def link_control(title: str) -> None:
    """A compact "Link to this view" popover with the URL and its copy button."""
    with st.popover("Link to this view", icon=":material/link:"):
        st.code(view_url(title), language=None, wrap_lines=True)
        st.caption(
            "Reopens this page with these selections, not their results: a link never loads a model or "
            "starts a run."
        )
