"""Three browser sessions at once against one server: a long evaluation grid in one session must not
freeze the other two, which pick another scheme and another page (issue 9)."""

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
        windows = evaluating.get_by_label("Windows")
        windows.fill("1", timeout=90_000)  # 6 cells x 1 window x 256 tokens: long enough to overlap
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
        # the grid session is still running (or just finished): the others were served meanwhile
        evaluating.get_by_text("What the study found").first.wait_for(timeout=600_000)
        grid_done = time.monotonic() - started
        for page, name in ((evaluating, "evaluate"), (sizing, "memory"), (gridding, "grid")):
            assert page.locator("[data-testid='stException']").count() == 0, name
            page.screenshot(path=str(ARTIFACTS / f"concurrent-{name}.png"), full_page=True)
        assert others_done < grid_done, (others_done, grid_done)
        print(f"other sessions served after {others_done:.1f} s; the grid finished after {grid_done:.1f} s")
    finally:
        for context in contexts:
            context.close()
