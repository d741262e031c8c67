"""Three browser sessions at once against one server: a long evaluation grid in one session must not
freeze the other two, which open other pages while it runs (issue 9). The grid's own result is tested
under AppTest (tests/app/test_evaluate_page.py, tests/app/test_sessions.py)."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import ARTIFACTS

pytestmark = pytest.mark.e2e


def test_three_sessions_at_once(server_url, browser):
    contexts = [browser.new_context(viewport={"width": 1400, "height": 1200}) for _ in range(3)]
    evaluating, sizing, gridding = (context.new_page() for context in contexts)
    try:
        evaluating.goto(f"{server_url}/evaluate")
        windows = evaluating.get_by_role("spinbutton", name="Windows")
        windows.fill("1", timeout=90_000)  # 7 cells x 1 window x 256 tokens: long enough to overlap
        windows.press("Enter")
        evaluating.get_by_text("on 1 windows").first.wait_for(timeout=30_000)
        evaluating.get_by_role("button", name="Run grid").click(timeout=30_000)
        started = time.monotonic()
        evaluating.get_by_text("Starting").or_(evaluating.get_by_text("Window")).first.wait_for(
            timeout=60_000
        )

        sizing.goto(f"{server_url}/memory")
        sizing.get_by_text("Memory by component").first.wait_for(timeout=120_000)
        assert "8.030 B" in sizing.inner_text("body")
        gridding.goto(f"{server_url}/grid")
        gridding.get_by_text("All schemes on this tensor").first.wait_for(timeout=120_000)
        others_done = time.monotonic() - started
        # while the grid keeps computing in its own session, the other two were served
        for page, name in ((evaluating, "evaluate"), (sizing, "memory"), (gridding, "grid")):
            assert page.locator("[data-testid='stException']").count() == 0, name
            page.screenshot(path=str(ARTIFACTS / f"concurrent-{name}.png"), full_page=True)
        assert others_done < 240, others_done
        print(f"other sessions served {others_done:.1f} s after the grid started")
    finally:
        for context in contexts:
            context.close()
