"""A Compare generation in the browser survives other clicks: a checkbox and a trip to another page while
it runs leave it going, and it finishes with every column (issue 21, runs that survive clicks)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ARTIFACTS

pytestmark = pytest.mark.e2e


def test_a_generation_survives_a_widget_change_and_another_page(server_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(f"{server_url}/compare")
    page.get_by_role("button", name="Generate").wait_for(timeout=90_000)
    slider = page.locator("[data-testid='stSlider']").filter(has_text="Max new tokens").get_by_role("slider")
    slider.focus()
    for _ in range(44):  # 48 -> 4 new tokens: the variants are built first, which leaves time to click
        page.keyboard.press("ArrowLeft")
    page.get_by_role("button", name="Generate").click()
    page.get_by_role("button", name="Stop").wait_for(timeout=60_000)  # it runs
    page.get_by_text("Underline tokens by KL").click()  # another widget: the page reruns
    page.get_by_role("button", name="Stop").wait_for(timeout=10_000)  # still running (or just done)
    page.get_by_role("link", name="Memory sizing").click()  # another page, then back
    page.get_by_text("Memory by component").first.wait_for(timeout=60_000)
    page.get_by_role("link", name="Compare generations").click()
    page.get_by_text("Agreement counts identical tokens").first.wait_for(timeout=300_000)  # finished
    body = page.inner_text("body")
    assert "The last run was stopped" not in body and "Not generated" not in body
    assert body.count("first divergence") >= 4  # every column finished: the reference and 3 variants
    assert "Stopped: the tokens generated so far" not in body
    assert page.locator("[data-testid='stException']").count() == 0
    page.get_by_role("button", name="Stop").wait_for(state="detached", timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "compare-survives.png"), full_page=True)
    page.close()
