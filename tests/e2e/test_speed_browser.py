"""The Speed page in headless Chromium: the default microbenchmarks (ours and bitsandbytes') and the
default decode benchmark run, their four charts render, and the browser logs no error."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ARTIFACTS

pytestmark = pytest.mark.e2e


def test_speed_benchmarks_in_the_browser(server_url, browser):
    page = browser.new_page(viewport={"width": 1500, "height": 1600})
    console_errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    missing: list[str] = []  # URLs answered 404
    page.on("response", lambda response: response.status == 404 and missing.append(response.url))
    page.goto(server_url)  # from the root: the router serves the pages
    page.get_by_role("link", name="Speed").first.click()
    page.get_by_role("button", name="Run microbenchmarks").wait_for(timeout=90_000)
    # then a link with lighter settings (two batch sizes, 3 repeats, 8 new tokens): the page restores them
    page.goto(f"{server_url}/speed?speed_batches=1%2C16&speed_repeats=3&speed_new_tokens=8")
    page.get_by_role("button", name="Run microbenchmarks").wait_for(timeout=90_000)
    assert "Ignored from the link" not in page.inner_text("body")
    page.get_by_role("button", name="Run microbenchmarks").click()
    page.get_by_text("All kernel timings").first.wait_for(timeout=240_000)
    page.locator("[data-testid='stPlotlyChart']").nth(1).wait_for(timeout=30_000)
    assert page.locator("[data-testid='stPlotlyChart']").count() == 2  # speed-up and GB/s
    legend = page.locator("[data-testid='stPlotlyChart']").first.inner_text()
    for fmt in ("fp32", "W4A16", "NF4 (bnb)", "LLM.int8 (bnb)"):
        assert fmt in legend, f"{fmt} missing from the speed-up chart's legend"

    page.get_by_role("button", name="Run decode benchmark").click()
    page.get_by_text("Measured copy bandwidth").first.wait_for(timeout=240_000)
    page.locator("[data-testid='stPlotlyChart']").nth(3).wait_for(timeout=30_000)
    assert page.locator("[data-testid='stPlotlyChart']").count() == 4  # decode and prefill join them
    assert "Fastest decode" in page.inner_text("body")
    assert page.locator("[data-testid='stException']").count() == 0
    page.screenshot(path=str(ARTIFACTS / "speed-run.png"), full_page=True)
    page.close()
    # Opened at /speed?..., Streamlit's frontend first probes /speed/_stcore/* for a base path, then the
    # root: those two 404s are its normal start from a deep link, not an error of ours
    probes = [url for url in missing if "/speed/_stcore/" in url]
    if probes and len(probes) == len(missing):
        console_errors = [e for e in console_errors if "status of 404" not in e]
    assert not console_errors, (console_errors, missing)
