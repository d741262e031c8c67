"""Two first script runs at once on a fresh server import the app from two threads: the root page's run
(app.py: the sidebar and the cached calls) and a page opened meanwhile, which Streamlit can run on its
own. When `engine/__init__.py` imported every submodule eagerly, Python's per-module import locks
deadlocked between the package and a submodule, and the Evaluate page failed in the browser with "cannot
import name 'run_grid' from partially initialized module" (tests/e2e/test_uploads_and_cancel.py, on a
fresh server). Each pair below runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.app.conftest import ROOT

RACE = """
import importlib, sys, threading, time
errors = []

def run(name, delay):
    try:
        time.sleep(delay)
        importlib.import_module(name)
    except Exception as exc:
        errors.append(f"{name}: {exc!r}")

threads = [threading.Thread(target=run, args=("ui.page", 0.0)), threading.Thread(target=run, args=(sys.argv[1], 0.3))]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(errors or "ok")
"""


@pytest.mark.parametrize(
    "second", ["engine.evaluation.study", "engine.speed", "engine.methods", "engine.lessons", "engine"]
)
def test_a_page_opened_while_the_app_loads_imports_cleanly(second):
    result = subprocess.run(
        [sys.executable, "-c", RACE, second], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "ok", result.stdout
