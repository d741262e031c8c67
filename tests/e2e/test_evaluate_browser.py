"""Issue 22 through the real browser: Evaluate's heatmap colours follow the fixed scale and its legend says
what each colour means, in the figure the browser actually drew. (The AppTest side of the colour rule is
tests/app/test_evaluate_charts.py.) One window of 256 tokens keeps the quick grid to seconds per cell."""

from __future__ import annotations

import pytest

from engine.evaluation.study import BANDS
from tests.e2e.conftest import ARTIFACTS
from ui.pages.evaluate_charts import BAND_COLORS, band_legend

pytestmark = pytest.mark.e2e

# the first heatmap's data and colour scale, as plotly holds them on the graph's div in the browser
HEATMAP = """() => {
  for (const div of document.querySelectorAll('.js-plotly-plot')) {
    const trace = (div.data || [])[0];
    if (trace && trace.type === 'heatmap') {
      return {x: trace.x, z: trace.z, zmax: trace.zmax, colorscale: trace.colorscale,
              ticks: trace.colorbar.ticktext};
    }
  }
  return null;
}"""


def colour(heatmap: dict, row: int, column: int) -> str:
    z = heatmap["z"][row][column] / heatmap["zmax"]
    steps = heatmap["colorscale"][::2]
    return next(color for start, color in steps if start <= z < start + 1 / len(BANDS))


def test_the_heatmap_colours_a_broken_cell_broken_beside_a_close_one(server_url, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(f"{server_url}/evaluate")
    page.get_by_role("button", name="Run grid").wait_for(timeout=120_000)
    select = page.locator("[data-testid='stSelectbox']").filter(has_text="Text (held-out")
    select.locator("input").first.click()  # the Python docs: cells of its own, not the concurrent test's
    page.get_by_role("option").filter(has_text="Python documentation").first.click()
    page.get_by_role("spinbutton", name="Windows").fill("1")
    page.keyboard.press("Enter")
    page.get_by_text("1 windows").first.wait_for(timeout=60_000)  # the page took the new window count
    page.get_by_role("button", name="Run grid").click()
    page.get_by_text("Quality cost of each cell").first.wait_for(timeout=300_000)
    heatmap = page.wait_for_function(HEATMAP, timeout=60_000).json_value()
    assert heatmap["ticks"] == band_legend()
    close, broken = BAND_COLORS[BANDS.index("close")], BAND_COLORS[BANDS.index("broken")]
    cells = heatmap["x"]
    for metric in range(3):
        assert colour(heatmap, metric, cells.index("W8")) == close
        assert colour(heatmap, metric, cells.index("W2")) == broken  # beside W8, never "close"
    page.get_by_text("close: Δppl ≤ +2%").first.wait_for(timeout=10_000)  # the legend is drawn
    assert page.locator("[data-testid='stException']").count() == 0
    page.screenshot(path=str(ARTIFACTS / "evaluate-heatmap.png"), full_page=True)
    page.close()
