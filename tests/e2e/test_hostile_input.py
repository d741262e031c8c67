"""Issue 22 through the real browser: a hostile user's inputs each end in a message in words, with the
sidebar whole and no exception element. (The AppTest side is tests/app/test_refusals.py and
tests/app/test_pages.py; the engine side, tests/test_bad_input.py.)"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ARTIFACTS

pytestmark = pytest.mark.e2e


def no_exception(page, where: str) -> None:
    assert page.locator("[data-testid='stException']").count() == 0, where


def test_a_model_path_over_the_name_limit(server_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(server_url)
    page.get_by_text("Parameters by module type").first.wait_for(timeout=120_000)
    sidebar = page.locator("[data-testid='stSidebar']")
    sidebar.get_by_text("Local Hugging Face folder").click()
    sidebar.get_by_role("textbox", name="Folder, Hub id or .gguf path").fill("/tmp/" + "a" * 300)
    sidebar.get_by_role("button", name="Load model").click()
    sidebar.get_by_text("longer than this system allows").first.wait_for(timeout=60_000)
    no_exception(page, "long path")
    assert sidebar.get_by_text("Glossary", exact=True).count() == 1  # the rest of the sidebar is drawn
    assert "Errno" not in sidebar.inner_text()
    page.get_by_role("link", name="Quantization grid").first.click()  # the next page: the same message
    page.get_by_text("All schemes on this tensor").first.wait_for(timeout=60_000)
    assert sidebar.get_by_text("longer than this system allows").count() == 1
    no_exception(page, "grid after the long path")
    page.screenshot(path=str(ARTIFACTS / "long-model-path.png"), full_page=True)
    page.close()


def test_compare_refusals_are_said_next_to_the_button(server_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(f"{server_url}/compare")
    page.get_by_role("button", name="Generate").wait_for(timeout=120_000)
    prompt = page.get_by_role("textbox", name="Prompt")
    prompt.fill("Tell me about Paris. " * 1_100)  # 23,100 characters: the box used to drop the paste
    assert len(prompt.input_value()) == 23_100
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("23,100 characters long; the limit is 20,000").first.wait_for(timeout=60_000)
    prompt.fill("Name a colour.")
    temperature = page.get_by_role("spinbutton", name="Temperature")
    temperature.fill("5")
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Temperature must be from 0.0 to 2.0 (it is 5.0).").first.wait_for(timeout=60_000)
    no_exception(page, "compare refusals")
    page.screenshot(path=str(ARTIFACTS / "compare-refusals.png"), full_page=True)
    page.close()


def test_uploaders_advertise_what_the_app_takes(server_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(f"{server_url}/memory")
    page.get_by_text("Memory by component").first.wait_for(timeout=120_000)
    page.get_by_text("Upload config.json", exact=True).first.click()
    uploader = page.locator("[data-testid='stFileUploader']")
    uploader.get_by_text("2MB per file").first.wait_for(timeout=30_000)  # what config_from_json takes
    assert "50MB" not in uploader.inner_text() and "200MB" not in uploader.inner_text()
    page.close()


def test_a_path_below_a_page_says_page_not_found(server_url, browser):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    response = page.goto(f"{server_url}/grid/extra")
    assert response is not None and response.status == 404
    page.get_by_text("There is no page at").wait_for(timeout=30_000)
    page.get_by_role("link", name="Quantization grid").click()
    page.get_by_text("All schemes on this tensor").first.wait_for(timeout=120_000)
    no_exception(page, "grid after page not found")
    page.close()
