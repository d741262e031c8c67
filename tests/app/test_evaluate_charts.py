"""Evaluate's heatmap (issue 22): colour follows a fixed, explained scale, so a cell far from the
reference never shows the "close" colour because a worse cell shares its row."""

from __future__ import annotations

from engine.evaluation.study import BANDS
from ui.pages.evaluate_charts import BAND_COLORS, band_caption, band_legend, grid_heatmap


def _row(cell: str, change: float, kl: float, top1: float) -> dict:
    return dict(cell=cell, relative_change=change, mean_kl=kl, top1_agreement=top1)


# measured on the default model (4 x 256 Britannica windows), the numbers the issue quotes
ROWS = [
    _row("W16 / KV16", 0.0, 0.0, 1.0),
    _row("W8", 0.0041, 0.0037, 0.967),
    _row("W3", 5.9478, 2.2552, 0.284),
    _row("W2", 102_982.96, 11.954, 0.002),
    _row("KV2", 14.62, 2.987, 0.194),
]


def _colour(figure, row: int, column: int) -> str:
    """The colour a cell's z lands on in the figure's discrete colourscale."""
    heatmap = figure.data[0]
    z = heatmap.z[row][column] / heatmap.zmax
    return next(color for start, color in heatmap.colorscale[::2] if start <= z < start + 1 / len(BANDS))


def test_far_cells_never_get_the_close_colour_whatever_else_is_in_the_row():
    close = BAND_COLORS[BANDS.index("close")]
    broken = BAND_COLORS[BANDS.index("broken")]
    for rows in (ROWS, [r for r in ROWS if r["cell"] != "W2"], [ROWS[0], ROWS[2]]):  # with and without W2
        figure = grid_heatmap(rows)
        w3 = [r["cell"] for r in rows].index("W3")
        for metric in range(3):
            assert _colour(figure, metric, w3) == broken
            assert _colour(figure, metric, 0) == close  # the reference itself
    figure = grid_heatmap(ROWS)
    assert all(_colour(figure, metric, 1) == close for metric in range(3))  # W8 beside W2
    assert all(_colour(figure, metric, 4) == broken for metric in range(3))  # KV2 at x16


def test_the_legend_says_what_each_colour_means():
    figure = grid_heatmap(ROWS)
    ticks = list(figure.data[0].colorbar.ticktext)
    assert ticks == band_legend() and len(ticks) == len(BANDS)
    assert ticks[0] == "close: Δppl ≤ +2%" and ticks[-1] == "broken: > ×2"
    assert "log-scaled per row" not in figure.layout.title.text and "fixed scale" in figure.layout.title.text
    caption = band_caption()
    for name in BANDS:
        assert f"**{name}**" in caption
    assert "mean KL 0.02 nats" in caption and "top-1 disagreement 5%" in caption
