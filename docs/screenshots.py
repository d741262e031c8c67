"""Refresh the README's screenshots in docs/img: the running app (`python -m ui.serve`) in headless Chromium
at 1280x720, each page after the interaction that makes it worth a picture.

    .venv/bin/python docs/screenshots.py            # every page
    .venv/bin/python docs/screenshots.py evaluate   # one page

Takes a few minutes on two CPU cores (the Evaluate grid and a Compare generation run for real). Each page is
also measured for the layout defects the browser walk fails on (`tests/e2e/test_dashboard.py`), after its
interaction, so the charts that only appear after a run are checked too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS, _free_port, _wait_healthy  # noqa: E402
from tests.e2e.test_dashboard import LAYOUT_DEFECTS  # noqa: E402

IMG = ROOT / "docs" / "img"
WIDTH, HEIGHT = 1280, 1400  # wide as a laptop, tall enough to show the page past its first chart


def overview(page, url):
    page.goto(url)
    page.get_by_text("Parameters by module type").first.wait_for(timeout=120_000)


def grid(page, url):
    page.goto(f"{url}/grid")
    page.get_by_text("All schemes on this tensor").first.wait_for(timeout=120_000)


def outliers(page, url):
    page.goto(f"{url}/outliers")
    page.get_by_role("button", name="Collect statistics").click(timeout=120_000)
    page.get_by_role("tab", name="Activations").click(timeout=600_000)  # after the collection
    page.locator(".js-plotly-plot >> visible=true").first.wait_for(timeout=120_000)


def evaluate(page, url):
    page.goto(f"{url}/evaluate")
    page.get_by_role("button", name="Run grid").wait_for(timeout=120_000)
    page.get_by_role("spinbutton", name="Windows").fill("1")
    page.keyboard.press("Enter")
    page.wait_for_timeout(1500)
    page.get_by_role("button", name="Run grid").click()
    page.get_by_text("Quality cost of each cell").first.wait_for(timeout=600_000)


def compare(page, url):
    page.goto(f"{url}/compare")
    page.get_by_role("button", name="Generate").wait_for(timeout=120_000)
    slider = page.locator("[data-testid='stSlider']").filter(has_text="Max new tokens").get_by_role("slider")
    slider.focus()
    for _ in range(30):
        page.keyboard.press("ArrowLeft")
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Agreement counts identical tokens").first.wait_for(timeout=600_000)


def memory(page, url):
    page.goto(
        f"{url}/memory?memory_catalog=mixtral-8x7b-v0.1&memory_formats=Q4_K_M%2Cbf16&memory_gpu=NVIDIA+RTX+4090+24GB"
    )
    page.get_by_text("Memory by component").first.wait_for(timeout=120_000)
    page.get_by_role("tab", name="Offload to CPU").click()
    page.get_by_text("The speed cliff").first.wait_for(timeout=60_000)


def tour(page, url):
    """Presenter mode on the tour's step 8 (gpt-oss-120b as it ships)."""
    from ui.tour import step_link

    page.goto(f"{url}{step_link(8)}")
    page.get_by_text("Step 8 of 10").first.wait_for(timeout=120_000)


def speed(page, url):
    page.goto(f"{url}/speed")
    page.get_by_role("heading", name="Speed").first.wait_for(timeout=120_000)


def methods(page, url):
    page.goto(f"{url}/methods")
    page.get_by_role("button", name="Run", exact=True).click(timeout=120_000)  # RTN and GPTQ, the defaults
    page.get_by_text("Weight SQNR per linear layer").first.wait_for(timeout=900_000)


def planner(page, url):
    page.goto(f"{url}/planner")
    page.get_by_role("button", name="Measure costs").click(timeout=120_000)  # every layer, 1 x 128 tokens
    page.get_by_text("Budget (average bits per weight)").first.wait_for(timeout=900_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)  # the layer x module map
    page.mouse.move(1, 1)  # away from the button, whose tooltip would cover the candidate picker


def learn(page, url):
    page.goto(f"{url}/learn")
    page.get_by_role("heading", name="Learn").first.wait_for(timeout=120_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=300_000)  # the first lesson's chart


PAGES = [overview, grid, outliers, evaluate, compare, memory, speed, methods, planner, learn, tour]


def main(names: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    chosen = [p for p in PAGES if not names or p.__name__ in names]
    port = _free_port()
    command = [sys.executable, "-m", "ui.serve", "--server.port", str(port), "--server.headless", "true"]
    command += ["--browser.gatherUsageStats", "false", "--server.address", "127.0.0.1"]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, server, 120)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            for show in chosen:
                page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
                show(page, url)
                page.wait_for_timeout(2000)  # charts finish drawing
                IMG.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(IMG / f"{show.__name__}.png"), full_page=True)
                defects = page.evaluate(LAYOUT_DEFECTS)  # after the run: its charts and tables too
                print(f"docs/img/{show.__name__}.png" + (f"  layout defects: {defects}" if defects else ""))
                page.close()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main(sys.argv[1:])
