"""The running dashboard in headless Chromium: health endpoint, overview numbers, every page opens."""

from __future__ import annotations

import urllib.request

import pytest

from tests.e2e.conftest import ARTIFACTS

pytestmark = pytest.mark.e2e
NAV = ["Quantization grid", "Outliers", "Methods lab", "Compare generations", "Evaluate", "Memory sizing"]
NAV += ["Plan a recipe", "Speed", "Learn", "Overview"]


def test_health_endpoint(server_url):
    with urllib.request.urlopen(f"{server_url}/_stcore/health", timeout=5) as response:
        assert response.read().strip() == b"ok"


def test_a_page_url_as_the_servers_first_request(server_url, browser):
    """Must run before any other browser test: Streamlit's v1 multipage mode would otherwise run
    pages/grid.py without the router (raw file names in the navigation, no page config)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server_url}/grid")
    page.get_by_text("All schemes on this tensor").first.wait_for(timeout=90_000)
    assert page.get_by_role("link", name="Quantization grid").count() >= 1
    assert page.get_by_role("link", name="grid", exact=True).count() == 0
    page.close()


# What a careful reader sees as broken at a given window size (issue 22), measured in the page:
# horizontal scrolling, a chart title that runs into its legend or past the chart, a table whose
# columns do not all fit, a metric or a multiselect chip whose text is cut.
LAYOUT_DEFECTS = """() => {
  const problems = [];
  const overlap = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  if (document.documentElement.scrollWidth > window.innerWidth + 1) problems.push('page scrolls sideways');
  document.querySelectorAll('.js-plotly-plot').forEach((chart, i) => {
    const title = chart.querySelector('.gtitle');
    const legend = chart.querySelector('.legend');
    if (!title || !title.textContent) return;
    const t = title.getBoundingClientRect(), c = chart.getBoundingClientRect();
    const name = title.textContent.slice(0, 40);
    if (t.right > c.right + 1 || t.left < c.left - 1) problems.push(`title cut: ${name}`);
    if (legend && overlap(t, legend.getBoundingClientRect())) problems.push(`title under legend: ${name}`);
  });
  document.querySelectorAll("[data-testid='stDataFrame'] .dvn-scroller").forEach((grid) => {
    if (grid.scrollWidth > grid.clientWidth + 2) problems.push('table columns hidden');
  });
  document.querySelectorAll("[data-testid='stMetricValue'] > div, [data-testid='stMetricLabel'] p").forEach((m) => {
    if (m.scrollWidth > m.clientWidth + 1) problems.push(`metric cut: ${m.textContent}`);
  });
  document.querySelectorAll("[data-testid='stMultiSelectTagsContainer']").forEach((box) => {
    if (box.scrollWidth > box.clientWidth + 1 || box.scrollHeight > box.clientHeight + 1) problems.push('chips hidden');
  });
  document.querySelectorAll("[data-tag] > span:first-child, [data-baseweb='tag'] span").forEach((chip) => {
    if (chip.scrollWidth > chip.clientWidth + 1) problems.push(`chip cut: ${chip.textContent}`);
  });
  return problems;
}"""
SIZES = [(1280, 720), (1920, 1080)]


def test_every_page_in_the_browser(server_url, browser):
    """Every page opens without an exception or a console error, and shows no layout defect at 1280x720
    nor at 1920x1080 (the window is resized on each page rather than walking the pages twice)."""
    (width, height), *others = SIZES
    page = browser.new_page(viewport={"width": width, "height": height})
    console_errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto(server_url)
    page.get_by_text("Parameters by module type").first.wait_for(timeout=90_000)
    body = page.inner_text("body")
    for expected in ("134.5 M", "576", "9 / 3", "49,152", "Q4_1"):
        assert expected in body, f"overview lacks {expected!r}"
    defects = {}
    for title in NAV:
        page.get_by_role("link", name=title).first.click()
        page.get_by_role("heading", name=title).first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)  # charts and tables draw after the heading
        assert page.locator("[data-testid='stException']").count() == 0, f"exception on {title}"
        name = title.lower().replace(" ", "-")
        for size in [(width, height), *others]:
            if size != (width, height):
                page.set_viewport_size({"width": size[0], "height": size[1]})
                page.wait_for_timeout(700)  # charts redraw at the new width
            if found := page.evaluate(LAYOUT_DEFECTS):
                defects[f"{title} at {size[0]}x{size[1]}"] = found
            page.screenshot(path=str(ARTIFACTS / f"{name}-{size[0]}.png"), full_page=True)
        page.set_viewport_size({"width": width, "height": height})
    assert not defects, defects
    assert not console_errors, (console_errors, failed)
    page.close()


def test_memory_estimate_in_the_browser(server_url, browser):
    """Pick a catalog model and a context in the real page; the numbers follow."""
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(f"{server_url}/memory")
    page.get_by_text("Memory by component").first.wait_for(timeout=90_000)
    assert "8.030 B" in page.inner_text("body")  # Llama-3.1-8B by default
    select = page.locator("[data-testid='stSelectbox']").filter(has_text="Catalog model")
    select.locator("input").first.click()
    page.keyboard.type("Mixtral-8x7B")  # the select filters as you type
    page.get_by_role("option").filter(has_text="Mixtral-8x7B").first.click()
    page.get_by_text("46.703 B").first.wait_for(timeout=30_000)  # total parameters
    assert "12.880 B" in page.inner_text("body")  # active per token: 2 of 8 experts
    page.get_by_role("tab", name="Offload to CPU").click()  # the speed cliff as layers leave the GPU
    page.get_by_text("The speed cliff").first.wait_for(timeout=30_000)
    page.get_by_role("tab", name="Best fit").click()
    page.get_by_text("Best fit on one").first.wait_for(timeout=30_000)
    assert page.locator("[data-testid='stException']").count() == 0
    page.screenshot(path=str(ARTIFACTS / "memory-mixtral.png"), full_page=True)
    page.close()


def test_compare_generation_in_the_browser(server_url, browser):
    """A short generation on the Compare page: the reference and its variants stream, then the summary. It
    survives other clicks (issue 21): a checkbox and a trip to another page while it runs leave it going,
    and it finishes with every column."""
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(f"{server_url}/compare")
    page.get_by_role("button", name="Generate").wait_for(timeout=90_000)
    slider = (  # max new tokens: down to a few with the keyboard
        page.locator("[data-testid='stSlider']").filter(has_text="Max new tokens").get_by_role("slider")
    )
    slider.focus()
    for _ in range(40):
        page.keyboard.press("ArrowLeft")
    page.get_by_role("button", name="Generate").click()
    page.get_by_role("button", name="Stop").wait_for(timeout=60_000)  # it runs (variants are built first)
    page.get_by_text("Underline tokens by KL").click()  # another widget: the page reruns
    page.get_by_role("link", name="Memory sizing").click()  # another page, then back
    page.get_by_text("Memory by component").first.wait_for(timeout=60_000)
    page.get_by_role("link", name="Compare generations").click()
    page.get_by_text("Agreement counts identical tokens").first.wait_for(
        timeout=300_000
    )  # after every column
    body = page.inner_text("body")
    assert "Paris" in body  # the reference answers the default prompt
    assert "The last run was stopped" not in body and "Not generated" not in body
    assert body.count("first divergence") >= 4  # every column finished: the reference and 3 variants
    assert page.locator("[data-testid='stException']").count() == 0
    page.wait_for_timeout(1500)  # let the summary table render
    page.screenshot(path=str(ARTIFACTS / "compare-generation.png"), full_page=True)
    page.close()


def test_changing_the_scheme_in_the_browser(server_url, browser):
    """The sidebar's scheme drives the grid page: int4 -> int8 changes bits per weight and SQNR."""
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(f"{server_url}/grid")
    page.get_by_text("All schemes on this tensor").first.wait_for(timeout=90_000)
    page.get_by_text("4.250").first.wait_for(timeout=60_000)  # int4 g64 with fp16 scales
    bits = page.locator("[data-testid='stSidebar'] [data-testid='stSlider']").filter(has_text="Bits")
    bits.get_by_role("slider").focus()
    for _ in range(4):  # 4 -> 8 bits
        page.keyboard.press("ArrowRight")
    page.get_by_text("8.250").first.wait_for(timeout=60_000)
    assert page.locator("[data-testid='stException']").count() == 0
    page.screenshot(path=str(ARTIFACTS / "grid-int8.png"), full_page=True)
    page.close()
