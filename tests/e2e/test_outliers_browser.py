"""The Outliers page in the real browser. Issue 19: the massive-activation tab names channel 507 and draws
the attention sink, and the rotation tab rotates the default model and shows that nothing changed but the
outliers, with no layout defect. Issue 21: a click on a cell of the weights heatmap opens the Quantization
grid on that tensor (its layer and weight selected) with an "Opened from" note, and the note's button goes
back to Outliers. One window of 64 tokens keeps the statistics to seconds (and the second test finds them
collected on this server already)."""

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


# the pixel centre of one cell of the weights heatmap (layer `x`, module `y`), relative to the page
CELL_CENTRE = """([layer, module]) => {
  const plot = [...document.querySelectorAll('.js-plotly-plot')]
    .find((gd) => ((gd.layout.title || {}).text || '').includes('>Weights:'));
  const full = plot._fullLayout, box = plot.getBoundingClientRect();
  return {x: box.left + full._size.l + full.xaxis.d2p(layer), y: box.top + full._size.t + full.yaxis.d2p(module)};
}"""


def _collect_small_statistics(page) -> None:
    page.get_by_role("button", name="Collect statistics").wait_for(timeout=120_000)
    page.get_by_role("spinbutton", name="Windows").fill("1")
    page.keyboard.press("Enter")
    slider = page.locator("[data-testid='stSlider']").filter(has_text="Tokens per window").first
    slider.get_by_role("slider").focus()
    for _ in range(4):  # 256 -> 64 tokens
        page.keyboard.press("ArrowLeft")
    page.wait_for_timeout(1000)
    page.get_by_role("button", name="Collect statistics").click()


def _selected(where, label: str) -> str:
    """The value a selectbox shows."""
    select = where.locator("[data-testid='stSelectbox']").filter(has_text=label).first
    return select.locator("input").first.input_value()


def test_heatmap_cell_opens_the_grid_on_that_tensor(server_url, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{server_url}/outliers")
    _collect_small_statistics(page)
    page.get_by_text("Click a cell or a bar").first.wait_for(timeout=300_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot')]"
        ".some((gd) => ((gd.layout.title || {}).text || '').includes('>Weights:'))",
        timeout=60_000,
    )
    heatmap = page.locator("[data-testid='stPlotlyChart']").first
    heatmap.scroll_into_view_if_needed()
    centre = page.evaluate(CELL_CENTRE, [3, "down_proj"])
    page.mouse.move(centre["x"], centre["y"])
    page.wait_for_timeout(300)
    page.mouse.click(centre["x"], centre["y"])

    page.get_by_text("Opened from Outliers: the weights heatmap").wait_for(timeout=120_000)
    assert "/grid" in page.url and "from=outliers" in page.url and "grid_layer=layer+3" in page.url
    metric = page.locator("[data-testid='stMetric']").filter(has_text="Bits per weight")
    metric.first.wait_for(timeout=120_000)  # the tensor's view is drawn
    main = page.locator("[data-testid='stMain']")
    assert _selected(main, "Layer") == "layer 3"
    assert _selected(main, "Weight") == "down_proj  (576×1536)"
    assert page.locator("[data-testid='stException']").count() == 0
    assert "Ignored from the link" not in page.inner_text("[data-testid='stMain']")
    page.screenshot(path=str(ARTIFACTS / "clickthrough-grid.png"), full_page=True)

    page.get_by_role("button", name="Back to Outliers").click()
    page.get_by_text("Residual outlier channel").first.wait_for(timeout=120_000)  # the kept statistics
    assert "/outliers" in page.url and "outliers_windows=1" in page.url
    assert page.locator("[data-testid='stException']").count() == 0
    assert "Ignored from the link" not in page.inner_text("[data-testid='stMain']")
    page.close()
