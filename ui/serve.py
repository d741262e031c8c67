"""`python -m ui.serve [streamlit options]`: import everything the pages import, then serve `app.py`.

Streamlit runs each browser session's script in its own thread. On a fresh server, a page opened while
the first session is still loading (Streamlit can run a page of `pages/` on its own) imports the same
modules from a second thread, and first imports are not safe from two threads: Python's per-module import
locks can deadlock (it then hands one thread a half-initialized module: "cannot import name ... from
partially initialized module"), and numpy's own first import is not re-entrant. Importing everything once,
here, before the server accepts a connection leaves every later import a lookup in sys.modules.

What to import is read from the page files' top-level imports, so a new page or import needs no list here.
"""

from __future__ import annotations

import ast
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


def main() -> int:
    preload()
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(ROOT / "app.py"), *sys.argv[1:]]
    return cli.main()


if __name__ == "__main__":
    raise SystemExit(main())
