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
