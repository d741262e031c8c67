"""Evaluate's heatmap (issue 22): colour follows a fixed, explained scale, so a cell far from the
reference never shows the "close" colour because a worse cell shares its row."""

from __future__ import annotations

import torch

from engine.evaluation.drift import TokenDrift, drift_stats
from engine.evaluation.study import BANDS
from ui.pages.evaluate_charts import BAND_COLORS, band_caption, band_legend, grid_heatmap, kl_histogram


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


def test_the_kl_histogram_counts_every_position_on_a_log_axis():
    kl = torch.tensor([0.0, -1e-9, 1e-4, 2e-3, 3e-3, 0.05, 0.5, 3.0] * 2)  # two at or below the floor, twice
    zeros = torch.zeros(kl.numel())
    drift = drift_stats(TokenDrift(kl, zeros, zeros, torch.ones(kl.numel(), dtype=torch.bool)))
    figure = kl_histogram(drift, "W4")
    counts = figure.data[0].y[:-1]  # a step outline: the last point repeats the last bin
    assert sum(counts) == 16 and counts[0] == 4  # the floored ones are drawn in the first bin
    assert figure.layout.xaxis.type == "log" and figure.data[0].x[0] == 1e-6 and figure.data[0].x[-1] == 10
    assert (
        figure.layout.title.text
        == "W4: KL divergence per token (16 positions; 4 at or below 10⁻⁶ drawn there)"
    )
    marks = [a.text for a in figure.layout.annotations]
    assert marks == [f"median {drift.kl_median:.3g}", f"99% {drift.kl_p99:.3g}", f"99.9% {drift.kl_p999:.3g}"]
