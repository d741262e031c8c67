"""Issue 19 through the real browser: on the Outliers page, the massive-activation tab names channel 507 and
draws the attention sink, and the rotation tab rotates the default model and shows that nothing changed but
the outliers, with no layout defect. One window of 64 tokens keeps the statistics to seconds."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ARTIFACTS
from tests.e2e.test_dashboard import LAYOUT_DEFECTS

pytestmark = pytest.mark.e2e


def test_massive_activations_and_rotation_in_the_browser(server_url, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(f"{server_url}/outliers")
    page.get_by_role("button", name="Collect statistics").wait_for(timeout=120_000)
    page.get_by_role("spinbutton", name="Windows").fill("1")
    page.keyboard.press("Enter")
    sliders = page.locator("[data-testid='stSlider']").filter(has_text="Tokens per window")
    slider = sliders.first.get_by_role("slider")  # the collection form's: the Rotation tab has one too
    slider.focus()
    for _ in range(4):  # 256 -> 64 tokens
        page.keyboard.press("ArrowLeft")
    page.wait_for_timeout(1000)
    page.get_by_role("button", name="Collect statistics").click()
    page.get_by_role("tab", name="Massive activations").click(timeout=300_000)
    page.get_by_role("button", name="Find massive activations").click(timeout=60_000)
    page.get_by_text("The attention sink").first.wait_for(timeout=300_000)
    assert "#507" in page.inner_text("[data-testid='stMain']")
    problems = page.evaluate(LAYOUT_DEFECTS)
    page.get_by_role("tab", name="Rotation").click()
    page.get_by_role("button", name="Rotate", exact=True).click(timeout=60_000)
    page.get_by_text("Same function").first.wait_for(timeout=300_000)
    problems += page.evaluate(LAYOUT_DEFECTS)
    assert page.locator("[data-testid='stException']").count() == 0
    page.screenshot(path=str(ARTIFACTS / "outliers-rotation.png"), full_page=True)
    page.close()
    assert not problems, problems
