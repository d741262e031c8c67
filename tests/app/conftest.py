"""AppTest helpers: run the real app script, switch pages, and fail on any exception element."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    "overview",
    "grid",
    "outliers",
    "methods",
    "planner",
    "compare",
    "evaluate",
    "memory",
    "speed",
    "learn",
]
TIMEOUT = 120  # seconds per script run: the first run loads the default model


@pytest.fixture(autouse=True)
def fresh_model_store(monkeypatch):
    """Each test its own store of per-session models: the process-wide one would keep every finished
    test's Methods-lab models (up to the whole budget) for the rest of the worker's tests."""
    from ui.cache import session_models

    store = session_models.BudgetedStore(session_models.budget_bytes())
    monkeypatch.setattr(session_models, "_STORE", store)
    return store


def no_exceptions(app: AppTest) -> None:
    assert not app.exception, [exception.message for exception in app.exception]


@pytest.fixture
def app() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)


def open_page(app: AppTest, page: str) -> AppTest:
    app.run()
    app.switch_page(f"pages/{page}.py")
    app.run()
    no_exceptions(app)
    return app
