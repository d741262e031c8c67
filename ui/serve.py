"""`python -m ui.serve [streamlit options]`: import everything the pages import, then serve `app.py`.

Streamlit runs each browser session's script in its own thread. On a fresh server, a page opened while
the first session is still loading (Streamlit can run a page of `pages/` on its own) imports the same
modules from a second thread, and first imports are not safe from two threads: Python's per-module import
locks can deadlock (it then hands one thread a half-initialized module: "cannot import name ... from
partially initialized module"), and numpy's own first import is not re-entrant. Importing everything once,
here, before the server accepts a connection leaves every later import a lookup in sys.modules.

What to import is read from the page files' top-level imports, so a new page or import needs no list here.

It also answers a URL deeper than a page (/grid/extra) with a "page not found" page in words: Streamlit
serves its app page for any unknown path, whose relative asset links then point under /grid/ and get that
page back instead of JavaScript, so the browser showed a blank white page (`install_page_not_found`).
"""

from __future__ import annotations

import ast
import html
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def page_imports(folder: Path = ROOT / "pages") -> list[str]:
    """Modules imported at the top of app.py and the page files (`from a.b import c`: a.b, and a.b.c)."""
    names: set[str] = set()
    for path in [ROOT / "app.py", *sorted(folder.glob("*.py"))]:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif (
                isinstance(node, ast.ImportFrom)
                and node.module not in (None, "__future__")
                and not node.level
            ):
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return sorted(names)


def preload() -> list[str]:
    """Import every module in `page_imports()`; returns those that are modules (not names in one)."""
    loaded = []
    for name in page_imports():
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real module whose own dependency is missing: say so
                raise
            continue  # `from a.b import c` with c a name in a.b
        loaded.append(name)
    return loaded


def page_links(app: Path = ROOT / "app.py") -> dict[str, str]:
    """Page title -> URL path ("" for the default page), read from app.py's `st.Page(...)` calls."""
    links = {}
    for node in ast.walk(ast.parse(app.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Page" and node.args:
            keywords = {k.arg: k.value for k in node.keywords if isinstance(k.value, ast.Constant)}
            script = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
            if not isinstance(script, str):
                continue
            title = keywords["title"].value if "title" in keywords else Path(script).stem
            default = "default" in keywords and keywords["default"].value is True
            links[title] = "" if default else Path(script).stem
    return links


def page_not_found_html(path: str, base_url: str | None) -> str:
    """A small page saying, in words, that there is no page at `path`, with a link to every page."""
    prefix = "/" + (base_url or "").strip("/")
    items = "".join(
        f'<li><a href="{html.escape(prefix.rstrip("/") + "/" + url)}">{html.escape(title)}</a></li>'
        for title, url in page_links().items()
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Page not found · Quantization '
        'Explorer</title></head><body style="font-family: sans-serif; max-width: 40rem; margin: 3rem auto">'
        f"<h1>Page not found</h1><p>There is no page at <code>{html.escape(path)}</code> in Quantization "
        f"Explorer. Its pages are:</p><ul>{items}</ul></body></html>"
    )


def with_page_not_found(handler, base_url: str | None):
    """Wrap Streamlit's static-files handler: a path of two or more segments that is no file gets a 404
    page in words instead of the app page (whose relative links would break there: a blank page)."""
    from starlette.responses import FileResponse, HTMLResponse

    serve = handler.get_response
    index = str(Path(handler.directory) / "index.html")

    async def get_response(path: str, scope):
        response = await serve(path, scope)
        segments = [part for part in str(path).replace("\\", "/").split("/") if part not in ("", ".")]
        if len(segments) > 1 and isinstance(response, FileResponse) and str(response.path) == index:
            return HTMLResponse(page_not_found_html(scope.get("path", path), base_url), status_code=404)
        return response

    handler.get_response = get_response
    return handler


def install_page_not_found() -> bool:
    """Make the server built by `streamlit run` use `with_page_not_found`; False where this Streamlit has
    no Starlette static handler to wrap (then such URLs stay blank, as before)."""
    try:
        from streamlit.web.server.starlette import starlette_static_routes as routes
    except ImportError:
        return False
    create = getattr(routes, "create_streamlit_static_handler", None)
    if create is None or getattr(create, "wrapped_for_page_not_found", False):
        return create is not None

    def create_with_page_not_found(directory: str, base_url: str | None):
        return with_page_not_found(create(directory, base_url), base_url)

    create_with_page_not_found.wrapped_for_page_not_found = True
    routes.create_streamlit_static_handler = create_with_page_not_found
    return True


def main() -> int:
    preload()
    install_page_not_found()
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(ROOT / "app.py"), *sys.argv[1:]]
    return cli.main()


if __name__ == "__main__":
    raise SystemExit(main())
