"""`python -m ui.serve` imports what the pages import before Streamlit serves (see its docstring: first
imports from two session threads at once broke a page opened while a fresh server was still loading)."""

from __future__ import annotations

import subprocess
import sys

from tests.app.conftest import ROOT


def test_page_imports_are_read_from_the_pages():
    from ui.serve import page_imports

    names = page_imports()
    assert {"engine.evaluation.study", "ui.cache", "ui.page", "ui.pages.speed", "streamlit"} <= set(names)
    assert not any(name.startswith("__future__") for name in names)


def test_preload_imports_every_page_module_in_a_fresh_interpreter():
    code = (
        "import sys\n"
        "from ui.serve import page_imports, preload\n"
        "loaded = preload()\n"
        "missing = [n for n in page_imports() if n in loaded and n not in sys.modules]\n"
        "assert 'engine.evaluation.study' in loaded and 'ui.pages.methods' in loaded, loaded\n"
        "print(missing or 'ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"


def _get(app, path: str) -> tuple[int, str]:
    """One GET through an ASGI app, without a server."""
    import asyncio
    import threading

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "root_path": ""}
    scope |= {"query_string": b"", "headers": [], "scheme": "http", "server": ("127.0.0.1", 80)}
    sent, requested = [], []

    async def receive():
        if not requested:
            requested.append(True)
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)  # no disconnect: the response finishes first

    async def send(message):
        sent.append(message)

    # in a thread of its own: an earlier test in this worker may have left an event loop running here
    worker = threading.Thread(target=lambda: asyncio.run(app(scope, receive, send)))
    worker.start()
    worker.join(timeout=60)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]).decode()


def test_a_path_below_a_page_says_page_not_found_instead_of_a_blank_page():
    """Issue 22: /grid/extra got the app page, whose relative script links then pointed under /grid/ and
    got the app page again instead of JavaScript: a blank white page."""
    from streamlit import file_util
    from streamlit.web.server.starlette import starlette_static_routes as routes

    from ui.serve import with_page_not_found

    handler = with_page_not_found(
        routes.create_streamlit_static_handler(file_util.get_static_dir(), None), None
    )
    status, body = _get(handler, "/grid/extra")
    assert status == 404
    assert "There is no page at <code>/grid/extra</code>" in body
    assert '<a href="/grid">Quantization grid</a>' in body and '<a href="/">Overview</a>' in body
    status, body = _get(handler, "/grid/<img src=x onerror=alert(1)>")  # shown escaped, never run
    assert status == 404 and "<img" not in body and "&lt;img src=x" in body
    for page in ("/", "/grid", "/memory", "/no-such-page"):  # the app page, as before (it routes itself)
        status, body = _get(handler, page)
        assert status == 200 and "Streamlit" in body, page


def test_the_server_is_started_with_the_page_not_found_handler():
    from streamlit.web.server.starlette import starlette_static_routes as routes

    from ui.serve import install_page_not_found

    original = routes.create_streamlit_static_handler
    try:
        assert install_page_not_found() and install_page_not_found()  # once, however often it is called
        assert routes.create_streamlit_static_handler.wrapped_for_page_not_found
        assert routes.create_streamlit_static_handler is not original
    finally:
        routes.create_streamlit_static_handler = original
