"""Issue 21 through the real browser: the guided tour's start link opens step 1 in presenter mode (no sidebar),
and Next walks all ten steps, each on its own page with its narration, without an exception. A step only
preselects widgets, so no step starts a long run."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ARTIFACTS
from ui import tour
from ui.presenter import START_LINK

pytestmark = pytest.mark.e2e


def test_the_tour_walks_all_ten_steps(server_url, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{server_url}{START_LINK}")
    banner = page.locator(".st-key-qe_tour_banner")
    for number, step in enumerate(tour.STEPS, start=1):
        banner.get_by_text(f"Step {number} of {len(tour.STEPS)}").wait_for(timeout=120_000)
        banner.get_by_text(step.narration).wait_for(timeout=30_000)
        path = "/" + step.page.removeprefix("pages/").removesuffix(".py")
        assert page.url.split("?")[0].endswith(path), (number, page.url)
        assert f"tour={number}" in page.url and "present=1" in page.url, page.url
        assert page.locator("[data-testid='stException']").count() == 0, number
        ignored = page.get_by_text("Ignored from the link")  # every step's selections are valid
        assert ignored.count() == 0, (number, ignored.first.inner_text())
        if number == 1:
            assert not page.locator("[data-testid='stSidebar']").is_visible()  # presenter mode hides it
            page.screenshot(path=str(ARTIFACTS / "tour-step-1.png"))
        if number < len(tour.STEPS):
            banner.get_by_role("button", name="Next").click()
    assert banner.get_by_role("button", name="Next").is_disabled()
    page.get_by_role("button", name="End tour").click()
    banner.wait_for(state="detached", timeout=30_000)
    assert page.locator("[data-testid='stException']").count() == 0
    page.close()
